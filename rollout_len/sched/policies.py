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
    length_aware   shared pool; longest-predicted-first admission when the cost model says it pays
                   and predictions have proven better than a constant; migration of running
                   samples when predicted remaining work is unbalanced and the move pays for its
                   re-prefill; otherwise the length-blind plan
    oracle         length_aware fed the true lengths (from a recorded trace): the ceiling
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


def longest_first(m: SchedulerView, ids) -> list[str]:
    """Descending bucket of predicted remaining length; arrival order within a bucket."""
    return sorted(ids, key=lambda sid: (-m.bucket(sid), m.samples[sid].arrival))


@register_policy("bucketed_padded")
class BucketedPadded(Policy):
    static_batches = True

    def admit(self, m, w, free):
        if w.running:
            return []
        if not m.trusted("admission"):
            return list(islice(m.pool, w.slots))
        # A padded batch runs to its longest: take neighbours in predicted length (finer than buckets).
        return sorted(m.pool, key=m.predicted_remaining, reverse=True)[: w.slots]


@register_policy("length_aware")
class LengthAware(Policy):
    def __init__(self, replan_fraction: float = 0.1, min_gain: float = 0.05, max_moves_per_sample: int = 1):
        self.replan_fraction, self.min_gain, self.max_moves = replan_fraction, min_gain, max_moves_per_sample
        self._plan_pool_size: int | None = None
        self._longest_first = False
        self._moves: dict[str, int] = {}
        self._order: list[str] = []
        self.plans: list[dict] = []  # every plan comparison made, for the report

    def _replan(self, m: SchedulerView) -> None:
        """Compare the length-blind admission order with longest-first on the cost model."""
        size = len(m.pool)
        if (
            self._plan_pool_size is not None
            and abs(size - self._plan_pool_size) <= self.replan_fraction * self._plan_pool_size
        ):
            return
        self._plan_pool_size = size
        if not (m.trusted("admission") or m.trusted("inflight")) or size == 0:
            self._longest_first = False
            return
        alive = m.alive_workers()
        running = [np.array([m.predicted_remaining(s) for s in w.running]) for w in alive]
        slots = [w.slots for w in alive]
        fifo = list(m.pool)
        lpt = longest_first(m, fifo)
        ctx = m.mean_context()
        blind = estimate_makespan(running, np.array([m.predicted_remaining(s) for s in fifo]), slots, m.cost, ctx)
        aware = estimate_makespan(running, np.array([m.predicted_remaining(s) for s in lpt]), slots, m.cost, ctx)
        self._longest_first = aware < blind
        self._order = lpt if self._longest_first else []
        self.plans.append({"pool": size, "fifo_s": blind, "longest_first_s": aware})

    def admit(self, m, w, free):
        self._replan(m)
        picked = list(w.queue)[:free]
        if self._longest_first:  # the plan's order, minus samples already taken
            self._order = [sid for sid in self._order if sid in m.pool]
            picked += self._order[: free - len(picked)]
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
