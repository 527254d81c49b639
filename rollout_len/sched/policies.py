"""Scheduling policies, by name. The live rollout and the simulator run these same objects.

A policy reads a SchedulerView (rollout_len.sched.view; the BucketManager implements it) and
returns three kinds of decision, which the manager carries out:
  place(view, ids)              where new (or orphaned) samples wait: {id: worker} for a worker's
                                queue; samples left out stay in the shared pool
  admit(view, worker, n)        which waiting samples start on a worker with n free slots
  migrate(view, worker, now)    which running samples move, as Migrations (sample id, from, to)

    pool           prediction-free shared pool: whichever worker frees a slot takes the next sample
    fcfs           length-blind: each sample goes to the worker with the fewest in-flight samples
                   when submitted, and starts first-come-first-served (verl's default router + vLLM)
    static_padded  fcfs placement, padded static batches that run to their longest (HF generate)
    bucketed_padded  static batches formed from one bucket of predicted length (shared pool)
    length_aware   shared pool; the admission order (pool order, exact or bucketed longest-first) the
                   cost model scores best on lengths drawn around trusted predictions; draining of
                   the workers running the longest samples when that pays; migration of running
                   samples when predicted remaining work is unbalanced and the move pays for its
                   re-prefill. Untrusted sources never enter (SchedulerView.predicted_remaining)
    oracle         length_aware fed exact lengths (from a recorded trace): the bound on what a perfect
                   predictor could do through the same planner
    april          partial steps without prediction (APRIL): shared pool, whole groups in arrival order
    length_aware_partial  partial steps: resuming samples first, then longest predicted first, dealt
                   across the workers filling at once (rollout_len.sched.partial)
"""

from __future__ import annotations

from itertools import islice

import numpy as np

from rollout_len.sched.planner import estimate_makespan
from rollout_len.sched.view import Migration, SchedulerView, WorkerView

__all__ = ["Policy", "POLICIES", "make_policy", "register_policy"]

POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    """Class decorator: register a Policy under `name` (built-ins register the same way as plugins)."""

    def wrap(cls):
        if name in POLICIES:
            raise ValueError(f"a scheduling policy named {name!r} is already registered ({POLICIES[name].__name__})")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return wrap


def make_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)


class Policy:
    """The base policy: one shared pool, taken first-come by whichever worker frees a slot."""

    name = "base"
    static_batches = False  # workers run padded static batches
    prediction_source = "model"  # "oracle": the manager feeds true lengths
    uses_predictions = True  # False: no prompt scoring, no PLP (length-blind costs nothing extra)
    group_major = False  # pool order: whole groups in arrival order (True) or first samples of every group first

    def place(self, m: SchedulerView, sample_ids: list[str]) -> dict[str, int]:
        """Default: samples wait in the shared pool, for whichever worker frees a slot."""
        return {}

    def admit(self, m: SchedulerView, w: WorkerView, free: int) -> list[str]:
        return list(w.queue)[:free] + list(islice(m.pool, max(0, free - len(w.queue))))

    def migrate(self, m: SchedulerView, w: WorkerView, now: float) -> list[Migration]:
        """Called after worker w reported at time `now`."""
        return []


@register_policy("pool")
class Pool(Policy):
    """Prediction-free: one shared pool, taken first-come by whichever worker frees a slot (late
    binding). The baseline a length-aware policy must beat."""

    uses_predictions = False


@register_policy("april")
class April(Pool):
    """APRIL-style partial rollouts without prediction (Active Partial Rollouts, in slime): whole
    groups admitted in arrival order (carried groups first: the manager ranks them), so groups
    complete in the order they started; the over-provisioning and the stop at the quota are the
    partial step's (rollout_len.sched.partial)."""

    group_major = True


@register_policy("fcfs")
class FCFS(Policy):
    uses_predictions = False

    def place(self, m, sample_ids):
        """Each sample to the worker with the fewest in-flight samples, counting those placed before it."""
        load = {w.worker_id: w.in_flight for w in m.alive_workers()}
        placed = {}
        for sid in sample_ids:
            target = min(load, key=lambda w: (load[w], w))
            placed[sid] = target
            load[target] += 1
        return placed

    def admit(self, m, w, free):
        return list(w.queue)[:free]


@register_policy("static_padded")
class StaticPadded(FCFS):
    static_batches = True

    def admit(self, m, w, free):
        return list(w.queue)[: w.slots] if not w.running else []


def longest_first(m: SchedulerView, ids: list[str]) -> list[str]:
    """Descending predicted remaining length (exact order); the given order among equals."""
    rank = {sid: i for i, sid in enumerate(ids)}
    return sorted(ids, key=lambda sid: (-m.predicted_remaining(sid), rank[sid]))


def longest_bucket_first(m: SchedulerView, ids: list[str]) -> list[str]:
    """Descending log2 bucket of predicted remaining length; the given order within a bucket
    (robust to noise in the low bits of a prediction)."""
    rank = {sid: i for i, sid in enumerate(ids)}
    return sorted(ids, key=lambda sid: (-m.bucket(sid), rank[sid]))


def trusts_any(m: SchedulerView) -> bool:
    return any(m.trusted(kind) for kind in ("admission", "group", "inflight"))


@register_policy("bucketed_padded")
class BucketedPadded(Policy):
    static_batches = True

    def admit(self, m, w, free):
        if w.running:
            return []
        if not trusts_any(m):
            return list(islice(m.pool, w.slots))
        # A padded batch runs to its longest: take neighbours in predicted length (finer than buckets).
        return sorted(m.pool, key=m.predicted_remaining, reverse=True)[: w.slots]


@register_policy("length_aware")
class LengthAware(Policy):
    drain_counts = (1, 2, 4)  # how many of the workers running the longest samples a plan may drain
    plan_draws = 2  # length draws each plan is scored on
    plan_margin = 0.0  # a plan must beat the pool order's estimate by this share to replace it

    def __init__(self, replan_fraction: float = 0.2, min_gain: float = 0.05, max_moves_per_sample: int = 1):
        self.replan_fraction, self.min_gain, self.max_moves = replan_fraction, min_gain, max_moves_per_sample
        self._plan_pool_size: int | None = None
        self._moves: dict[str, int] = {}
        self._order: list[str] = []
        self._drained: set[int] = set()  # workers that take no more samples: their long ones run alone
        self.plans: list[dict] = []  # every plan comparison made, for the report
        self._rng = np.random.default_rng(0)

    def _replan(self, m: SchedulerView) -> None:
        """Pick the admission order the cost model says ends soonest: the length-blind pool order
        (always a candidate), exact longest-first, or longest-bucket-first. Predictions enter only
        through sources that have beaten their baseline (SchedulerView.predicted_remaining)."""
        size = len(m.pool)
        if (
            self._plan_pool_size is not None
            and abs(size - self._plan_pool_size) <= self.replan_fraction * self._plan_pool_size
        ):
            return
        self._plan_pool_size = size
        self._order, self._drained = [], set()
        if not trusts_any(m) or size == 0:
            return
        alive = m.alive_workers()
        slots = [w.slots for w in alive]
        ctx = m.mean_context()
        fifo = list(m.pool)
        candidates = {
            "pool": fifo,
            "longest_first": longest_first(m, fifo),
            "longest_bucket_first": longest_bucket_first(m, fifo),
        }
        # Score each plan on lengths drawn around the predictions with their measured error (the
        # same draw of a sample in every plan), not on the predictions themselves: a plan ordered by
        # noisy predictions always looks best when judged by those same predictions.
        wait_sd = m.log_error_sd("group" if m.trusted("group") else "admission")
        run_sd = m.log_error_sd("inflight") if m.trusted("inflight") else 1.0
        pred = {sid: m.predicted_remaining(sid) for sid in fifo}
        draws = []
        for _ in range(self.plan_draws if wait_sd > 0 or run_sd > 0 else 1):
            z = dict(zip(fifo, np.exp(wait_sd * self._rng.standard_normal(len(fifo)))))
            running = []
            for w in alive:
                r = np.array([m.predicted_remaining(s) for s in w.running])
                running.append(r * np.exp(run_sd * self._rng.standard_normal(len(r))))
            draws.append((z, running))

        def score(order: list[str], capped: list[int]) -> float:
            return float(
                np.mean(
                    [
                        estimate_makespan(running, np.array([pred[s] * z[s] for s in order]), capped, m.cost, ctx)
                        for z, running in draws
                    ]
                )
            )

        plan = {"pool_size": size}
        for name, order in candidates.items():
            plan[f"{name}_s"] = score(order, slots)
        best = min(candidates, key=lambda name: (plan[f"{name}_s"], name != "pool"))
        if plan[f"{best}_s"] > (1 - self.plan_margin) * plan["pool_s"]:
            best = "pool"  # a gain within the estimate's noise is not worth leaving the blind plan for
        # Drain the workers running the longest samples (they take no more), so those samples run at
        # a small batch: pays where a decode step slows with the batch and the tail sets the step.
        longest = [max((m.predicted_remaining(s) for s in w.running), default=0.0) for w in alive]
        by_longest = sorted((i for i in range(len(alive)) if alive[i].running), key=lambda i: -longest[i])
        drained, best_s = [], plan[f"{best}_s"]
        for j in (j for j in self.drain_counts if j <= min(len(by_longest), len(alive) - 1)):
            trial = by_longest[:j]
            est = score(
                candidates[best], [len(alive[i].running) if i in trial else slots[i] for i in range(len(alive))]
            )
            plan[f"drain_{j}_s"] = est
            if est < best_s * (1 - self.min_gain / 5):
                drained, best_s = trial, est
        plan["chosen"], plan["drained"] = best, len(drained)
        self.plans.append(plan)
        self._order = candidates[best] if best != "pool" else []
        self._drained = {alive[i].worker_id for i in drained}

    def admit(self, m, w, free):
        self._replan(m)
        picked = list(w.queue)[:free]
        if w.worker_id in self._drained and w.running:
            return picked
        if self._order:  # the plan's order, minus samples already taken
            self._order = [sid for sid in self._order if sid in m.pool]
            # Deal, do not block: while other workers have free slots too (the first fill), take every
            # k-th sample of the order, so the longest samples land on different workers (LPT dealing).
            stride = sum(1 for o in m.alive_workers() if o.committed < o.slots and o.worker_id not in self._drained)
            picked += self._order[:: max(stride, 1)][: free - len(picked)]
        else:
            picked += list(islice(m.pool, free - len(picked)))
        return picked

    def migrate(self, m, w, now):
        """Work stealing: a worker with free slots and nothing left in the pool takes the running
        sample whose move most shortens the slowest worker's predicted finish, if the gain beats the
        re-prefill (twice over) and `min_gain` of that finish. Only with proven in-flight predictions."""
        if m.pool or not w.alive or w.committed >= w.slots or not m.trusted("inflight"):
            return []
        others = [
            o for o in m.alive_workers() if o is not w and any(m.samples[s].migrating_to is None for s in o.running)
        ]
        if not others:
            return []
        src = max(others, key=lambda o: o.finish_at)
        mine = (
            list(w.running)
            + w.importing()
            + [sid for o in others for sid in o.exports if m.samples[sid].migrating_to == w.worker_id]
        )
        movable = [s for s in src.running if m.samples[s].migrating_to is None]
        before = max(m.finish_estimate(movable), m.finish_estimate(mine))
        best = None
        for sid in sorted(movable, key=m.predicted_remaining, reverse=True)[:8]:
            if self._moves.get(sid, 0) >= self.max_moves:
                continue
            prefill = m.cost.prefill_time(m.samples[sid].sample.num_tokens)
            after = max(m.finish_estimate([s for s in movable if s != sid]), m.finish_estimate(mine + [sid]) + prefill)
            gain = before - after
            if gain > max(2 * prefill, self.min_gain * before) and (best is None or gain > best[0]):
                best = (gain, sid)
        if best is None:
            return []
        self._moves[best[1]] = self._moves.get(best[1], 0) + 1
        return [Migration(best[1], src.worker_id, w.worker_id)]


@register_policy("oracle")
class Oracle(LengthAware):
    prediction_source = "oracle"


@register_policy("length_aware_partial")
class LengthAwarePartial(Policy):
    """Partial rollouts with length predictions (rollout_len.sched.partial).

    NOTE: in a partial step nothing waits for the tail; what costs is a sample that cannot end
    within the staleness bound (its group, finished siblings too, is restarted or dropped). So the
    longest work starts first and runs fast: samples that resume (their tokens age) first, then
    the rest, each by longest predicted remaining length (in-flight predictions, the prompt's for
    samples not started) where those predictions have earned trust, else in arrival order, whole
    groups together (as `april`). While several workers fill at once (a step's start), each takes
    every k-th sample of that order (LPT dealing), so the long samples spread across workers: a
    decode step's cost grows with the context it attends to, and a worker full of long samples
    decodes each of them slower. (Consolidating them on dedicated workers, as Laminar and
    RollPacker do, pays where a step's cost grows with the batch; on a cost model where the
    context term dominates it does not: see docs/results/rollout-partial.md.)"""

    group_major = True

    def __init__(self):
        self._order: list[str] = []
        self._cursor = 0
        self._sorted_size = -1

    def _pool_order(self, m: SchedulerView) -> list[str]:
        """The pool, resuming samples first, then longest predicted first (stable): sorted once per
        step and whenever the pool grew (a sample came back), then consumed through a cursor."""
        if len(m.pool) > self._sorted_size:
            rank = {sid: i for i, sid in enumerate(m.pool)}
            admission = m.trusted("admission")

            def key(sid: str) -> tuple[bool, float, int]:
                started = m.samples[sid].sample.num_output > 0
                known = m.trusted("inflight") if started else admission
                return not started, -m.predicted_remaining(sid) if known else 0.0, rank[sid]

            self._order = sorted(m.pool, key=key)
            self._cursor = 0
        while self._cursor < len(self._order) and self._order[self._cursor] not in m.pool:
            self._cursor += 1
        self._sorted_size = len(m.pool)
        return self._order

    def admit(self, m, w, free):
        order = self._pool_order(m)
        stride = max(sum(1 for o in m.alive_workers() if o.committed < o.slots), 1)
        picked: list[str] = []
        for sid in islice(order, self._cursor, None):
            if len(picked) >= free * stride:
                break
            if sid in m.pool:
                picked.append(sid)
        return picked[::stride][:free]
