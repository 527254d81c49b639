"""BucketManager: the global view of in-flight samples, and the orders that follow from a Policy.

The manager knows every sample of the step (waiting, queued at a worker, running, migrating,
finished), its tokens so far (from the workers' reports, so a dead worker loses nothing), and its
predicted remaining length, kept in log-spaced buckets. A Policy reads this view and decides
placement, admission order and migrations; the manager turns decisions into per-worker Orders.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rollout_len.rollout.costmodel import CostModel
from rollout_len.rollout.messages import Admission, Orders, Report
from rollout_len.rollout.policies import Policy
from rollout_len.sample import Sample, SampleStatus

__all__ = ["BucketManager", "PredictionQuality", "Tracked", "WorkerState", "bucket_of"]

PREDICTION_SOURCES = ("model", "oracle", "noise")


def bucket_of(remaining: float) -> int:
    """Log2 buckets of predicted remaining tokens: 0 = [0, 2), 1 = [2, 4), ... (robust to noise in
    the low bits of a prediction, fine where lengths differ by factors)."""
    return int(math.log2(max(remaining, 1.0))) if remaining >= 2 else 0


class PredictionQuality:
    """Is the predictor better than a constant? Kept per use (admission: t = 0; inflight: t > 0)
    over a sliding window of finished samples, across steps. Policies act on predictions only when
    they beat the constant by a margin; otherwise they fall back to the length-blind plan."""

    def __init__(self, window: int = 512, min_count: int = 32, margin: float = 0.9):
        self.window, self.min_count, self.margin = window, min_count, margin
        self._errors: dict[str, deque] = {"admission": deque(maxlen=window), "inflight": deque(maxlen=window)}

    def record(self, kind: str, predicted: float, actual: float, baseline: float) -> None:
        self._errors[kind].append((abs(predicted - actual), abs(baseline - actual)))

    def mae(self, kind: str) -> tuple[float, float, int]:
        errors = self._errors[kind]
        if not errors:
            return float("nan"), float("nan"), 0
        arr = np.array(errors)
        return float(arr[:, 0].mean()), float(arr[:, 1].mean()), len(arr)

    def trusted(self, kind: str) -> bool:
        model, constant, n = self.mae(kind)
        return n >= self.min_count and model <= self.margin * constant


@dataclass
class Tracked:
    sample: Sample
    arrival: int
    rank_in_group: int = 0  # 0 for the first sample of its prompt, 1 for the second, ...
    worker: int | None = None  # runs there, or waits in that worker's queue
    running: bool = False
    migrating_to: int | None = None
    predicted: float | None = None  # remaining tokens, as of `predicted_at` tokens done
    predicted_at: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)  # (tokens done, predicted remaining)

    @property
    def tokens_done(self) -> int:
        return self.sample.num_output


@dataclass
class WorkerState:
    worker_id: int
    slots: int
    alive: bool = True
    running: set[str] = field(default_factory=set)
    queue: deque = field(default_factory=deque)  # placed here, not started (policies with fixed placement)
    imports: list[Admission] = field(default_factory=list)  # migrated samples to start on the next chunk
    exports: list[str] = field(default_factory=list)  # to migrate out on the next chunk
    incoming: int = 0  # migrations ordered towards this worker, not yet exported by their source
    busy_s: float = 0.0
    finish_at: float = 0.0  # estimated time its running samples end (as of its last report)

    @property
    def committed(self) -> int:
        """Slots taken or promised: running, imports waiting, migrations on their way here."""
        return len(self.running) + len(self.imports) + self.incoming

    @property
    def in_flight(self) -> int:
        return len(self.running) + len(self.queue) + len(self.imports)


class BucketManager:
    def __init__(self, policy: Policy, num_workers: int, slots: int, cost: CostModel,
                 quality: PredictionQuality | None = None, predictions: str = "model",
                 true_lengths: dict[str, int] | None = None, head_state: dict | None = None, seed: int = 0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if slots < 1:
            raise ValueError(f"slots per worker must be >= 1, got {slots}")
        if predictions not in PREDICTION_SOURCES:
            raise ValueError(f"unknown prediction source {predictions!r}; valid: {list(PREDICTION_SOURCES)}")
        if policy.prediction_source == "oracle":
            predictions = "oracle"
        if predictions == "oracle" and true_lengths is None:
            raise ValueError(f"policy {policy.name!r} needs the true lengths (a recorded trace)")
        self.policy, self.cost, self.predictions = policy, cost, predictions
        self.quality = quality or PredictionQuality()
        self.true_lengths = true_lengths or {}
        self.workers = [WorkerState(w, slots) for w in range(num_workers)]
        self.samples: dict[str, Tracked] = {}
        # Waiting for any worker (an insertion-ordered set), first samples of every prompt first: a
        # worker pulling a batch gets a mix of prompts, as round-robin placement would give it.
        self.pool: dict[str, None] = {}
        self.prompt_features: dict[str, object] = {}  # group id -> (d,) tensor
        self.finished: list[Sample] = []
        self.finished_lengths: deque = deque(maxlen=4096)  # for the constant prior and baseline
        self.to_score: list[tuple[str, list[int], int]] = []
        self.head_state = head_state  # sent once to every worker
        self._head_sent: set[int] = set()
        self.migrations = 0  # completed (exported and handed to the destination)
        self.migration_log: list[tuple[str, int, int]] = []  # ordered
        self.policy_s = 0.0  # time spent deciding (manager + policy), for the overhead figure
        self.plp_s = 0.0  # time the workers spent predicting
        self.decode_tokens = 0
        self.padded_tokens = 0  # rows computed for finished samples in padded static batches
        self.training: list = []  # PLP (features, remaining) of finished samples, for the online re-fit
        self._rng = np.random.default_rng(seed)
        self.groups: dict[str, list[str]] = {}
        self._mean_context: float | None = None
        self._group_sizes: dict[str, int] = {}

    # ------------------------------------------------------------------ views for policies

    def alive_workers(self) -> list[WorkerState]:
        return [w for w in self.workers if w.alive]

    def done(self) -> bool:
        return len(self.finished) == len(self.samples)

    def budget_left(self, t: Tracked) -> int:
        return t.sample.params.max_new_tokens - t.tokens_done

    def prior_remaining(self, t: Tracked) -> float:
        """The constant predictor: median finished length (or half the budget) minus tokens done."""
        total = float(np.median(self.finished_lengths)) if self.finished_lengths else t.sample.params.max_new_tokens / 2
        return float(np.clip(total - t.tokens_done, 1, max(self.budget_left(t), 1)))

    def predicted_remaining(self, sample_id: str) -> float:
        t = self.samples[sample_id]
        left = max(self.budget_left(t), 1)
        if self.predictions == "oracle":
            return float(max(self.true_lengths[sample_id] - t.tokens_done, 1))
        if t.tokens_done == 0 and self.quality.trusted("inflight"):
            # Not started: its started siblings' predicted totals say more than the prompt alone
            # (same prompt, same policy), once in-flight predictions have proven themselves.
            siblings = [self.samples[s] for s in self.groups[t.sample.group_id or sample_id] if s != sample_id]
            totals = [s.tokens_done + self._own_remaining(s) for s in siblings
                      if s.tokens_done > 0 and (s.predicted is not None or s.sample.status.is_finished)]
            if totals:
                return float(np.clip(np.mean(totals), 1, left))
        return self._own_remaining(t)

    def _own_remaining(self, t: Tracked) -> float:
        left = max(self.budget_left(t), 1)
        if t.sample.status.is_finished:
            return 0.0
        if t.predicted is None:
            return self.prior_remaining(t)
        return float(np.clip(t.predicted - (t.tokens_done - t.predicted_at), 1, left))

    def trusted(self, kind: str) -> bool:
        return self.predictions == "oracle" or self.quality.trusted(kind)

    def bucket(self, sample_id: str) -> int:
        return bucket_of(self.predicted_remaining(sample_id))

    def buckets(self) -> dict[int, int]:
        """Histogram of in-flight samples by bucket of predicted remaining length."""
        hist: dict[int, int] = {}
        for sid, t in self.samples.items():
            if not t.sample.status.is_finished:
                b = self.bucket(sid)
                hist[b] = hist.get(b, 0) + 1
        return dict(sorted(hist.items()))

    def padded_fraction(self) -> float:
        return self.padded_tokens / max(self.padded_tokens + self.decode_tokens, 1)

    @property
    def _context(self) -> float:
        """Mean tokens per sample (prompt + half the budget): the context term of the cost model."""
        if self._mean_context is None:
            t = self.samples.values()
            self._mean_context = float(np.mean([len(x.sample.prompt_ids) + x.sample.params.max_new_tokens / 2 for x in t])) if t else 0.0
        return self._mean_context

    def mean_context(self) -> float:
        return self._context

    # ------------------------------------------------------------------ events

    def submit(self, samples: list[Sample]) -> None:
        for s in samples:
            if s.sample_id in self.samples:
                raise ValueError(f"sample {s.sample_id!r} was submitted twice")
            key = s.group_id or s.sample_id
            rank = self._group_sizes.get(key, 0)
            self._group_sizes[key] = rank + 1
            self.samples[s.sample_id] = Tracked(s, arrival=len(self.samples), rank_in_group=rank)
            self.groups.setdefault(key, []).append(s.sample_id)
        if self.predictions == "model" and self.policy.uses_predictions:
            groups = {}
            for s in samples:
                key = s.group_id or s.sample_id
                if key not in self.prompt_features and key not in groups:
                    groups[key] = (key, s.prompt_ids, s.params.max_new_tokens)
            self.to_score.extend(groups.values())
        ids = sorted((s.sample_id for s in samples), key=lambda sid: (self.samples[sid].rank_in_group, self.samples[sid].arrival))
        self.pool.update(dict.fromkeys(ids))
        self.policy.place(self, ids)

    def place(self, sample_id: str, worker_id: int) -> None:
        """Policy helper: move a pooled sample into a worker's queue."""
        del self.pool[sample_id]
        self.samples[sample_id].worker = worker_id
        self.workers[worker_id].queue.append(sample_id)

    def orders_for(self, worker_id: int, max_steps: int) -> Orders | None:
        """The next chunk's orders for an idle worker, or None when it has nothing to do."""
        start = time.perf_counter()
        w = self.workers[worker_id]
        orders = Orders(max_steps=max_steps, static_batches=self.policy.static_batches)
        if worker_id not in self._head_sent and self.head_state is not None:
            orders.head_state = self.head_state
            self._head_sent.add(worker_id)
        if self.to_score and worker_id == self._scoring_worker():
            # Scoring is split across workers: each takes a share of the groups.
            share = math.ceil(len(self.to_score) / len(self.alive_workers()))
            orders.score, self.to_score = self.to_score[:share], self.to_score[share:]
        orders.export, w.exports = w.exports, []
        for sid in orders.export:
            w.running.discard(sid)
        for adm in w.imports:
            self._start(adm.sample.sample_id, w)
        orders.admit, w.imports = w.imports, []
        free = w.slots - w.committed
        alive = self.alive_workers()
        if self.pool and len(self.pool) < sum(max(0, o.slots - len(o.running)) for o in alive):
            free = min(free, math.ceil(len(self.pool) / len(alive)))  # little work: spread it
        if free > 0:
            for sid in self.policy.admit(self, w, free):
                self._take(sid)
                self._start(sid, w)
                key = self.samples[sid].sample.group_id or sid
                orders.admit.append(Admission(self.samples[sid].sample.copy(), self.prompt_features.get(key)))
        orders.return_on_free_slot = bool(self.pool or w.queue)
        self.policy_s += time.perf_counter() - start
        if not (orders.admit or orders.export or orders.score or w.running):
            return None
        return orders

    def _scoring_worker(self) -> int:
        alive = self.alive_workers()
        return min(alive, key=lambda w: len(w.running)).worker_id

    def _take(self, sample_id: str) -> None:
        t = self.samples[sample_id]
        if t.worker is not None and sample_id in self.workers[t.worker].queue:
            self.workers[t.worker].queue.remove(sample_id)
        else:
            del self.pool[sample_id]

    def _start(self, sample_id: str, w: WorkerState) -> None:
        t = self.samples[sample_id]
        t.worker, t.running, t.migrating_to = w.worker_id, True, None
        t.sample.status = SampleStatus.RUNNING
        w.running.add(sample_id)

    def apply(self, report: Report, now: float = 0.0) -> None:
        start = time.perf_counter()
        w = self.workers[report.worker_id]
        w.busy_s += report.busy_s
        self.plp_s += report.plp_s
        self.decode_tokens += report.decode_tokens
        self.padded_tokens += report.padded_tokens
        for key, (feature, predicted) in report.scores.items():
            self.prompt_features[key] = feature
            for sid in self.groups.get(key, ()):
                t = self.samples[sid]
                if predicted is not None and t.tokens_done == 0:
                    self._predict(t, predicted)
        for sid, p in report.progress.items():
            t = self.samples[sid]
            t.sample.output_ids.extend(p.new_tokens)
            t.sample.logprobs.extend(p.new_logprobs)
            t.sample.rng_state = p.rng_state
            if p.predicted_remaining is not None:
                self._predict(t, p.predicted_remaining)
        self.training.extend(report.training)
        for adm in report.exported:
            self._migrated_out(adm, w)
        for sample in report.finished:
            self._finish(sample, w)
        self.policy_s += time.perf_counter() - start
        start = time.perf_counter()
        w.finish_at = now + self.finish_estimate(list(w.running))
        idle = next((o for o in self.workers if o.alive and not o.running and not o.imports and o is not w), None)
        for candidate in (w, idle) if idle is not None else (w,):  # idle workers send no reports: ask for them
            for sid, src, dst in self.policy.migrate(self, candidate, now):
                self.order_migration(sid, src, dst)
        self.policy_s += time.perf_counter() - start

    def finish_estimate(self, sample_ids: list[str]) -> float:
        """Seconds for one worker to finish these samples at the cost model's speed (no admissions):
        with remaining r_1 <= ... <= r_B, sum over i of (r_i - r_{i-1}) * step_time(B - i + 1)."""
        if not sample_ids:
            return 0.0
        r = np.sort(np.array([self.predicted_remaining(s) for s in sample_ids]))
        live = np.arange(len(r), 0, -1)
        step = self.cost.step_base_s + self.cost.per_seq_s * live + self.cost.per_context_token_s * live * self._context
        return float(np.sum(np.diff(r, prepend=0.0) * step))

    def _predict(self, t: Tracked, remaining: float) -> None:
        if self.predictions == "noise":  # the do-no-harm check: a predictor that knows nothing
            remaining = float(self._rng.uniform(1, max(self.budget_left(t), 1)))
        t.predicted, t.predicted_at = float(remaining), t.tokens_done
        t.history.append((t.tokens_done, float(remaining)))

    def order_migration(self, sample_id: str, src: int, dst: int) -> None:
        if not self.workers[dst].alive:
            raise ValueError(f"cannot migrate {sample_id!r} to worker {dst}: it is dead")
        t = self.samples[sample_id]
        if t.worker != src or not t.running or t.migrating_to is not None:
            raise ValueError(f"sample {sample_id!r} is not running on worker {src}")
        t.migrating_to = dst
        self.workers[dst].incoming += 1
        self.workers[src].exports.append(sample_id)
        self.migration_log.append((sample_id, src, dst))

    def _migrated_out(self, adm: Admission, src: WorkerState) -> None:
        sid = adm.sample.sample_id
        t = self.samples[sid]
        t.sample.output_ids, t.sample.logprobs = list(adm.sample.output_ids), list(adm.sample.logprobs)
        t.sample.rng_state = adm.sample.rng_state
        dst = t.migrating_to
        t.running = False
        if dst is not None:
            self.workers[dst].incoming -= 1
        if dst is None or not self.workers[dst].alive:  # destination died meanwhile: back to the pool
            t.worker, t.migrating_to = None, None
            self.pool = {sid: None, **self.pool}
            return
        self.migrations += 1
        adm.sample = t.sample.copy()
        self.workers[dst].imports.append(adm)

    def _finish(self, sample: Sample, w: WorkerState) -> None:
        t = self.samples[sample.sample_id]
        t.sample.output_ids, t.sample.logprobs = list(sample.output_ids), list(sample.logprobs)
        t.sample.status, t.running = sample.status, False
        w.running.discard(sample.sample_id)
        if t.migrating_to is not None:  # it ended before its migration was carried out
            w.exports.remove(sample.sample_id)
            self.workers[t.migrating_to].incoming -= 1
            t.migrating_to = None
        length = sample.num_output
        total = float(np.median(self.finished_lengths)) if self.finished_lengths else sample.params.max_new_tokens / 2
        for done, predicted in t.history:
            baseline = float(np.clip(total - done, 0, sample.params.max_new_tokens - done))
            self.quality.record("admission" if done == 0 else "inflight", predicted, length - done, baseline)
        self.finished_lengths.append(length)
        self.finished.append(t.sample)

    def worker_died(self, worker_id: int) -> list[str]:
        """Resume a dead worker's samples elsewhere from their last reported tokens."""
        w = self.workers[worker_id]
        w.alive = False
        if not self.alive_workers():
            raise RuntimeError("every rollout worker is dead; cannot finish the step")
        lost = sorted(w.running | set(w.queue) | {a.sample.sample_id for a in w.imports},
                      key=lambda sid: self.samples[sid].arrival)
        for sid in lost:
            t = self.samples[sid]
            if t.migrating_to is not None and t.migrating_to != worker_id:
                self.workers[t.migrating_to].incoming -= 1
            t.worker, t.running, t.migrating_to = None, False, None
            t.sample.status = SampleStatus.WAITING
        w.running.clear(), w.queue.clear(), w.imports.clear(), w.exports.clear()
        for other in self.alive_workers():  # migrations towards the dead worker stay where they are
            for sid in list(other.exports):
                if self.samples[sid].migrating_to == worker_id:
                    other.exports.remove(sid)
                    self.samples[sid].migrating_to = None
        self.pool = {**dict.fromkeys(lost), **self.pool}
        self.policy.place(self, lost)
        return lost
