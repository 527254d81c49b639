"""What the scheduler knows about lengths before a sample ends: buckets, the prior, prediction quality.

    bucket_of(remaining)         log2 bucket of a predicted remaining length
    LengthPrior                  the survival baseline: median remaining length of the finished samples
                                 that ran past t (t = 0: the constant median length)
    PredictionQuality            is the predictor better than that baseline? per use, over a window

Policies act on predictions only once `PredictionQuality.trusted(kind)` says they beat the baseline
at the same t by a margin; otherwise they fall back to the length-blind plan.
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
    """The honest no-model predictor (the survival baseline): a sample that has generated t tokens
    has the median remaining length L - t of the finished samples that ran past t (L > t); at
    t = 0 that is the constant median length. Before any sample has finished (or past every
    finished one): half the budget left. Over the last `window` finished samples."""

    def __init__(self, window: int = 4096):
        self._lengths: deque = deque(maxlen=window)
        self._sorted: np.ndarray | None = None

    def _survivors(self, tokens_done: int) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(np.asarray(self._lengths, dtype=float))
        return self._sorted[np.searchsorted(self._sorted, tokens_done, side="right") :]

    def expected_remaining(self, tokens_done: int, max_new_tokens: int) -> float:
        """Median of L - t over finished L > t, unclipped (half the budget left when there is none)."""
        alive = self._survivors(tokens_done)
        if len(alive):
            return float(np.median(alive)) - tokens_done
        return (max_new_tokens - tokens_done) / 2  # nothing known past t: the middle of the budget left

    def remaining(self, tokens_done: int, max_new_tokens: int) -> float:
        """Prior remaining tokens, in [1, tokens still allowed] (a running sample has at least one left)."""
        left = max(max_new_tokens - tokens_done, 1)
        return float(np.clip(self.expected_remaining(tokens_done, max_new_tokens), 1, left))

    def baseline(self, tokens_done: int, max_new_tokens: int) -> float:
        """The baseline's answer scored against a finished sample, in [0, tokens allowed]."""
        left = max_new_tokens - tokens_done
        return float(np.clip(self.expected_remaining(tokens_done, max_new_tokens), 0, left))

    def observe(self, length: int) -> None:
        self._lengths.append(length)
        self._sorted = None


class PredictionQuality:
    """Is the predictor better than the survival baseline (LengthPrior) at the same t? Kept per use
    (admission: t = 0; inflight: t > 0) over a sliding window of finished samples, across steps."""

    def __init__(self, window: int = 512, min_count: int = 32, margin: float = 0.9):
        self.window, self.min_count, self.margin = window, min_count, margin
        self._errors: dict[str, deque] = {kind: deque(maxlen=window) for kind in PREDICTION_KINDS}

    def record(self, kind: str, predicted: float, actual: float, baseline: float) -> None:
        self._errors[kind].append((abs(predicted - actual), abs(baseline - actual)))

    def mae(self, kind: str) -> tuple[float, float, int]:
        """(predictor MAE, baseline MAE, count) over the window."""
        errors = self._errors[kind]
        if not errors:
            return float("nan"), float("nan"), 0
        arr = np.array(errors)
        return float(arr[:, 0].mean()), float(arr[:, 1].mean()), len(arr)

    def trusted(self, kind: str) -> bool:
        model, constant, n = self.mae(kind)
        return n >= self.min_count and model <= self.margin * constant
