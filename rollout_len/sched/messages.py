"""What the scheduler sends a worker (Orders) and what a worker answers (Report).

One exchange per chunk of decoding: the worker applies the orders (exports, prompt scoring,
admissions), decodes up to `max_steps` steps (returning early when a slot frees and the scheduler
has work waiting), and reports what changed. Live Ray workers and simulated workers speak the same
messages, so the bucket manager and the policies cannot tell them apart.

Messages carry only what changed (vLLM's `CachedRequestData` habit): a sample travels whole once,
when a worker admits it (fresh, or migrated with its tokens so far); after that each Report holds
its new tokens and log-probs since the previous one, its RNG state, and, when it ended or left the
worker, its final status or its PLP state. Tensors (prompt features, RNG and PLP states, training
pairs) are opaque here: this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rollout_len.sample import Sample, SampleStatus

__all__ = ["Admission", "Orders", "Progress", "PromptScore", "Report"]


@dataclass
class Admission:
    """A sample to start (fresh) or to continue (migrated or resumed: it carries its tokens)."""

    sample: Sample
    prompt_feature: Any = None  # (d,) tensor: the EGTP feature of its prompt, for PLP
    plp_state: dict | None = None  # PLP pooling state exported with a migrating sample


class PromptScore(NamedTuple):
    """A prompt to score once (EGTP feature and t = 0 prediction), for every sample that shares it."""

    key: str  # the scheduler's prompt key: one per group that shares a prompt, else one per sample
    prompt_ids: list[int]
    max_new_tokens: int
    group_id: str  # the group it belongs to (a sample without a group: its own id)


@dataclass
class Orders:
    admit: list[Admission] = field(default_factory=list)
    export: list[str] = field(default_factory=list)  # sample ids to migrate out (before decoding)
    score: list[PromptScore] = field(default_factory=list)
    max_steps: int = 16  # k: decode steps per chunk (PLP predicts once per chunk)
    return_on_free_slot: bool = False  # the scheduler has samples waiting for a slot here
    head_state: dict | None = None  # new predictor weights
    static_batches: bool = False  # padded static batches (no admission until the batch ends)


@dataclass
class Progress:
    """A sample's tokens since the last report: enough to resume it elsewhere if the worker dies."""

    new_tokens: list[int]
    new_logprobs: list[float]
    rng_state: Any = None  # the engine's generator state after the last token (None when finished)
    predicted_remaining: float | None = None  # PLP mean, when predicted this chunk


@dataclass
class Report:
    worker_id: int
    steps: int = 0
    busy_s: float = 0.0  # compute time of this chunk (decode + prefill + PLP)
    plp_s: float = 0.0  # of which the predictor (prompt scoring included)
    score_s: float = 0.0  # of which prompt scoring (EGTP features and t = 0 predictions)
    # one row per engine step: (decode rows, their context tokens, decode s, prefill tokens, prefill s);
    # what `bench rollout` fits the cost model to, under the live workers' own threads and load
    step_log: list[tuple[int, int, float, int, float]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # per decode step
    padded_tokens: int = 0
    decode_tokens: int = 0
    progress: dict[str, Progress] = field(default_factory=dict)  # every sample that ran this chunk
    finished: dict[str, SampleStatus] = field(default_factory=dict)  # ended this chunk: final status
    exported: dict[str, dict | None] = field(default_factory=dict)  # migrated out: PLP state (or None)
    scores: dict[str, tuple[Any, float | None]] = field(default_factory=dict)  # prompt key -> ((d,) feature, t=0)
    training: list[tuple[Any, Any]] = field(default_factory=list)  # PLP ((C, 2d+2) z, (C,) remaining) of finished
