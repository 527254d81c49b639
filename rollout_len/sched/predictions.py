"""What the scheduler knows about lengths before a sample ends: buckets, the prior, prediction quality.

    bucket_of(remaining)         log2 bucket of a predicted remaining length
    LengthPrior                  the constant predictor: median finished length (or half the budget)
    PredictionQuality            is the predictor better than that constant? per use, over a window

Policies act on predictions only once `PredictionQuality.trusted(kind)` says they beat the constant
by a margin; otherwise they fall back to the length-blind plan.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["PREDICTION_KINDS", "PREDICTION_SOURCES", "LengthPrior", "PredictionQuality", "bucket_of"]

PREDICTION_SOURCES = ("model", "oracle", "noise")  # the PLP head; true lengths; uniform noise (do-no-harm)
PREDICTION_KINDS = ("admission", "inflight")  # t = 0 (prompt only); t > 0 (after decoding started)


def bucket_of(remaining: float) -> int:
    """Log2 buckets of predicted remaining tokens: 0 = [0, 2), 1 = [2, 4), ... (robust to noise in
    the low bits of a prediction, fine where lengths differ by factors)."""
    return int(math.log2(max(remaining, 1.0))) if remaining >= 2 else 0


class LengthPrior:
    """The constant predictor: a response's total length is the median of the finished ones so far
    (the last `window` of them), or half the budget before any has finished."""

    def __init__(self, window: int = 4096):
        self._lengths: deque = deque(maxlen=window)

    def total(self, max_new_tokens: int) -> float:
        return float(np.median(self._lengths)) if self._lengths else max_new_tokens / 2

    def remaining(self, tokens_done: int, max_new_tokens: int) -> float:
        """Prior remaining tokens, in [1, tokens still allowed] (a running sample has at least one left)."""
        left = max(max_new_tokens - tokens_done, 1)
        return float(np.clip(self.total(max_new_tokens) - tokens_done, 1, left))

    def baseline(self, tokens_done: int, max_new_tokens: int) -> float:
        """The constant's answer scored against a finished sample, in [0, tokens allowed]."""
        return float(np.clip(self.total(max_new_tokens) - tokens_done, 0, max_new_tokens - tokens_done))

    def observe(self, length: int) -> None:
        self._lengths.append(length)


class PredictionQuality:
    """Is the predictor better than a constant? Kept per use (admission: t = 0; inflight: t > 0)
    over a sliding window of finished samples, across steps."""

    def __init__(self, window: int = 512, min_count: int = 32, margin: float = 0.9):
        self.window, self.min_count, self.margin = window, min_count, margin
        self._errors: dict[str, deque] = {kind: deque(maxlen=window) for kind in PREDICTION_KINDS}

    def record(self, kind: str, predicted: float, actual: float, baseline: float) -> None:
        self._errors[kind].append((abs(predicted - actual), abs(baseline - actual)))

    def mae(self, kind: str) -> tuple[float, float, int]:
        """(predictor MAE, constant MAE, count) over the window."""
        errors = self._errors[kind]
        if not errors:
            return float("nan"), float("nan"), 0
        arr = np.array(errors)
        return float(arr[:, 0].mean()), float(arr[:, 1].mean()), len(arr)

    def trusted(self, kind: str) -> bool:
        model, constant, n = self.mae(kind)
        return n >= self.min_count and model <= self.margin * constant
