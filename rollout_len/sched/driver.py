"""The step loop shared by the live rollout and the simulator.

    while samples remain (and the stop condition, if any, does not hold):
        every idle worker with work gets its next Orders from the manager;
        wait for any worker's Report (or its death) and hand it to the manager.
    once it holds: no more orders; the chunks in flight are waited for and applied.

A `Cluster` is anything with `submit(worker_id, orders)`, `wait_any()` and `now()`: Ray actors or
in-process workers (rollout_len.rollout.coordinator) or simulated workers (rollout_len.sched.simulator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from rollout_len.sched.bucket_manager import BucketManager
from rollout_len.sched.messages import Orders, Report
from rollout_len.sched.timeline import Chunk, Timeline

__all__ = ["Cluster", "WorkerDied", "drive"]


class WorkerDied(Exception):
    """A worker stopped answering (its actor died); its samples resume elsewhere."""


class Cluster(Protocol):
    def submit(self, worker_id: int, orders: Orders) -> None: ...
    def wait_any(self) -> tuple[int, Report | WorkerDied, float, float]: ...  # worker, result, sent at, received at
    def now(self) -> float: ...


def drive(
    manager: BucketManager, cluster: Cluster, every: int, until: Callable[[BucketManager], bool] | None = None
) -> Timeline:
    """Run one step; returns its timeline (times from the step's start).

    Without `until` the step runs until every sample has finished (a synchronous step). With it,
    the step stops once `until(manager)` holds, checked at the start and after every report (a
    partial step, e.g. `lambda m: len(m.complete_groups) >= quota`: rollout_len.sched.partial):
    no worker gets new orders, and the chunks already sent are waited for and applied, so the step
    ends at each busy worker's next chunk boundary (at most k decode steps) and the manager holds
    every unfinished sample's tokens for `BucketManager.end_step`."""
    if every < 1:
        raise ValueError(f"k (PLP interval, decode steps per chunk) must be >= 1, got {every}")
    timeline = Timeline(len(manager.workers))
    t0 = cluster.now()
    outstanding: set[int] = set()
    logged = 0
    stopped = until is not None and until(manager)
    while not manager.done():
        if stopped and not outstanding:
            break
        for w in [] if stopped else manager.alive_workers():
            if w.worker_id not in outstanding:
                orders = manager.orders_for(w.worker_id, every)
                if orders is not None:
                    cluster.submit(w.worker_id, orders)
                    outstanding.add(w.worker_id)
        if not outstanding:
            left = len(manager.samples) - len(manager.finished)
            raise RuntimeError(f"policy {manager.policy.name!r} left {left} samples unscheduled with every worker idle")
        worker_id, result, sent, received = cluster.wait_any()
        outstanding.discard(worker_id)
        if isinstance(result, WorkerDied):
            timeline.deaths.append((received - t0, worker_id))
            manager.worker_died(worker_id)
            continue
        result.worker_id = worker_id  # the cluster's index (a worker's own id may predate a restart)
        manager.apply(result, received - t0)
        mean_batch = float(np.mean(result.batch_sizes)) if result.batch_sizes else 0.0
        timeline.chunks.append(
            Chunk(worker_id, sent - t0, received - t0, result.busy_s, mean_batch, result.score_s, result.step_log)
        )
        for sid, src, dst in manager.migration_log[logged:]:
            timeline.migrations.append((received - t0, sid, src, dst))
        logged = len(manager.migration_log)
        stopped = stopped or (until is not None and until(manager))
    timeline.end_s = cluster.now() - t0
    return timeline
