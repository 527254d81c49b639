"""RolloutWorker: one policy replica decoding in a DecodeEngine, with PLP running every k steps.

A plain class; the coordinator wraps it with `ray.remote` (one CPU thread or one GPU each) or
keeps it in-process. Each `run(orders)` applies the manager's orders and decodes one chunk:

    exports -> prompt scoring -> admissions -> up to k decode steps -> PLP predictions -> Report

PLP folds every decode step's tap-layer state and entropy into each sample's online pool (O(d));
the head is evaluated once per chunk. Finished samples carry their PLP checkpoint features and
true remaining lengths back, so the manager's side can re-fit the head online.
"""

from __future__ import annotations

import time

import torch

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import load_policy
from rollout_len.predictor.features import prompt_features
from rollout_len.predictor.head import SoftLabelHead
from rollout_len.predictor.plp import PLPTracker, clamp_to_budget, plp_features
from rollout_len.rollout.messages import Admission, Orders, Progress, Report

__all__ = ["RolloutWorker"]


class RolloutWorker:
    def __init__(self, worker_id: int, model: str, slots: int, every: int = 16, tap_layer: int = -1,
                 dtype: str = "float32", device: str = "cpu", threads: int | None = 1):
        if slots < 1:
            raise ValueError(f"slots per worker must be >= 1, got {slots}")
        if every < 1:
            raise ValueError(f"k (PLP interval) must be >= 1, got {every}")
        if threads:
            torch.set_num_threads(threads)
        self.worker_id, self.every = worker_id, every
        self.policy = load_policy(model, dtype=dtype, device=device)
        self.tap_layer = tap_layer
        self.engine = DecodeEngine(self.policy, EngineConfig(
            max_batch_size=slots, tap_layer=tap_layer, tap_entropy=True, tap_prefill=False))
        self.tracker = PLPTracker(None, self.policy.hidden_size)
        self._pending: dict[str, Admission] = {}  # added to the engine, not prefilled yet
        self._features: dict[str, torch.Tensor] = {}  # sample -> its prompt feature
        self._reported: dict[str, int] = {}  # sample -> output tokens already reported
        self._checkpoints: dict[str, list[tuple[int, torch.Tensor]]] = {}  # sample -> [(t, z_t)]

    def ping(self) -> int:
        return self.worker_id

    def load_weights(self, state: dict | str) -> None:
        """New policy weights: a state dict or a safetensors file (the next chunk decodes with them)."""
        if self.engine.has_unfinished():
            raise RuntimeError(f"worker {self.worker_id}: weights change between steps, not while samples are running")
        if isinstance(state, str):
            from safetensors.torch import load_file

            state = load_file(state)
        missing, unexpected = self.policy.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"worker {self.worker_id}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")

    @torch.no_grad()
    def logits(self, prompt_ids: list[int]) -> torch.Tensor:
        """Next-token logits after a prompt: lets a test check that the worker runs the trainer's weights."""
        return self.policy.model(torch.tensor([prompt_ids])).logits[0, -1].float()

    def run(self, orders: Orders) -> Report:
        start = time.perf_counter()
        report = Report(self.worker_id)
        if orders.head_state is not None:
            self.tracker.set_head(SoftLabelHead.from_state(orders.head_state))
        if not self.engine.has_unfinished():
            self.engine.config.static_batching = orders.static_batches
        for sid in orders.export:
            sample = self.engine.export(sid)
            state = self.tracker.export(sid) if sid in self.tracker else None
            feature = self._pending.pop(sid).prompt_feature if sid in self._pending else self._features.pop(sid, None)
            report.exported.append(Admission(sample, feature, state))
            self._reported.pop(sid, None), self._checkpoints.pop(sid, None)
        if orders.score:
            plp_start = time.perf_counter()
            self._score(orders.score, report)
            report.plp_s += time.perf_counter() - plp_start
        for adm in orders.admit:
            self.engine.add(adm.sample)
            self._reported[adm.sample.sample_id] = adm.sample.num_output
            self._pending[adm.sample.sample_id] = adm
        while report.steps < orders.max_steps and self.engine.has_unfinished():
            out = self.engine.step()
            report.steps += 1
            nd = out.num_decode_rows
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
                    self._features[sid] = adm.prompt_feature
                    self.tracker.start(sid, adm.prompt_feature, adm.sample.params.max_new_tokens,
                                       state=adm.plp_state, tokens_done=adm.sample.num_output)
            self._checkpoint(out.sample_ids)
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

    def _score(self, score: list[tuple[str, list[int], int]], report: Report) -> None:
        feats = prompt_features(self.policy, [ids for _, ids, _ in score], layers=(self.tap_layer,), methods=("egtp",))
        (feature,) = feats.values()
        predicted = [None] * len(score)
        if self.tracker.head is not None:
            budget = torch.tensor([b for _, _, b in score])
            z = plp_features(feature, torch.zeros_like(feature), torch.zeros(len(score)), budget)
            mean, _ = clamp_to_budget(*self.tracker.head.predict(z), budget)
            predicted = mean.tolist()
        for (group, _, _), f, p in zip(score, feature, predicted):
            report.scores[group] = (f.clone(), p)

    def _checkpoint(self, sample_ids: list[str]) -> None:
        """Keep z_t at t = 0, k, 2k, ... for each tracked sample: training examples once it ends."""
        due = [sid for sid in sample_ids if sid in self.tracker and self.tracker.tokens_done(sid) % self.every == 1]
        if due:
            z, _ = self.tracker.features(due)
            for sid, row in zip(due, z):
                self._checkpoints.setdefault(sid, []).append((self.tracker.tokens_done(sid), row.clone()))

    def _finished(self, sample, report: Report) -> None:
        sid = sample.sample_id
        report.finished.append(sample)
        points = self._checkpoints.pop(sid, [])
        if points:
            z = torch.stack([row for _, row in points])
            remaining = torch.tensor([float(sample.num_output - t) for t, _ in points])
            report.training.append((z, remaining))
        if sid in self.tracker:
            self.tracker.drop(sid)
        self._features.pop(sid, None), self._reported.pop(sid, None)

    def _progress(self, report: Report) -> None:
        running = self.engine.running()
        tracked = [s.sample_id for s, _ in running if s.sample_id in self.tracker]
        predicted = {}
        if tracked and self.tracker.head is not None:
            mean, q = self.tracker.predict(tracked, quantiles=(0.9,))
            predicted = {sid: (float(m), float(x)) for sid, m, x in zip(tracked, mean, q[:, 0])}
        for sample, rng_state in running:
            sid = sample.sample_id
            start = self._reported.get(sid, 0)
            mean, q90 = predicted.get(sid, (None, None))
            report.progress[sid] = Progress(sample.output_ids[start:], sample.logprobs[start:], rng_state, mean, q90)
            self._reported[sid] = sample.num_output
