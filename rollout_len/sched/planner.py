"""Makespan estimates with the cost model: the arithmetic behind every scheduling decision.

A fluid, event-driven estimate: each worker decodes its running samples one token per step at
`step_time(batch)`; when a sample ends, the freed slot takes the next sample of a shared queue.
Cheap enough (O(samples · log workers)) to compare candidate plans each time the policy decides.
"""

from __future__ import annotations

import heapq

import numpy as np

from rollout_len.sched.costmodel import CostModel

__all__ = ["estimate_makespan"]


def estimate_makespan(
    running: list[np.ndarray],
    queue: np.ndarray,
    slots: list[int],
    cost: CostModel,
    mean_context: float = 0.0,
    ready_at: list[float] | None = None,
) -> float:
    """Estimated time until every running and queued sample ends.

    running[w]: remaining tokens of worker w's samples; queue: remaining tokens of waiting samples
    in admission order; slots[w]: worker w's decode slots; ready_at[w]: when w can start (default 0).
    Each worker keeps its samples' end points on a common token axis (`offset`: tokens each of its
    samples has decoded since the start), so an event costs O(log batch).
    """
    pending = [max(float(q), 1.0) for q in np.asarray(queue, dtype=float)]
    taken = 0
    ends = [sorted(float(x) for x in r if x > 0) for r in running]  # sorted lists are heaps
    offset = [0.0] * len(running)
    clock = [float(x) for x in ready_at] if ready_at is not None else [0.0] * len(running)
    events: list[tuple[float, int]] = []
    end = 0.0

    def fill(w: int) -> None:
        nonlocal taken
        heap = ends[w]
        while len(heap) < slots[w] and taken < len(pending):
            heapq.heappush(heap, offset[w] + pending[taken])
            taken += 1
        if heap:
            batch = len(heap)
            step = cost.step_time(batch, int(batch * mean_context))
            heapq.heappush(events, (clock[w] + (heap[0] - offset[w]) * step, w))

    for w in sorted(range(len(ends)), key=lambda i: clock[i]):
        fill(w)
    while events:
        t, w = heapq.heappop(events)
        heap = ends[w]
        offset[w] = heap[0]
        while heap and heap[0] <= offset[w] + 1e-9:
            heapq.heappop(heap)
        clock[w] = t
        end = max(end, t)
        fill(w)
    return end
