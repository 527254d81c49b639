"""RolloutWorker: one policy replica decoding in a DecodeEngine, with PLP running every k steps.

A plain class; the coordinator wraps it with `ray.remote` (one CPU thread or one GPU each) or
keeps it in-process. `engine` picks the decode engine: "hf" (DecodeEngine, transformers) or
"vllm" (VLLMEngine: vLLM's engine with the same taps, in its own environment; docs/vllm.md).
Either way the worker also holds the transformers policy: it scores prompts, checks weight updates.
Each `run(orders)` applies the manager's orders and decodes one chunk:

    exports -> prompt scoring -> admissions -> up to k decode steps -> PLP predictions -> Report

PLP folds every decode step's tap-layer state and entropy into each sample's online pool (O(d));
the head is evaluated once per chunk. The worker keeps its samples: each Report carries only the
tokens, log-probs and RNG state each sample gained since the previous one, and the final status of
those that ended. Finished samples carry their PLP checkpoint features (t = 0, k, 2k, ...:
`is_checkpoint`) and true remaining lengths back, so the coordinator can re-fit the head online.
"""

from __future__ import annotations

import time

import torch

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import load_policy
from rollout_len.predictor.features import prompt_features
from rollout_len.predictor.head import SoftLabelHead
from rollout_len.predictor.plp import PLPTracker, clamp_to_budget, is_checkpoint, plp_features
from rollout_len.sample import Sample
from rollout_len.sched.messages import Admission, Orders, Progress, PromptScore, Report

__all__ = ["ENGINES", "RolloutWorker"]

ENGINES = ("hf", "vllm")  # the decode engines a worker can run


class RolloutWorker:
    def __init__(
        self,
        worker_id: int,
        model: str,
        slots: int,
        every: int = 16,
        tap_layer: int = -1,
        dtype: str = "float32",
        device: str = "cpu",
        threads: int | None = 1,
        engine: str = "hf",
        eager: bool = False,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        if slots < 1:
            raise ValueError(f"slots per worker must be >= 1, got {slots}")
        if every < 1:
            raise ValueError(f"k (PLP interval) must be >= 1, got {every}")
        if threads:
            torch.set_num_threads(threads)
        self.worker_id, self.every, self.slots = worker_id, every, slots
        self.policy = load_policy(model, dtype=dtype, device=device)
        self.tap_layer = tap_layer
        self.engine_name, self.engine = engine, None
        if engine == "vllm":
            from rollout_len.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(
                model,
                self._engine_config(),
                stop_ids=self.policy.stop_ids,
                context_length=self.policy.context_length,
                vocab_size=self.limits()["vocab_size"],
                dtype=dtype,
                threads=threads,
                enforce_eager=eager,
            )
        self.tracker = PLPTracker(None, self.policy.hidden_size)
        self._staged: dict[str, torch.Tensor] | None = None  # weights checked by stage_weights, not yet copied
        self.reset()

    def reset(self) -> None:
        """Drop every sample and its state: a fresh engine and tracker (the weights and PLP head stay).
        The coordinator calls it after a failed step, so the next step starts clean."""
        if self.engine_name == "vllm":
            self.engine.clear()  # vLLM's engine stays: starting one takes seconds to minutes
        else:
            self.engine = DecodeEngine(self.policy, self._engine_config())
        self.tracker = PLPTracker(self.tracker.head, self.policy.hidden_size)
        self._pending: dict[str, Admission] = {}  # added to the engine, not prefilled yet
        self._reported: dict[str, int] = {}  # sample -> output tokens already reported (or held at admission)
        self._checkpoints: dict[str, list[tuple[int, torch.Tensor]]] = {}  # sample -> [(t, z_t)]

    def _engine_config(self) -> EngineConfig:
        return EngineConfig(max_batch_size=self.slots, tap_layer=self.tap_layer, tap_entropy=True, tap_prefill=False)

    def limits(self) -> dict[str, int]:
        """What a sample must fit: token ids in [0, vocab_size), prompt + 1 < context_length tokens."""
        vocab = self.policy.model.get_output_embeddings().weight.shape[0]
        return {"vocab_size": int(vocab), "context_length": int(self.policy.context_length)}

    def ping(self) -> int:
        return self.worker_id

    def load_weights(self, state: dict[str, torch.Tensor] | str, partial: bool = False) -> list[str]:
        """New policy weights: a state dict or a safetensors file (the next chunk decodes with them).

        Strict unless `partial`: see `rollout_len.model.check_weights` (every tensor, a tied output head
        counted once; floating tensors cast to the model's dtype). `partial=True` loads exactly the keys
        given and keeps the rest. Everything is checked before anything is copied, so a refused update
        (ValueError naming the keys) leaves the old weights. Returns the keys copied.
        """
        self.stage_weights(state, partial=partial)
        return self.commit_weights()

    def stage_weights(self, state: dict[str, torch.Tensor] | str, partial: bool = False) -> None:
        """Phase one of a synchronized update: check everything `load_weights` checks and keep the
        checked tensors, copying nothing; `commit_weights` then copies them without checking again."""
        from rollout_len.model import check_weights

        try:
            self._staged = check_weights(self.policy.model, self._weights(state), partial=partial)
        except ValueError as err:
            raise ValueError(f"worker {self.worker_id}: {err}") from None

    def commit_weights(self) -> list[str]:
        """Phase two: copy the weights `stage_weights` checked; returns the keys copied."""
        from rollout_len.model import copy_weights

        if self._staged is None:
            raise RuntimeError(f"worker {self.worker_id}: no staged weights (call stage_weights first)")
        if self.engine.has_unfinished():
            raise RuntimeError(f"worker {self.worker_id}: weights change between steps, not while samples are running")
        plan, self._staged = self._staged, None
        copied = copy_weights(self.policy.model, plan)
        if self.engine_name == "vllm":  # all of it, partial update or not: vLLM reloads whole layers
            self.engine.load_weights(self.policy.model.state_dict())
        return copied

    def _weights(self, state: dict[str, torch.Tensor] | str) -> dict[str, torch.Tensor]:
        if self.engine.has_unfinished():
            raise RuntimeError(f"worker {self.worker_id}: weights change between steps, not while samples are running")
        if isinstance(state, str) or hasattr(state, "__fspath__"):
            from safetensors.torch import load_file

            return load_file(state)
        return state

    @torch.no_grad()
    def logits(self, prompt_ids: list[int]) -> torch.Tensor:
        """Next-token logits after a prompt: lets a test check that the worker runs the trainer's weights."""
        return self.policy.model(torch.tensor([prompt_ids])).logits[0, -1].float()

    def run_alone(self, samples: list[Sample]) -> tuple[dict[str, int], float]:
        """The engine alone on fresh samples, in order: no taps, no PLP, no scheduler (vLLM's own
        requests, or a DecodeEngine with this worker's slots). Returns (output length by sample id,
        seconds); the samples are not changed. The baseline a rollout on this engine must beat."""
        if self.engine.has_unfinished():
            raise RuntimeError(f"worker {self.worker_id}: run_alone between steps, not while samples are running")
        start = time.perf_counter()
        if self.engine_name == "vllm":
            lengths = self.engine.run_alone(samples)
        else:
            copies = [Sample(s.sample_id, list(s.prompt_ids), s.params, seed=s.seed) for s in samples]
            DecodeEngine(self.policy, EngineConfig(max_batch_size=self.slots)).run(copies)
            lengths = {s.sample_id: s.num_output for s in copies}
        return lengths, time.perf_counter() - start

    def run(self, orders: Orders) -> Report:
        start = time.perf_counter()
        report = Report(self.worker_id)
        if orders.head_state is not None:
            self.tracker.set_head(SoftLabelHead.from_state(orders.head_state))
        if orders.static_batches and self.engine_name == "vllm":
            raise ValueError(
                f"worker {self.worker_id}: static batches (the static_padded / bucketed_padded baselines) are the "
                "HF engine's; the vllm engine batches continuously"
            )
        if not self.engine.has_unfinished():
            self.engine.config.static_batching = orders.static_batches
        for sid in orders.export:
            sample = self.engine.export(sid)
            self._report_progress(sample, report, sample.rng_state)
            report.exported[sid] = self.tracker.export(sid) if sid in self.tracker else None
            self._pending.pop(sid, None)
            self._checkpoints.pop(sid, None)
        if orders.score:
            plp_start = time.perf_counter()
            self._score(orders.score, report)
            report.score_s = time.perf_counter() - plp_start
            report.plp_s += report.score_s
        for adm in orders.admit:
            self.engine.add(adm.sample)
            self._reported[adm.sample.sample_id] = adm.sample.num_output
            self._pending[adm.sample.sample_id] = adm
        stats = self.engine.stats
        while report.steps < orders.max_steps and self.engine.has_unfinished():
            context, before = (
                self.engine.context_tokens,
                (stats.decode_time_s, stats.prefill_tokens, stats.prefill_time_s),
            )
            out = self.engine.step()
            report.steps += 1
            nd = out.num_decode_rows
            report.step_log.append(
                (
                    nd + out.padded_tokens,
                    context,
                    stats.decode_time_s - before[0],
                    stats.prefill_tokens - before[1],
                    stats.prefill_time_s - before[2],
                )
            )
            if nd:
                report.batch_sizes.append(nd + out.padded_tokens)
            report.decode_tokens += len(out.sample_ids)
            report.padded_tokens += out.padded_tokens
            plp_start = time.perf_counter()
            if nd:
                self.tracker.update(out.sample_ids[:nd], out.hidden[:nd], out.entropy[:nd])
            for sid in out.sample_ids[nd:]:  # prefilled this step: start tracking
                adm = self._pending.pop(sid)
                if adm.prompt_feature is not None:
                    self._start_tracking(adm)
            ended = {sample.sample_id for sample in out.finished}
            self._checkpoint([sid for sid in out.sample_ids if sid not in ended])
            for sample in out.finished:
                self._finished(sample, report)
            report.plp_s += time.perf_counter() - plp_start
            if out.finished and orders.return_on_free_slot and not orders.static_batches:
                break
        plp_start = time.perf_counter()
        self._progress(report)
        report.plp_s += time.perf_counter() - plp_start
        report.busy_s = time.perf_counter() - start
        return report

    def _score(self, score: list[PromptScore], report: Report) -> None:
        feats = prompt_features(self.policy, [p.prompt_ids for p in score], layers=(self.tap_layer,), methods=("egtp",))
        (feature,) = feats.values()  # (P, d)
        predicted = [None] * len(score)
        if self.tracker.head is not None:
            budget = torch.tensor([p.max_new_tokens for p in score])
            z = plp_features(feature, torch.zeros_like(feature), torch.zeros(len(score)), budget)
            point, _ = clamp_to_budget(*self.tracker.head.predict(z), budget)  # the head's config.point
            predicted = point.tolist()
        for p, f, m in zip(score, feature, predicted):
            report.scores[p.key] = (f.clone(), m)

    def _start_tracking(self, adm: Admission) -> None:
        """Track a just-prefilled sample; a fresh one also gets its t = 0 checkpoint (prompt only)."""
        sample = adm.sample
        sid = sample.sample_id
        self.tracker.start(
            sid, adm.prompt_feature, sample.params.max_new_tokens, state=adm.plp_state, tokens_done=sample.num_output
        )
        if adm.plp_state is None and self._reported[sid] == 0:  # nothing generated before this admission
            budget = torch.tensor([sample.params.max_new_tokens])
            z = plp_features(adm.prompt_feature[None], torch.zeros(1, self.policy.hidden_size), torch.zeros(1), budget)
            self._checkpoints[sid] = [(0, z[0])]

    def _checkpoint(self, sample_ids: list[str]) -> None:
        """Keep z_t at t = k, 2k, ... (t = tokens generated) for each tracked running sample."""
        due = [
            sid
            for sid in sample_ids
            if sid in self.tracker and is_checkpoint(self.tracker.tokens_done(sid), self.every)
        ]
        if due:
            z, _ = self.tracker.features(due)
            for sid, row in zip(due, z):
                self._checkpoints.setdefault(sid, []).append((self.tracker.tokens_done(sid), row.clone()))

    def _finished(self, sample: Sample, report: Report) -> None:
        sid = sample.sample_id
        self._report_progress(sample, report, None)
        report.finished[sid] = sample.status
        points = self._checkpoints.pop(sid, [])
        if points:
            z = torch.stack([row for _, row in points])
            remaining = torch.tensor([float(sample.num_output - t) for t, _ in points])
            report.training.append((z, remaining))
        if sid in self.tracker:
            self.tracker.drop(sid)
        self._reported.pop(sid, None)

    def _report_progress(self, sample: Sample, report: Report, rng_state, predicted: float | None = None) -> None:
        """The tokens and log-probs a sample gained since the last report."""
        start = self._reported.get(sample.sample_id, 0)
        report.progress[sample.sample_id] = Progress(
            sample.output_ids[start:], sample.logprobs[start:], rng_state, predicted
        )
        self._reported[sample.sample_id] = sample.num_output

    def _progress(self, report: Report) -> None:
        running = self.engine.running()
        tracked = [s.sample_id for s, _ in running if s.sample_id in self.tracker]
        predicted = {}
        if tracked and self.tracker.head is not None:
            point, _ = self.tracker.predict(tracked)
            predicted = dict(zip(tracked, point.tolist()))
        for sample, rng_state in running:
            self._report_progress(sample, report, rng_state, predicted.get(sample.sample_id))
