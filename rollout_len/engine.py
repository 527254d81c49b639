"""DecodeEngine: batched decoding with a per-slot KV cache, per-sample sampling and hidden-state taps.

    from rollout_len.engine import DecodeEngine, EngineConfig
    from rollout_len.model import load_policy
    from rollout_len.sample import Sample, SamplingParams

    policy = load_policy("smollm2-135m")
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=32, tap_layer=-1, tap_entropy=True))
    done = engine.run([Sample("a", ids, SamplingParams(max_new_tokens=64), seed=0)])

One `step()` decodes one token for every running sample, frees the slots of finished ones, admits
waiting samples (capped by slots and by a KV token budget, so queues form as on a GPU) and prefills
them. In `static_batching` mode a batch runs until its longest sample ends (like HF `generate`) and
the rows of finished samples are counted as padding.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from rollout_len.kernels import linear_entropy, logits_entropy
from rollout_len.kv_cache import SLOT_ATTENTION, SlotKVCache
from rollout_len.model import Policy, resolve_layer
from rollout_len.sample import Sample, SampleStatus
from rollout_len.sampling import make_generator, sample_next

__all__ = ["EngineConfig", "StepEngine", "DecodeEngine", "StepOutput", "PrefillTap", "EngineStats"]


@dataclass
class EngineConfig:
    max_batch_size: int = 64  # decode slots
    # Tokens of KV cache that running samples may reserve together; each reserves
    # min(prompt + max_new_tokens, context) on admission. None: only slots limit admission.
    kv_token_budget: int | None = None
    # Hidden state tapped, numbered as transformers' hidden_states: 1..num_layers (the last is the
    # final-normed state the LM head reads), or negative from the end (-1 = last).
    tap_layer: int | None = None
    tap_entropy: bool = False  # next-token entropy per decode step and per prefilled position
    tap_prefill: bool = True  # off: taps only at decode steps (no entropy over every prompt position)
    static_batching: bool = False  # HF-generate baseline: no admission until the whole batch ends
    # Samples admitted together with identical tokens (the n samples of one prompt) are prefilled once
    # and their KV copied; each still samples its own first token. Off by default: the scheduler's cost
    # model charges every admitted sample its own prefill.
    share_prefill: bool = False
    initial_kv_capacity: int = 256  # positions per slot allocated first; doubles as needed

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {self.max_batch_size!r}")
        if self.kv_token_budget is not None and self.kv_token_budget < 1:
            raise ValueError(f"kv_token_budget must be >= 1 or None, got {self.kv_token_budget!r}")


@dataclass
class PrefillTap:
    sample_id: str
    num_prompt_tokens: int  # the first positions are the prompt; the rest are re-prefilled outputs
    hidden: torch.Tensor | None  # (T, d) tap-layer output at every prefilled position
    entropy: torch.Tensor | None  # (T,) entropy of the next-token distribution at every position


@dataclass
class StepOutput:
    """What one engine step produced. Rows: one per sample that got a new token this step."""

    sample_ids: list[str]  # row -> sample; decode rows first, then rows of samples prefilled now
    num_decode_rows: int  # rows [0, num_decode_rows) fed a generated token; their taps are its state
    tokens: list[int]  # the token each row sampled
    logprobs: list[float]
    entropy: torch.Tensor | None  # (R,) entropy of the distribution each token was drawn from
    hidden: torch.Tensor | None  # (R, d) tap-layer state at the position that produced the token
    prefills: list[PrefillTap]  # one per sample prefilled this step (taps on only)
    finished: list[Sample]  # samples that left the engine this step
    padded_tokens: int  # static mode: rows computed for already-finished samples

    @classmethod
    def make_empty(cls) -> StepOutput:
        return cls([], 0, [], [], None, None, [], [], 0)


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0  # tokens generated (prefill-sampled first tokens included)
    padded_tokens: int = 0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    decode_batch_sizes: list[int] = field(default_factory=list)

    @property
    def padded_fraction(self) -> float:
        total = self.decode_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0


@dataclass
class _Running:
    sample: Sample
    generator: torch.Generator
    position: int  # tokens already in this slot's KV cache; the last output token is not yet fed
    reserved: int  # KV tokens reserved in the budget
    padding: bool = False  # static mode: finished, still occupying its row until the batch ends


class StepEngine:
    """What a RolloutWorker drives, written once over a subclass's `add`, `step`, `has_unfinished`
    and `_remove`: DecodeEngine here, VLLMEngine (rollout_len.vllm_engine) over vLLM."""

    def run(self, samples: list[Sample]) -> list[Sample]:
        """Add samples, step until all are finished; returns them in the given order."""
        for sample in samples:
            self.add(sample)
        while self.has_unfinished():
            self.step()
        return samples

    def export(self, sample_id: str) -> Sample:
        """Remove a waiting or running sample, with everything needed to continue it elsewhere."""
        return self._remove(sample_id, SampleStatus.MIGRATING)

    def abort(self, sample_id: str) -> Sample:
        """Stop a sample now; it keeps the tokens generated so far."""
        return self._remove(sample_id, SampleStatus.FINISHED_ABORTED)

    @staticmethod
    def check_new(sample: Sample, present: bool, vocab_size: int, context_length: int) -> None:
        """ValueError naming the sample when an engine cannot take it: finished, already present,
        token ids outside [0, vocab_size), no room for one more token, or its budget already spent."""
        sid = sample.sample_id
        if sample.status.is_finished:
            raise ValueError(f"sample {sid!r} is already finished ({sample.status.name})")
        if present:
            raise ValueError(f"sample {sid!r} is already in this engine")
        bad = [t for t in sample.prompt_ids + sample.output_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"sample {sid!r}: token ids {bad[:5]} outside the vocabulary [0, {vocab_size})")
        if sample.num_tokens >= context_length:
            raise ValueError(
                f"sample {sid!r}: {sample.num_tokens} tokens do not fit the model's context of "
                f"{context_length} (at least one new token must fit)"
            )
        if sample.num_output >= sample.params.max_new_tokens:
            raise ValueError(f"sample {sid!r} already has max_new_tokens={sample.params.max_new_tokens}")


class DecodeEngine(StepEngine):
    def __init__(self, policy: Policy, config: EngineConfig | None = None):
        self.policy = policy
        self.config = config or EngineConfig()
        model = policy.model
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            raise ValueError(f"DecodeEngine needs attn_implementation 'sdpa' or 'eager' (4D masks), got {attn!r}")
        if getattr(model.config, "use_sliding_window", False):
            raise ValueError("DecodeEngine supports full attention only; this model uses a sliding window")
        # The engine's forward runs our SDPA (in-place GQA); the model keeps its own setting otherwise.
        self._attn_implementation = SLOT_ATTENTION if attn == "sdpa" else attn
        self.base = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        layers = self.base.layers
        self.tap_layer = (
            None if self.config.tap_layer is None else resolve_layer(self.config.tap_layer, len(layers), "tap_layer")
        )
        self._tapped: torch.Tensor | None = None
        # As in transformers' hidden_states: layer L < num_layers is decoder layer L's output (hooked
        # during our forward only, so engines sharing a model never see each other's hooks); the last
        # one is the final-normed state the LM head reads.
        self._hooked_layer = (
            layers[self.tap_layer - 1] if self.tap_layer is not None and self.tap_layer < len(layers) else None
        )
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context_length = policy.context_length
        self.cache = SlotKVCache(
            len(layers), self.config.max_batch_size, self.context_length, self.config.initial_kv_capacity
        )
        self._waiting: deque[Sample] = deque()
        self._running: list[_Running] = []  # index == KV slot
        self._ids: set[str] = set()
        self.stats = EngineStats()

    # ------------------------------------------------------------------ public API

    def add(self, sample: Sample) -> None:
        """Queue a new sample, or import an exported one (it continues where it stopped)."""
        vocab = self.lm_head.weight.shape[0]
        self.check_new(sample, sample.sample_id in self._ids, vocab, self.context_length)
        budget = self.config.kv_token_budget
        if budget is not None and self._reservation(sample) > budget:
            raise ValueError(
                f"sample {sample.sample_id!r} needs {self._reservation(sample)} KV tokens "
                f"(prompt + max_new_tokens), more than kv_token_budget={budget}"
            )
        sample.status = SampleStatus.WAITING
        self._waiting.append(sample)
        self._ids.add(sample.sample_id)

    def step(self) -> StepOutput:
        """Decode one token for every running sample, then admit and prefill waiting ones.

        Raises ValueError naming the samples whose next-token logits are NaN or inf. No row of the batch
        that failed (the decode batch, or the prefill batch) gets a token: decode positions do not move,
        prefilled samples wait again in order, so the caller may `abort` or `export` the samples named and
        keep stepping. (If the decode succeeded and the prefill failed, the decoded rows keep their tokens
        but this step's StepOutput is lost with the exception.)
        """
        out = StepOutput.make_empty()
        if self._running:
            self._decode(out)
            out.num_decode_rows = len(out.sample_ids)
            self._release_finished(out)
        admitted = self._admit()
        if admitted:
            self._prefill(admitted, out)
            self._release_finished(out)
        self.stats.steps += 1
        return out

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def num_running(self) -> int:
        return sum(not r.padding for r in self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def context_tokens(self) -> int:
        """KV positions the running rows attend to (padding rows included): what the next decode step reads."""
        return sum(r.position for r in self._running)

    def running(self) -> list[tuple[Sample, torch.Tensor]]:
        """Every running sample with its generator state: enough to resume it elsewhere."""
        return [(r.sample, r.generator.get_state()) for r in self._running if not r.padding]

    # ------------------------------------------------------------------ internals

    def _tap_hook(self, module, args, output) -> None:
        self._tapped = output[0] if isinstance(output, tuple) else output

    def _reservation(self, sample: Sample) -> int:
        return min(len(sample.prompt_ids) + sample.params.max_new_tokens, self.context_length)

    def _admit(self) -> list[Sample]:
        if self.config.static_batching and self._running:
            return []
        budget = self.config.kv_token_budget
        reserved = sum(r.reserved for r in self._running)
        admitted: list[Sample] = []
        while self._waiting and len(self._running) + len(admitted) < self.config.max_batch_size:
            need = self._reservation(self._waiting[0])
            if budget is not None and reserved + need > budget:
                break
            reserved += need
            admitted.append(self._waiting.popleft())
        return admitted

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._tapped = None
        config = self.policy.model.config
        saved, config._attn_implementation = config._attn_implementation, self._attn_implementation
        hook = self._hooked_layer.register_forward_hook(self._tap_hook) if self._hooked_layer is not None else None
        try:
            with torch.inference_mode():
                out = self.base(
                    input_ids=input_ids,
                    position_ids=positions,
                    attention_mask=mask,
                    past_key_values=self.cache,
                    use_cache=True,
                )
        finally:
            config._attn_implementation = saved
            if hook is not None:
                hook.remove()
        if self.tap_layer == len(self.base.layers):
            self._tapped = out.last_hidden_state
        return out.last_hidden_state  # (B, T, d), after the final norm

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.lm_head(hidden).float()

    def _additive_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)

    def _prefill(self, samples: list[Sample], out: StepOutput) -> None:
        t0 = time.perf_counter()
        given = samples
        samples, source = self._share(samples)
        computed = max(source) + 1  # rows 0..computed-1 are prefilled; the others copy one of them
        seqs = [s.prompt_ids + s.output_ids for s in samples[:computed]]
        lengths = torch.tensor([len(q) for q in seqs], device=self.device)
        width = int(lengths.max())
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = torch.tensor(seq, device=self.device)
        pos = torch.arange(width, device=self.device)
        positions = pos.expand(len(seqs), width)
        allowed = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])  # (B, T, T)
        first_slot = len(self._running)
        self.cache.plan_prefill(first_slot, width)
        final = self._forward(input_ids, positions, self._additive_mask(allowed[:, None]))
        for row in range(len(seqs), len(samples)):  # shared prefill: copy the computed row's KV
            self.cache.move_slot(first_slot + source[row], first_slot + row, int(lengths[source[row]]))
        index = torch.tensor(source, device=self.device)  # (B,) the computed row of each sample
        last = final[index, lengths[index] - 1]  # (B, d)
        logits = self._logits(last)
        rows = [_Running(s, make_generator(s), s.num_tokens, self._reservation(s)) for s in samples]
        tapped = self._tapped
        if self.config.tap_prefill and (self.tap_layer is not None or self.config.tap_entropy):
            entropy = None
            if self.config.tap_entropy:  # one call over every row's positions: far cheaper than a call per row
                valid = torch.arange(width, device=self.device)[None, :] < lengths[:, None]  # (computed, width)
                weight, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)
                with torch.inference_mode():
                    entropy = linear_entropy(final[valid], weight, bias).split(lengths.tolist())
            for row, sample in enumerate(samples):
                src = source[row]
                n = len(seqs[src])
                hidden = tapped[src, :n].float() if tapped is not None else None
                tap_entropy = entropy[src] if entropy is not None else None
                out.prefills.append(PrefillTap(sample.sample_id, len(sample.prompt_ids), hidden, tap_entropy))
        for sample in samples:
            sample.status = SampleStatus.RUNNING
        try:
            self._emit(
                rows,
                logits,
                last_hidden_tap=tapped[index, lengths[index] - 1] if tapped is not None else None,
                out=out,
            )
        except ValueError:  # non-finite logits: nothing was sampled; the samples wait again, in order
            for sample in given:
                sample.status = SampleStatus.WAITING
            self._waiting.extendleft(reversed(given))
            raise
        self._running.extend(rows)  # slots first_slot, first_slot+1, ... as planned
        self.stats.prefill_tokens += int(lengths.sum())
        self.stats.prefill_time_s += time.perf_counter() - t0

    def _share(self, samples: list[Sample]) -> tuple[list[Sample], list[int]]:
        """(samples reordered, source): with `share_prefill`, the first sample of each distinct token
        sequence comes first and the repeats after; source[i] is the row whose prefill sample i reuses
        (itself for the first ones). Without it, the samples as given and source[i] = i."""
        if not self.config.share_prefill:
            return samples, list(range(len(samples)))
        first: dict[tuple[int, ...], int] = {}
        unique, repeats = [], []
        for sample in samples:
            key = (*sample.prompt_ids, *sample.output_ids)
            if key in first:
                repeats.append((sample, first[key]))
            else:
                first[key] = len(unique)
                unique.append(sample)
        return unique + [s for s, _ in repeats], list(range(len(unique))) + [src for _, src in repeats]

    def _decode(self, out: StepOutput) -> None:
        t0 = time.perf_counter()
        rows = self._running
        input_ids = torch.tensor([[r.sample.output_ids[-1]] for r in rows], device=self.device)  # (R, 1)
        positions = torch.tensor([r.position for r in rows], device=self.device)  # (R,)
        self.cache.plan_decode(0, positions)
        keys = torch.arange(int(positions.max()) + 1, device=self.device)
        allowed = keys[None, :] <= positions[:, None]  # (R, L)
        final = self._forward(input_ids, positions[:, None], self._additive_mask(allowed[:, None, None]))
        live = [i for i, r in enumerate(rows) if not r.padding]
        padded = len(rows) - len(live)
        index = torch.tensor(live, device=self.device)
        logits = self._logits(final[index, -1])
        tapped = self._tapped[index, -1] if self._tapped is not None else None
        # Non-finite logits raise here, before any position moves: the KV just written at `position` is
        # overwritten by the next decode, so the engine stays consistent (abort or export the samples named).
        self._emit([rows[i] for i in live], logits, last_hidden_tap=tapped, out=out)
        for i in live:
            rows[i].position += 1
        out.padded_tokens += padded
        self.stats.padded_tokens += padded
        self.stats.decode_batch_sizes.append(len(rows))
        self.stats.decode_time_s += time.perf_counter() - t0

    def _emit(
        self, rows: list[_Running], logits: torch.Tensor, last_hidden_tap: torch.Tensor | None, out: StepOutput
    ) -> None:
        """Sample one token per row, record it on the sample, and append the rows to `out`.

        Raises ValueError naming the samples whose logits hold NaN or inf, before anything is recorded.
        """
        params = [r.sample.params for r in rows]
        tokens, logprobs = sample_next(
            logits,
            [p.temperature for p in params],
            [p.top_p for p in params],
            [p.top_k for p in params],
            [r.generator for r in rows],
            sample_ids=[r.sample.sample_id for r in rows],
            repetition_penalties=[p.repetition_penalty for p in params],
            seen=[
                r.sample.prompt_ids + r.sample.output_ids if p.repetition_penalty != 1.0 else []
                for r, p in zip(rows, params)
            ],
        )
        tokens, logprobs = tokens.tolist(), logprobs.tolist()
        for record, token, logprob in zip(rows, tokens, logprobs):
            self._accept(record, token, logprob)
            out.sample_ids.append(record.sample.sample_id)
        out.tokens += tokens
        out.logprobs += logprobs
        if self.config.tap_entropy:
            entropy = logits_entropy(logits)
            out.entropy = entropy if out.entropy is None else torch.cat([out.entropy, entropy])
        if last_hidden_tap is not None:
            hidden = last_hidden_tap.float()
            out.hidden = hidden if out.hidden is None else torch.cat([out.hidden, hidden])
        self.stats.decode_tokens += len(rows)

    def _accept(self, record: _Running, token: int, logprob: float) -> None:
        sample = record.sample
        sample.output_ids.append(token)
        sample.logprobs.append(logprob)
        stop_ids = sample.params.stop_ids if sample.params.stop_ids is not None else self.policy.stop_ids
        if token in stop_ids and not sample.params.ignore_stop:
            sample.status = SampleStatus.FINISHED_STOPPED
        elif sample.num_output >= sample.params.max_new_tokens or sample.num_tokens >= self.context_length:
            sample.status = SampleStatus.FINISHED_LENGTH
        if sample.status.is_finished and self.config.static_batching:
            record.padding = True

    def _release_finished(self, out: StepOutput) -> None:
        if self.config.static_batching:
            if self._running and all(r.padding for r in self._running):
                for r in self._running:
                    self._ids.discard(r.sample.sample_id)
                    out.finished.append(r.sample)
                self._running.clear()
            return
        for slot in range(len(self._running) - 1, -1, -1):
            if self._running[slot].sample.status.is_finished:
                sample = self._free_slot(slot).sample
                self._ids.discard(sample.sample_id)
                out.finished.append(sample)

    def _free_slot(self, slot: int) -> _Running:
        """Drop a slot, moving the last running slot into the hole to keep slots contiguous."""
        last = len(self._running) - 1
        if slot != last:
            self.cache.move_slot(last, slot, self._running[last].position)
            self._running[slot], self._running[last] = self._running[last], self._running[slot]
        return self._running.pop()

    def _remove(self, sample_id: str, status: SampleStatus) -> Sample:
        for i, sample in enumerate(self._waiting):
            if sample.sample_id == sample_id:
                del self._waiting[i]
                break
        else:
            for slot, record in enumerate(self._running):
                if record.sample.sample_id == sample_id:
                    if record.padding:
                        raise ValueError(f"sample {sample_id!r} is already finished")
                    sample = self._free_slot(slot).sample
                    sample.rng_state = record.generator.get_state()
                    break
            else:
                raise KeyError(f"sample {sample_id!r} is not in this engine")
        self._ids.discard(sample_id)
        sample.status = status
        return sample
