"""TRAIL-style prediction (Shahout et al. 2025): the policy's own embeddings → an MLP over
remaining-length bins, refined as decoding goes on.

- Before decoding: the mean over prompt tokens of an intermediate layer's states (the dataset's
  `prompt/{layer}/mean`; the layer is chosen on val among the stored layers below the last) → an MLP
  classifier over 10 equal-width bins of [0, max_new_tokens].
- At each decode checkpoint t > 0: a second MLP classifier over the same bins of the remaining
  length. Approximation: TRAIL reads the newest token's intermediate-layer embedding at every step;
  the dataset stores, every k tokens, only the entropy-weighted pool of the generated tokens'
  final-layer states (what PLP reads), so that pool is this classifier's input.
- Refinement, chosen on val: "bayes", the previous belief carried forward (each bin's mass slides
  down by the tokens decoded since, as the remaining length shrinks) times the classifier's output,
  renormalized; or "latest", the classifier's output alone.

The prediction is the expected remaining length under the belief, within [1, budget left].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rollout_len.baselines.base import (
    TRAIN,
    VAL,
    Baseline,
    ForeLenData,
    clamp_remaining,
    fit_selecting_on_val,
    single_thread,
)
from rollout_len.baselines.proxy import NUM_BINS, mlp
from rollout_len.predictor.head import LengthBins

__all__ = ["Trail", "shift_down"]

REFINEMENTS = ("bayes", "latest")


def shift_down(probs: torch.Tensor, tokens: float, width: float) -> torch.Tensor:
    """Carry a belief over equal-width remaining-length bins forward by `tokens` decoded tokens: each
    bin hands a fraction tokens/width of its mass to the bin below (whole bins first when more than
    one width passes); the lowest bin keeps its mass.  (K,) -> (K,)"""
    steps = tokens / width
    while steps > 0:
        f = min(1.0, steps)
        moved = probs[1:] * f
        probs = probs.clone()
        probs[1:] -= moved
        probs[:-1] += moved
        steps -= f
    return probs


class Trail(Baseline):
    name = "trail"
    progressive = True

    def fit(self, data: ForeLenData) -> None:
        final = max(data.card["layers"])
        layers = [layer for layer in data.card["layers"] if layer < final]
        if not layers:
            raise ValueError(f"trail needs an intermediate layer; the dataset stores only layers {data.card['layers']}")
        self.bins = LengthBins(tuple(float(e) for e in np.linspace(0, data.budget + 1, NUM_BINS + 1)))
        self.width = (data.budget + 1) / NUM_BINS
        train, val = data.samples(TRAIN), data.samples(VAL)
        best = float("inf")
        for layer in layers:
            x = self._prompt_x(data, layer)
            net = mlp(x[train], NUM_BINS)
            error = fit_selecting_on_val(
                net,
                _cross_entropy,
                x[train],
                self.bins.index(data.lengths[train]),
                lambda n, x=x: self._mae(n(x[val]), data.lengths[val]),
            )
            if error < best:
                best, self.layer, self.prompt_net = error, layer, net
        train_c = data.decode_checkpoints(TRAIN)
        val_c = data.decode_checkpoints(VAL)
        x, left = data.ckpt_pool, data.ckpt_remaining
        self.decode_net = mlp(x[train_c], NUM_BINS)
        fit_selecting_on_val(
            self.decode_net,
            _cross_entropy,
            x[train_c],
            self.bins.index(left[train_c]),
            lambda n: self._mae(n(x[val_c]), left[val_c]),
            batch_size=128,
        )
        idx = data.checkpoints(VAL)
        errors = {
            mode: float((self._remaining(data, VAL, mode) - data.ckpt_remaining[idx]).abs().mean())
            for mode in REFINEMENTS
        }
        self.refine = min(errors, key=errors.get)
        self.selected = {"layer": self.layer, "refine": self.refine}

    @staticmethod
    def _prompt_x(data: ForeLenData, layer: int) -> torch.Tensor:
        return data.tensors[f"prompt/{layer}/mean"].float()[data.sample_prompt]

    def _mae(self, logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(-1) @ self.bins.centers - true).abs().mean()

    @torch.no_grad()
    def _remaining(self, data: ForeLenData, split: int, mode: str) -> torch.Tensor:
        idx = data.checkpoints(split)
        samples, steps = data.ckpt_sample[idx], data.ckpt_t[idx]
        first = self.prompt_net(self._prompt_x(data, self.layer)[samples]).softmax(-1)
        later = self.decode_net(data.ckpt_pool[idx]).softmax(-1).clamp_min(1e-12)
        belief = torch.empty_like(first)
        with single_thread():
            for s in torch.unique(samples).tolist():
                rows = torch.nonzero(samples == s)[:, 0]
                rows = rows[torch.argsort(steps[rows])]
                current, t_prev = first[rows[0]], 0
                for r in rows.tolist():
                    t = int(steps[r])
                    if t > 0 and mode == "latest":
                        current = later[r]
                    elif t > 0:
                        current = shift_down(current, t - t_prev, self.width) * later[r]
                        current = current / current.sum()
                    belief[r], t_prev = current, t
        return clamp_remaining(belief @ self.bins.centers, data.ckpt_budget_left[idx])

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self._remaining(data, split, self.refine)

    @torch.no_grad()
    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.samples(split)
        expected = self.prompt_net(self._prompt_x(data, self.layer)[idx]).softmax(-1) @ self.bins.centers
        return clamp_remaining(expected, torch.full((len(idx),), data.budget))


def _cross_entropy(net: nn.Module, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(net(x), label)
