"""The read-only view a policy decides from (the BucketManager implements it).

A policy reads this view and *returns* its decisions; it never calls back into the object that
asked it (STYLE.md). Keeping the view a `Protocol` keeps policies independent of the manager's
class, so the two modules do not import each other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, Protocol

from rollout_len.sample import Sample
from rollout_len.sched.costmodel import CostModel

__all__ = ["Migration", "SampleView", "SchedulerView", "WorkerView"]


class Migration(NamedTuple):
    """Move a running sample (its tokens, RNG and PLP state) from one worker to another."""

    sample_id: str
    src: int
    dst: int


class SampleView(Protocol):
    sample: Sample
    arrival: int  # submission order within the step
    worker: int | None  # runs there, or waits in that worker's queue
    migrating_to: int | None


class WorkerView(Protocol):
    worker_id: int
    slots: int
    alive: bool
    running: Collection[str]  # in the order the samples started (never a hash-ordered set)
    queue: Sequence[str]  # placed here, not started
    exports: Sequence[str]  # to migrate out on the next chunk
    finish_at: float  # estimated time its running samples end (as of its last report)

    @property
    def committed(self) -> int:
        """Slots taken or promised: running, imports waiting, migrations on their way here."""
        ...

    @property
    def in_flight(self) -> int:
        """Running, queued here and imports waiting."""
        ...

    def importing(self) -> list[str]:
        """Ids of migrated samples waiting to start here on the next chunk."""
        ...


class SchedulerView(Protocol):
    cost: CostModel

    @property
    def pool(self) -> Mapping[str, None]:
        """Samples waiting for any worker, in admission order (an ordered set)."""
        ...

    @property
    def samples(self) -> Mapping[str, SampleView]:
        """Every sample of the step by id."""
        ...

    def alive_workers(self) -> list[WorkerView]: ...

    def predicted_remaining(self, sample_id: str) -> float:
        """Best current estimate of a sample's remaining tokens, in [1, budget left] while it runs."""
        ...

    def bucket(self, sample_id: str) -> int:
        """Log2 bucket of `predicted_remaining` (rollout_len.sched.predictions.bucket_of)."""
        ...

    def trusted(self, kind: str) -> bool:
        """Have predictions of this kind ("admission" or "inflight") beaten the constant?"""
        ...

    def log_error_sd(self, kind: str) -> float:
        """Measured spread of log(true / predicted) for this kind (0 for true lengths)."""
        ...

    def finish_estimate(self, sample_ids: list[str]) -> float:
        """Seconds for one worker to finish these samples at the cost model's speed (no admissions)."""
        ...

    def mean_context(self) -> float:
        """Mean tokens per sample (prompt + half the budget): the cost model's context term."""
        ...
