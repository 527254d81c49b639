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
    """
    queue = list(np.asarray(queue, dtype=float))[::-1]  # pop() from the end = admission order
    rem = [np.asarray(r, dtype=float)[np.asarray(r) > 0] for r in running]
    clock = list(ready_at) if ready_at is not None else [0.0] * len(running)
    heap: list[tuple[float, int]] = []
    end = 0.0

    def fill(w: int) -> None:
        free = slots[w] - len(rem[w])
        if free > 0 and queue:
            take = [queue.pop() for _ in range(min(free, len(queue)))]
            rem[w] = np.concatenate([rem[w], np.maximum(take, 1.0)])
        if len(rem[w]):
            step = cost.step_time(len(rem[w]), int(len(rem[w]) * mean_context))
            heapq.heappush(heap, (clock[w] + float(rem[w].min()) * step, w))

    for w in sorted(range(len(rem)), key=lambda i: clock[i]):
        fill(w)
    while heap:
        t, w = heapq.heappop(heap)
        rem[w] = rem[w] - rem[w].min()
        rem[w] = rem[w][rem[w] > 1e-9]
        clock[w] = t
        end = max(end, t)
        fill(w)
    return end
