"""TPV-style prediction (Thinking Progress Vector, Eisenstadt et al. 2025): a linear probe on the
final-layer hidden states that reads how far along a response is, p = t / N.

At a decode checkpoint t > 0 the probe gives p̂ (clipped to [0.001, 0.999]) and the remaining length
is t (1 - p̂) / p̂, within [1, budget left]. The probe is ridge regression on standardized features;
the ridge strength is chosen on val by remaining-length MAE. Approximation: the published probe reads
the current token's state; the dataset stores, every k tokens, the entropy-weighted pool of the
generated tokens' final-layer states, so that pool is the probe's input. At t = 0 nothing has been
generated and the probe has no input: the prediction is `survival`'s (at t = 0: the train median, as `constant`).
"""

from __future__ import annotations

import torch

from rollout_len.baselines.base import TRAIN, VAL, Baseline, ForeLenData, clamp_remaining
from rollout_len.baselines.rl_native import Survival

__all__ = ["TPV", "RIDGE_STRENGTHS"]

RIDGE_STRENGTHS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
_CLIP = 1e-3


class TPV(Baseline):
    name = "tpv"
    progressive = True

    def fit(self, data: ForeLenData) -> None:
        self.survival = Survival()
        self.survival.fit(data)
        train, val = data.decode_checkpoints(TRAIN), data.decode_checkpoints(VAL)
        x = data.ckpt_pool.double()
        self.mean, self.std = x[train].mean(0), x[train].std(0).nan_to_num(1.0).clamp_min(1e-6)
        z = (x[train] - self.mean) / self.std
        progress = data.ckpt_t[train].double() / data.lengths[data.ckpt_sample[train]].double()
        self.bias = float(progress.mean())
        gram, target = z.T @ z, z.T @ (progress - self.bias)
        best = float("inf")
        for strength in RIDGE_STRENGTHS:
            weight = torch.linalg.solve(gram + strength * torch.eye(len(gram), dtype=gram.dtype), target)
            error = float((self._probe(data, val, weight) - data.ckpt_remaining[val]).abs().mean())
            if error < best:
                best, self.weight, self.selected = error, weight, {"ridge": strength}

    def _probe(self, data: ForeLenData, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Remaining length from the probe with these weights at checkpoints idx (all with t > 0)."""
        z = (data.ckpt_pool[idx].double() - self.mean) / self.std
        p = (z @ weight + self.bias).clamp(_CLIP, 1 - _CLIP)
        steps = data.ckpt_t[idx].double()
        return clamp_remaining((steps * (1 - p) / p).float(), data.ckpt_budget_left[idx])

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.survival.predict(data, split)

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        out = self.survival.remaining_at(data.ckpt_t[idx], data.ckpt_budget_left[idx])
        later = data.ckpt_t[idx] > 0
        if later.any():
            out[later] = self._probe(data, idx[later], self.weight)
        return out
