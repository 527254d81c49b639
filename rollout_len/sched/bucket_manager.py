"""BucketManager: the global view of in-flight samples, and the orders that follow from a Policy.

The manager knows every sample of the step (waiting, queued at a worker, running, migrating,
finished), its tokens so far (from the workers' reports, so a dead worker loses nothing), and its
predicted remaining length, kept in log-spaced buckets. It implements the read-only
`SchedulerView` a Policy decides from, carries out the decisions the policy returns (placements,
admissions, migrations) and turns them into per-worker Orders.

    manager = BucketManager(make_policy("length_aware"), num_workers=2, slots=8, cost=cost)
    manager.submit(samples)                 # the caller's samples, with their ids and groups
    orders = manager.orders_for(worker_id, every=16)
    manager.apply(report, now)              # what the worker did with them

A partial (stall-free) step (rollout_len.sched.partial) stops once enough groups are complete
(`drive(..., until=...)`) and ends with `end_step(quota)`: the complete groups, returned whole,
and every other sample with its tokens, to submit to the next step's manager. Each token is tagged
with the policy version that produced it (the manager's `version`), so a returned sample carries
its min/max version (verl's `min_global_steps` / `max_global_steps`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from rollout_len.sample import Sample, SampleStatus
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.messages import Admission, Orders, PromptScore, Report
from rollout_len.sched.policies import Policy
from rollout_len.sched.predictions import PREDICTION_SOURCES, LengthPrior, PredictionQuality, bucket_of
from rollout_len.sched.view import Migration

__all__ = ["BucketManager", "StepEnd", "Tagged", "Tracked", "WorkerState"]


@dataclass
class Tracked:
    """The manager's record of one sample: its tokens so far and where it is."""

    sample: Sample
    arrival: int
    prompt_key: str  # samples sharing a prompt key share one prompt scoring
    rank_in_group: int = 0  # 0 for the first sample of its group, 1 for the second, ...
    worker: int | None = None  # runs there, or waits in that worker's queue
    running: bool = False
    migrating_to: int | None = None
    predicted: float | None = None  # remaining tokens, as of `predicted_at` tokens done
    predicted_at: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)  # (tokens done, predicted remaining)
    group_at_start: float | None = None  # its siblings' predicted total when it started (group probes)
    versions: list[list[int]] = field(default_factory=list)  # [policy version, tokens] runs, oldest first

    @property
    def tokens_done(self) -> int:
        return self.sample.num_output


@dataclass
class WorkerState:
    worker_id: int
    slots: int
    alive: bool = True
    # An ordered set (dict keys): decisions never follow the per-process hash order of a set of ids.
    running: dict[str, None] = field(default_factory=dict)
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

    def importing(self) -> list[str]:
        return [a.sample.sample_id for a in self.imports]


@dataclass
class Tagged:
    """A sample with the policy version of each of its tokens, as runs of (version, tokens), oldest
    first (they sum to `sample.num_output`). What a partial step returns and what it carries over."""

    sample: Sample
    versions: tuple[tuple[int, int], ...] = ()

    @property
    def group(self) -> str:
        return self.sample.group_id or self.sample.sample_id

    @property
    def min_version(self) -> int | None:
        """The oldest version among its tokens (verl's `min_global_steps`); None without tokens."""
        return self.versions[0][0] if self.versions else None

    @property
    def max_version(self) -> int | None:
        """The newest version among its tokens (verl's `max_global_steps`); None without tokens."""
        return self.versions[-1][0] if self.versions else None


@dataclass
class StepEnd:
    """What `BucketManager.end_step` hands back."""

    groups: dict[str, list[Tagged]]  # complete groups to train on, whole, in completion order
    carried: list[Tagged]  # everything else: unfinished samples with their tokens (WAITING), the
    # finished samples of incomplete groups, complete groups beyond the quota; in submission order


class BucketManager:
    def __init__(
        self,
        policy: Policy,
        num_workers: int,
        slots: int,
        cost: CostModel,
        quality: PredictionQuality | None = None,
        predictions: str = "model",
        true_lengths: dict[str, int] | None = None,
        head_state: dict | None = None,
        seed: int = 0,
        prior: LengthPrior | None = None,
        version: int = 0,
    ):
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
        self.prior = prior or LengthPrior()
        self.true_lengths = true_lengths or {}
        self.workers = [WorkerState(w, slots) for w in range(num_workers)]
        self._samples: dict[str, Tracked] = {}
        # Waiting for any worker (an insertion-ordered set), first samples of every group first: a
        # worker pulling a batch gets a mix of prompts, as round-robin placement would give it.
        self._pool: dict[str, None] = {}
        self.prompt_features: dict[str, object] = {}  # prompt key -> (d,) tensor
        self.finished: list[Sample] = []
        self.to_score: list[PromptScore] = []
        self._scoring: dict[int, list[PromptScore]] = {}  # worker -> the prompts it is scoring now
        self.head_state = head_state  # sent once to every worker
        self._head_sent: set[int] = set()
        self.migrations = 0  # completed (exported and handed to the destination)
        self.migration_log: list[Migration] = []  # ordered
        self.policy_s = 0.0  # time spent deciding (manager + policy), for the overhead figure
        self.plp_s = 0.0  # time the workers spent predicting
        self.decode_tokens = 0
        self.padded_tokens = 0  # rows computed for finished samples in padded static batches
        self.training: list = []  # PLP (features, remaining) of finished samples, for the online re-fit
        self._rng = np.random.default_rng(seed)
        self.groups: dict[str, list[str]] = {}  # group id -> its sample ids, in submission order
        self._by_prompt: dict[str, list[str]] = {}  # prompt key -> sample ids
        self._mean_context: float | None = None
        self._group_cache: dict[str, float | None] = {}  # prompt key -> group_estimate
        self.version = version  # the policy version (trainer step) of the weights this step decodes with
        self._group_left: dict[str, int] = {}  # group id -> samples not finished
        self.complete_groups: list[str] = []  # every sample finished, in completion order

    # ------------------------------------------------------------------ the SchedulerView

    @property
    def pool(self) -> MappingProxyType:
        return MappingProxyType(self._pool)

    @property
    def samples(self) -> MappingProxyType:
        return MappingProxyType(self._samples)

    def alive_workers(self) -> list[WorkerState]:
        return [w for w in self.workers if w.alive]

    def done(self) -> bool:
        return len(self.finished) == len(self._samples)

    def budget_left(self, t: Tracked) -> int:
        return t.sample.params.max_new_tokens - t.tokens_done

    def predicted_remaining(self, sample_id: str) -> float:
        """Best current estimate of a sample's remaining tokens, in [1, budget left], from sources
        that have beaten their baseline: a running sample's own in-flight prediction; for one not
        started, its siblings (`group`), then its prompt's head prediction (`admission`). Otherwise
        the survival prior, which ranks every sample with the same t alike."""
        t = self._samples[sample_id]
        if self.predictions == "oracle":
            return float(max(self.true_lengths[sample_id] - t.tokens_done, 1))
        if t.sample.status.is_finished:
            return 0.0
        max_new = t.sample.params.max_new_tokens
        if t.tokens_done > 0:
            return (
                self._own_remaining(t)
                if self.quality.trusted("inflight")
                else self.prior.remaining(t.tokens_done, max_new)
            )
        if self.quality.trusted("group"):
            group = self.group_estimate(sample_id)
            if group is not None:
                return min(max(group, 1.0), float(max(max_new, 1)))
        if t.predicted is not None and self.quality.trusted("admission"):
            return self._own_remaining(t)
        return self.prior.remaining(0, max_new)

    def group_estimate(self, sample_id: str) -> float | None:
        """Total length predicted for a sample not started yet from its started siblings (same
        prompt, same policy): the median of their finished lengths and running predicted totals;
        None when none has started (Seer-style group probes). The same for every unstarted sample
        of a prompt, so kept per prompt until one of its samples reports."""
        key = self._samples[sample_id].prompt_key
        if key not in self._group_cache:
            totals = []
            for sid in self._by_prompt[key]:
                s = self._samples[sid]
                if s.tokens_done == 0:
                    continue
                totals.append(
                    float(s.tokens_done) + (0.0 if s.sample.status.is_finished else self.predicted_remaining(sid))
                )
            self._group_cache[key] = float(np.median(totals)) if totals else None
        return self._group_cache[key]

    def _own_remaining(self, t: Tracked) -> float:
        """The sample's own latest prediction, advanced by the tokens decoded since (prior if none)."""
        if t.sample.status.is_finished:
            return 0.0
        if t.predicted is None:
            return self.prior.remaining(t.tokens_done, t.sample.params.max_new_tokens)
        left = max(self.budget_left(t), 1)
        return min(max(t.predicted - (t.tokens_done - t.predicted_at), 1.0), float(left))

    def trusted(self, kind: str) -> bool:
        return self.predictions == "oracle" or self.quality.trusted(kind)

    def log_error_sd(self, kind: str) -> float:
        if self.predictions == "oracle":
            return 0.0
        sd = self.quality.log_error_sd(kind)
        return sd if np.isfinite(sd) else 1.0

    def bucket(self, sample_id: str) -> int:
        return bucket_of(self.predicted_remaining(sample_id))

    def padded_fraction(self) -> float:
        return self.padded_tokens / max(self.padded_tokens + self.decode_tokens, 1)

    def mean_context(self) -> float:
        """Mean tokens per sample (prompt + half the budget): the context term of the cost model."""
        if self._mean_context is None:
            t = self._samples.values()
            self._mean_context = (
                float(np.mean([len(x.sample.prompt_ids) + x.sample.params.max_new_tokens / 2 for x in t])) if t else 0.0
            )
        return self._mean_context

    def finish_estimate(self, sample_ids: list[str]) -> float:
        """Seconds for one worker to finish these samples at the cost model's speed (no admissions):
        with remaining r_1 <= ... <= r_B, sum over i of (r_i - r_{i-1}) * step_time(B - i + 1)."""
        c, ctx = self.cost, self.mean_context()
        total, done = 0.0, 0.0
        remaining = sorted(self.predicted_remaining(s) for s in sample_ids)
        for i, r in enumerate(remaining):
            live = len(remaining) - i
            total += (r - done) * (c.step_base_s + live * (c.per_seq_s + c.per_context_token_s * ctx))
            done = r
        return total

    # ------------------------------------------------------------------ events

    def submit(self, samples: list[Sample], versions: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> None:
        """Add the step's samples (once per step). Ids must be unique; `group_id` ties the samples
        of one prompt (None: the sample is its own group). A group whose samples do not share one
        prompt (verl pads validation batches with other rows' uids) scores each sample's own prompt.

        Samples carried over from an earlier partial step may hold tokens (they resume: a worker
        re-prefills prompt + tokens) or be finished already (the done siblings of an incomplete
        group: they wait for it); `versions` gives their tokens' (version, tokens) runs (tokens
        without one count as this step's `version`). Samples holding tokens are admitted first, then
        the other samples of their groups, then new groups."""
        if self._samples:
            raise RuntimeError("BucketManager.submit takes a step's samples once; make a new manager per step")
        if not samples:
            raise ValueError("BucketManager.submit needs at least one sample")
        bad = [type(s).__name__ for s in samples if not isinstance(s, Sample)]
        if bad:
            raise TypeError(f"BucketManager.submit takes rollout_len.sample.Sample objects, got {bad[0]}")
        grouped = {s.group_id for s in samples if s.group_id is not None}
        clash = [s.sample_id for s in samples if s.group_id is None and s.sample_id in grouped]
        if clash:
            raise ValueError(
                f"sample {clash[0]!r} has no group, and another sample's group is also called {clash[0]!r}: "
                "a sample without a group is its own group, named by its id, so the two would merge"
            )
        versions = versions or {}
        for s in samples:
            runs = versions.get(s.sample_id, ())
            if sum(n for _, n in runs) > s.num_output or any(n < 1 for _, n in runs):
                raise ValueError(
                    f"sample {s.sample_id!r}: version runs {list(runs)} must be positive and cover at most its "
                    f"{s.num_output} tokens"
                )
        if self.predictions == "oracle":
            missing = [s.sample_id for s in samples if s.sample_id not in self.true_lengths]
            if missing:
                raise ValueError(
                    f"policy {self.policy.name!r} needs the true length of every sample; "
                    f"{len(missing)} have none, e.g. {missing[:3]}"
                )
        prompts: dict[str, set[tuple[int, ...]]] = {}
        for s in samples:
            prompts.setdefault(s.group_id or s.sample_id, set()).add(tuple(s.prompt_ids))
        for s in samples:
            if s.sample_id in self._samples:
                raise ValueError(f"sample {s.sample_id!r} was submitted twice")
            group = s.group_id or s.sample_id
            members = self.groups.setdefault(group, [])
            # Prompt keys live in two name spaces, so a sample id never meets a group id.
            key = f"g:{group}" if len(prompts[group]) == 1 else f"s:{s.sample_id}"
            t = Tracked(s, arrival=len(self._samples), prompt_key=key, rank_in_group=len(members))
            t.versions = [list(run) for run in versions.get(s.sample_id, ())]
            untagged = s.num_output - sum(n for _, n in t.versions)
            if untagged:
                t.versions.append([self.version, untagged])
            self._samples[s.sample_id] = t
            members.append(s.sample_id)
            self._by_prompt.setdefault(key, []).append(s.sample_id)
            self._group_left[group] = self._group_left.get(group, 0) + 1
        for s in samples:
            if s.status.is_finished:  # a done sibling waiting for its group: counted, not run
                self._count_finished(self._samples[s.sample_id])
        waiting = [s for s in samples if not s.status.is_finished]
        if self.predictions == "model" and self.policy.uses_predictions:
            first = {}
            for s in waiting:
                first.setdefault(self._samples[s.sample_id].prompt_key, s)
            self.to_score.extend(
                PromptScore(key, s.prompt_ids, s.params.max_new_tokens, s.group_id or s.sample_id)
                for key, s in first.items()
            )
        # Samples that resume (they hold tokens, which age with every step) first, then the rest of
        # their groups, then new groups: by default first samples of every group first; a group-major
        # policy takes whole groups in arrival order (groups complete in the order they started).
        carried = {s.group_id or s.sample_id for s in samples if s.num_output or s.status.is_finished}

        def rank(sid: str) -> tuple[int, int, int]:
            t = self._samples[sid]
            tier = 0 if t.tokens_done else 1 if (t.sample.group_id or sid) in carried else 2
            return tier, 0 if self.policy.group_major else t.rank_in_group, t.arrival

        ids = sorted((s.sample_id for s in waiting), key=rank)
        self._pool.update(dict.fromkeys(ids))
        self._place(ids)

    def _place(self, sample_ids: list[str]) -> None:
        """Carry out the policy's placement: pooled samples it names move to that worker's queue."""
        for sid, worker_id in self.policy.place(self, sample_ids).items():
            if not self.workers[worker_id].alive:
                raise ValueError(f"policy {self.policy.name!r} placed {sid!r} on dead worker {worker_id}")
            del self._pool[sid]
            self._samples[sid].worker = worker_id
            self.workers[worker_id].queue.append(sid)

    def orders_for(self, worker_id: int, max_steps: int) -> Orders | None:
        """The next chunk's orders for an idle worker, or None when it has nothing to do."""
        start = time.perf_counter()
        w = self.workers[worker_id]
        orders = Orders(max_steps=max_steps, static_batches=self.policy.static_batches)
        if worker_id not in self._head_sent and self.head_state is not None:
            orders.head_state = self.head_state
            self._head_sent.add(worker_id)
        if self.to_score and self._scores_here(w):
            # Scoring is split across workers: each takes a share of the prompts.
            share = math.ceil(len(self.to_score) / len(self.alive_workers()))
            orders.score, self.to_score = self.to_score[:share], self.to_score[share:]
            self._scoring[worker_id] = orders.score
        orders.export, w.exports = w.exports, []
        for sid in orders.export:
            w.running.pop(sid, None)
        for adm in w.imports:
            self._start(adm.sample.sample_id, w)
        orders.admit, w.imports = w.imports, []
        free = w.slots - w.committed
        alive = self.alive_workers()
        if self._pool and len(self._pool) < sum(max(0, o.slots - o.committed) for o in alive):
            # Little work: spread it so every worker ends with the same load. The target counts the
            # pool and everything already committed, so it stays put while the pool drains across
            # the workers' turns (a share of what is *left* would shrink, leaving the last ones short).
            load = len(self._pool) + sum(o.committed for o in alive)
            free = min(free, max(0, math.ceil(load / len(alive)) - w.committed))
        # Admission waits for the step's prompt scores (one batched prefill of the prompts, a small
        # share of a step): they rank the first fill, which would otherwise go out blind, and a sample
        # admitted without its prompt's feature is never tracked by PLP (no in-flight predictions).
        scoring = bool(self.to_score or self._scoring)
        if free > 0 and not scoring:
            for sid in self.policy.admit(self, w, free):
                self._take(sid)
                self._start(sid, w)
                t = self._samples[sid]
                orders.admit.append(Admission(t.sample.copy(), self.prompt_features.get(t.prompt_key)))
        orders.return_on_free_slot = bool(self._pool or w.queue)
        self.policy_s += time.perf_counter() - start
        if not (orders.admit or orders.export or orders.score or w.running):
            return None
        return orders

    def _scores_here(self, w: WorkerState) -> bool:
        """Does `w` take a share of the prompts to score? When it is among the least busy workers not
        scoring already (each takes a share, so they score in parallel)."""
        free = [o for o in self.alive_workers() if o.worker_id not in self._scoring]
        return w in free and len(w.running) == min(len(o.running) for o in free)

    def _take(self, sample_id: str) -> None:
        t = self._samples[sample_id]
        if t.worker is not None and sample_id in self.workers[t.worker].queue:
            self.workers[t.worker].queue.remove(sample_id)
        else:
            del self._pool[sample_id]

    def _start(self, sample_id: str, w: WorkerState) -> None:
        t = self._samples[sample_id]
        if t.tokens_done == 0 and t.group_at_start is None and self.predictions != "oracle":
            t.group_at_start = self.group_estimate(sample_id)  # scored at its end, to earn `group` trust
        t.worker, t.running, t.migrating_to = w.worker_id, True, None
        t.sample.status = SampleStatus.RUNNING
        w.running[sample_id] = None

    def apply(self, report: Report, now: float = 0.0) -> None:
        """Take a worker's report: new tokens, predictions, finished and exported samples; then let
        the policy order migrations."""
        start = time.perf_counter()
        self._group_cache.clear()  # siblings moved on
        w = self.workers[report.worker_id]
        w.busy_s += report.busy_s
        self.plp_s += report.plp_s
        self.decode_tokens += report.decode_tokens
        self.padded_tokens += report.padded_tokens
        self._scoring.pop(report.worker_id, None)
        for key, (feature, predicted) in report.scores.items():
            self.prompt_features[key] = feature
            for sid in self._by_prompt.get(key, ()):
                t = self._samples[sid]
                if predicted is not None and t.tokens_done == 0:
                    self._predict(t, predicted)
        for sid, p in report.progress.items():
            t = self._samples[sid]
            t.sample.output_ids.extend(p.new_tokens)
            t.sample.logprobs.extend(p.new_logprobs)
            if p.new_tokens:
                if t.versions and t.versions[-1][0] == self.version:
                    t.versions[-1][1] += len(p.new_tokens)
                else:
                    t.versions.append([self.version, len(p.new_tokens)])
            t.sample.rng_state = p.rng_state
            if p.predicted_remaining is not None:
                self._predict(t, p.predicted_remaining)
        self.training.extend(report.training)
        for sid, plp_state in report.exported.items():
            self._migrated_out(sid, plp_state)
        for sid, status in report.finished.items():
            self._finish(sid, status, w)
        self.policy_s += time.perf_counter() - start
        start = time.perf_counter()
        if self.policy.uses_predictions and self.trusted("inflight"):  # only migrations read it
            w.finish_at = now + self.finish_estimate(list(w.running))
        idle = next((o for o in self.workers if o.alive and not o.running and not o.imports and o is not w), None)
        for candidate in (w, idle) if idle is not None else (w,):  # idle workers send no reports: ask for them
            for move in self.policy.migrate(self, candidate, now):
                self.order_migration(*move)
        self.policy_s += time.perf_counter() - start

    def _predict(self, t: Tracked, remaining: float) -> None:
        if self.predictions == "noise":  # the do-no-harm check: a predictor that knows nothing
            remaining = float(self._rng.uniform(1, max(self.budget_left(t), 1)))
        t.predicted, t.predicted_at = float(remaining), t.tokens_done
        t.history.append((t.tokens_done, float(remaining)))

    def order_migration(self, sample_id: str, src: int, dst: int) -> None:
        if not self.workers[dst].alive:
            raise ValueError(f"cannot migrate {sample_id!r} to worker {dst}: it is dead")
        t = self._samples[sample_id]
        if t.worker != src or not t.running or t.migrating_to is not None:
            raise ValueError(f"sample {sample_id!r} is not running on worker {src}")
        t.migrating_to = dst
        self.workers[dst].incoming += 1
        self.workers[src].exports.append(sample_id)
        self.migration_log.append(Migration(sample_id, src, dst))

    def _migrated_out(self, sample_id: str, plp_state: dict | None) -> None:
        t = self._samples[sample_id]
        dst = t.migrating_to
        t.running = False
        t.sample.status = SampleStatus.MIGRATING
        if dst is not None:
            self.workers[dst].incoming -= 1
        if dst is None or not self.workers[dst].alive:  # destination died meanwhile: back to the pool
            t.worker, t.migrating_to = None, None
            t.sample.status = SampleStatus.WAITING
            self._pool = {sample_id: None, **self._pool}
            return
        self.migrations += 1
        adm = Admission(t.sample.copy(), self.prompt_features.get(t.prompt_key), plp_state)
        self.workers[dst].imports.append(adm)

    def _finish(self, sample_id: str, status: SampleStatus, w: WorkerState) -> None:
        t = self._samples[sample_id]
        if not status.is_finished:
            raise ValueError(f"worker {w.worker_id} reported {sample_id!r} finished with status {status.name}")
        t.sample.status, t.sample.rng_state, t.running = status, None, False
        w.running.pop(sample_id, None)
        if t.migrating_to is not None:  # it ended before its migration was carried out
            w.exports.remove(sample_id)
            self.workers[t.migrating_to].incoming -= 1
            t.migrating_to = None
        length = t.sample.num_output
        max_new = t.sample.params.max_new_tokens
        for done, predicted in t.history:
            kind = "admission" if done == 0 else "inflight"
            self.quality.record(kind, predicted, length - done, self.prior.baseline(done, max_new))
        if t.group_at_start is not None:
            self.quality.record("group", t.group_at_start, length, self.prior.baseline(0, max_new))
        self.prior.observe(length)
        self._count_finished(t)

    def _count_finished(self, t: Tracked) -> None:
        self.finished.append(t.sample)
        group = t.sample.group_id or t.sample.sample_id
        self._group_left[group] -= 1
        if not self._group_left[group]:
            self.complete_groups.append(group)

    def end_step(self, quota: int | None = None) -> StepEnd:
        """End a (partial) step after `drive` returned: the first `quota` complete groups (all of
        them when None), each whole, and every other sample as a copy to submit to the next step's
        manager (unfinished ones WAITING, with their tokens, log-probs, RNG state and version runs).
        Call once, at the step's end; the manager is spent after it."""
        if quota is not None and quota < 0:
            raise ValueError(f"quota (complete groups to return) must be >= 0, got {quota}")
        taken = self.complete_groups[:quota] if quota is not None else list(self.complete_groups)
        groups: dict[str, list[Tagged]] = {g: [] for g in taken}
        carried = []
        for t in sorted(self._samples.values(), key=lambda t: t.arrival):
            tagged = Tagged(t.sample.copy(), tuple((v, n) for v, n in t.versions))
            group = tagged.group
            if group in groups:
                groups[group].append(tagged)
                continue
            if not tagged.sample.status.is_finished:
                tagged.sample.status = SampleStatus.WAITING
            carried.append(tagged)
        return StepEnd(groups, carried)

    def worker_died(self, worker_id: int) -> list[str]:
        """Resume a dead worker's samples elsewhere from their last reported tokens."""
        w = self.workers[worker_id]
        w.alive = False
        self.to_score = self._scoring.pop(worker_id, []) + self.to_score  # its prompts are scored elsewhere
        if not self.alive_workers():
            raise RuntimeError("every rollout worker is dead; cannot finish the step")
        lost = sorted({*w.running, *w.queue, *w.importing()}, key=lambda sid: self._samples[sid].arrival)
        for sid in lost:
            t = self._samples[sid]
            if t.migrating_to is not None and t.migrating_to != worker_id:
                self.workers[t.migrating_to].incoming -= 1
            t.worker, t.running, t.migrating_to = None, False, None
            t.sample.status = SampleStatus.WAITING
        w.running.clear()
        w.queue.clear()
        w.imports.clear()
        w.exports.clear()
        for other in self.alive_workers():  # migrations towards the dead worker stay where they are
            for sid in list(other.exports):
                if self._samples[sid].migrating_to == worker_id:
                    other.exports.remove(sid)
                    self._samples[sid].migrating_to = None
        self._pool = {**dict.fromkeys(lost), **self._pool}
        self._place(lost)
        return lost
