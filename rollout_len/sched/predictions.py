"""What the scheduler knows about lengths before a sample ends: buckets, the prior, prediction quality.

    bucket_of(remaining)         log2 bucket of a predicted remaining length
    LengthPrior                  the survival baseline: median remaining length of the finished samples
                                 that ran past t (t = 0: the constant median length)
    PredictionQuality            is the predictor better than that baseline? per use, over a window

Policies act on predictions only once `PredictionQuality.trusted(kind)` says they beat their
baseline; otherwise they fall back to the length-blind plan.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np

__all__ = ["PREDICTION_KINDS", "PREDICTION_SOURCES", "LengthPrior", "PredictionQuality", "bucket_of"]

PREDICTION_SOURCES = ("model", "oracle", "noise")  # the PLP head; true lengths; uniform noise (do-no-harm)
# t = 0 from the prompt (the admission head); t = 0 from the sample's siblings (finished lengths and
# running siblings' predicted totals: Seer-style group probes); t > 0 (after decoding started).
PREDICTION_KINDS = ("admission", "group", "inflight")


def bucket_of(remaining: float) -> int:
    """Log2 buckets of predicted remaining tokens: 0 = [0, 2), 1 = [2, 4), ... (robust to noise in
    the low bits of a prediction, fine where lengths differ by factors)."""
    return int(math.log2(max(remaining, 1.0))) if remaining >= 2 else 0


class LengthPrior:
    """The honest no-model predictor (the survival baseline): a sample that has generated t tokens
    has the median remaining length L - t of the finished samples that ran past t (L > t); at
    t = 0 that is the constant median length. Before any sample has finished (or past every
    finished one): half the budget left. Over the last `window` finished samples.

    Kept as a sorted list, so each answer is O(log n): it is asked for every prediction scored."""

    def __init__(self, window: int = 4096):
        self._lengths: deque = deque(maxlen=window)
        self._sorted: list[int] = []

    def expected_remaining(self, tokens_done: int, max_new_tokens: int) -> float:
        """Median of L - t over finished L > t, unclipped (half the budget left when there is none)."""
        first = bisect.bisect_right(self._sorted, tokens_done)
        alive = len(self._sorted) - first
        if alive:
            mid = first + alive // 2
            median = self._sorted[mid] if alive % 2 else (self._sorted[mid - 1] + self._sorted[mid]) / 2
            return float(median) - tokens_done
        return (max_new_tokens - tokens_done) / 2  # nothing known past t: the middle of the budget left

    def remaining(self, tokens_done: int, max_new_tokens: int) -> float:
        """Prior remaining tokens, in [1, tokens still allowed] (a running sample has at least one left)."""
        left = max(max_new_tokens - tokens_done, 1)
        return min(max(self.expected_remaining(tokens_done, max_new_tokens), 1.0), float(left))

    def baseline(self, tokens_done: int, max_new_tokens: int) -> float:
        """The baseline's answer scored against a finished sample, in [0, tokens allowed]."""
        left = max(max_new_tokens - tokens_done, 0)
        return min(max(self.expected_remaining(tokens_done, max_new_tokens), 0.0), float(left))

    def observe(self, length: int) -> None:
        if len(self._lengths) == self._lengths.maxlen:  # the oldest leaves the window
            del self._sorted[bisect.bisect_left(self._sorted, self._lengths[0])]
        self._lengths.append(length)
        bisect.insort(self._sorted, length)


class PredictionQuality:
    """Have a source's predictions earned trust? Kept per source (PREDICTION_KINDS) over a sliding
    window of finished samples, across steps.

    - `inflight` (t > 0) predictions size migrations, so their magnitude must be right: trusted when
      their MAE is at most `margin` x the survival baseline's (LengthPrior) at the same t.
    - `admission` and `group` (t = 0) predictions order samples that have not started, where only
      their ranking matters and the baseline (one constant for every sample) ranks nothing: trusted
      when the Spearman correlation of predicted and true lengths is at least `min_rank_corr`.
      (A predictor of the group mean ranks well yet can lose to the median on MAE, since lengths
      are heavy-tailed; uniform noise has correlation ~0.)
    """

    def __init__(self, window: int = 512, min_count: int = 32, margin: float = 0.9, min_rank_corr: float = 0.2):
        self.window, self.min_count, self.margin, self.min_rank_corr = window, min_count, margin, min_rank_corr
        # (|predicted - actual|, |baseline - actual|, predicted, actual) per finished prediction
        self._records: dict[str, deque] = {kind: deque(maxlen=window) for kind in PREDICTION_KINDS}
        self._cache: dict[str, tuple[float, float, int, float, float]] = {}

    def record(self, kind: str, predicted: float, actual: float, baseline: float) -> None:
        self._records[kind].append((abs(predicted - actual), abs(baseline - actual), predicted, actual))
        self._cache.pop(kind, None)

    def _stats(self, kind: str) -> tuple[float, float, int, float, float]:
        if kind not in self._cache:
            rows = self._records[kind]
            if not rows:
                self._cache[kind] = (float("nan"), float("nan"), 0, float("nan"), float("nan"))
            else:
                arr = np.array(rows)
                log_error = np.log1p(np.maximum(arr[:, 3], 0)) - np.log1p(np.maximum(arr[:, 2], 0))
                self._cache[kind] = (
                    float(arr[:, 0].mean()),
                    float(arr[:, 1].mean()),
                    len(arr),
                    _spearman(arr[:, 2], arr[:, 3]),
                    float(log_error.std()),
                )
        return self._cache[kind]

    def mae(self, kind: str) -> tuple[float, float, int]:
        """(predictor MAE, baseline MAE, count) over the window."""
        return self._stats(kind)[:3]

    def rank_corr(self, kind: str) -> float:
        """Spearman correlation of predicted and true lengths over the window (nan when constant)."""
        return self._stats(kind)[3]

    def log_error_sd(self, kind: str) -> float:
        """Spread of log(1 + true) - log(1 + predicted) over the window: how far to trust a plan
        built on these predictions (nan before any record)."""
        return self._stats(kind)[4]

    def trusted(self, kind: str) -> bool:
        model, baseline, n, corr, _ = self._stats(kind)
        if n < self.min_count:
            return False
        if kind == "inflight":
            return model <= self.margin * baseline
        return corr >= self.min_rank_corr


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]  # ties share their mean rank
