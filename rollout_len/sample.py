"""A sample (one response being generated) and its explicit state machine.

A sample is self-contained: prompt ids, generated ids and log-probs, its sampling parameters and
its own RNG state. Exporting it from one engine and importing it into another continues it exactly
where it stopped (the importing engine re-prefills prompt + generated tokens).

Its identity comes from the caller: `sample_id` (unique within a step) and `group_id` (the prompt's
group, verl's `uid`) are never derived from positions downstream. This module imports no torch: the
scheduler (rollout_len.sched) reads samples without it; the engine owns the RNG
(rollout_len.sampling.make_generator).
"""

from __future__ import annotations

import copy
import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SamplingParams", "Sample", "SampleStatus", "FINISH_REASONS", "sample_seed", "expand_prompts"]


class SampleStatus(enum.IntEnum):
    """Ordered so that `status >= FINISHED_STOPPED` means finished."""

    WAITING = 0  # queued in an engine, no KV cache yet
    RUNNING = 1  # holds a slot and KV cache, decoding
    MIGRATING = 2  # exported from one engine, not yet imported into another
    FINISHED_STOPPED = 3  # produced a stop token
    FINISHED_LENGTH = 4  # hit max_new_tokens or the model's context
    FINISHED_ABORTED = 5  # aborted by the caller

    @property
    def is_finished(self) -> bool:
        return self >= SampleStatus.FINISHED_STOPPED


FINISH_REASONS = {
    SampleStatus.FINISHED_STOPPED: "stop",
    SampleStatus.FINISHED_LENGTH: "length",
    SampleStatus.FINISHED_ABORTED: "abort",
}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 (or below rollout_len.sampling.GREEDY_TEMPERATURE) means greedy
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    top_k: int = 0  # 0 keeps the whole vocabulary
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] | None = None  # None: the policy's stop ids
    ignore_stop: bool = False  # generate exactly max_new_tokens (benchmarks that fix lengths)
    repetition_penalty: float = 1.0  # > 0; 1 is off (rollout_len.sampling.apply_repetition_penalty)

    def __post_init__(self) -> None:
        def number(x) -> bool:  # numpy scalars too; ints too large for a float are refused
            if not isinstance(x, numbers.Real) or isinstance(x, bool):
                return False
            try:
                return math.isfinite(float(x))
            except OverflowError:
                return False

        def integer(x) -> bool:
            return isinstance(x, numbers.Integral) and not isinstance(x, bool)

        if not number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not integer(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not integer(self.max_new_tokens) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be an int > 0, got {self.max_new_tokens!r}")
        if self.stop_ids is not None and not (
            isinstance(self.stop_ids, tuple) and all(integer(t) and t >= 0 for t in self.stop_ids)
        ):
            raise ValueError(f"stop_ids must be None or a tuple of token ids >= 0, got {self.stop_ids!r}")
        if not isinstance(self.ignore_stop, bool):
            raise ValueError(f"ignore_stop must be true or false, got {self.ignore_stop!r}")
        if not number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty!r}"
            )
        # Plain Python numbers from here on (numpy scalars or huge ints would reach torch otherwise).
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
        object.__setattr__(self, "repetition_penalty", float(self.repetition_penalty))
        if self.stop_ids is not None:
            object.__setattr__(self, "stop_ids", tuple(int(t) for t in self.stop_ids))


def sample_seed(seed: int, sample_id: str) -> int:
    """A 63-bit seed from (seed, sample id), stable across processes (unlike hash())."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class Sample:
    """One response in flight. `group_id` ties the n samples of one prompt together (GRPO)."""

    sample_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    group_id: str | None = None
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # of each output token, temperature-scaled
    status: SampleStatus = SampleStatus.WAITING
    rng_state: Any = None  # the engine's torch.Generator state (a uint8 tensor); None = fresh from the seed

    def __post_init__(self) -> None:
        if not isinstance(self.sample_id, str) or not self.sample_id:
            raise TypeError(f"a sample id must be a non-empty str, got {self.sample_id!r}")
        if self.group_id is not None and not isinstance(self.group_id, str):
            raise TypeError(f"sample {self.sample_id!r}: group_id must be a str or None, got {self.group_id!r}")
        if isinstance(self.prompt_ids, (str, bytes)) or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in self.prompt_ids
        ):
            raise TypeError(
                f"sample {self.sample_id!r}: prompt_ids must be a list of int token ids, got {self.prompt_ids!r:.80}"
            )
        self.prompt_ids = [int(t) for t in self.prompt_ids]
        if not self.prompt_ids:
            raise ValueError(f"sample {self.sample_id!r}: the prompt is empty")
        if not isinstance(self.params, SamplingParams):
            raise TypeError(f"sample {self.sample_id!r}: params must be SamplingParams, got {type(self.params)}")

    @property
    def num_output(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    def copy(self) -> Sample:
        """An independent copy (output lists copied; the prompt is shared, never mutated), e.g. to hand
        to a worker in the same process. Not re-validated: the original was."""
        new = copy.copy(self)
        new.output_ids, new.logprobs = list(self.output_ids), list(self.logprobs)
        return new


def expand_prompts(
    prompts: list[list[int]], n: int, params: SamplingParams, seed: int = 0, prefix: str = ""
) -> list[Sample]:
    """n samples per prompt, prompt-major: sample j of prompt i has id "{prefix}{i}-{j}" and group
    "{prefix}{i}" (a prefix per step keeps ids apart across partial steps, which carry samples over).

    For callers whose prompts have no identity of their own (benchmarks, tests, the CLI); verl
    batches bring theirs (rollout_len.verl.convert).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
    if not prompts:
        raise ValueError("expand_prompts needs at least one prompt")
    return [
        Sample(f"{prefix}{i}-{j}", list(ids), params, seed=seed, group_id=f"{prefix}{i}")
        for i, ids in enumerate(prompts)
        for j in range(n)
    ]
