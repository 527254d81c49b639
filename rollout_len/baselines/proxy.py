"""Prompt-text baselines on a proxy encoder: SSJF (regression / multi-class), S3, learning to rank.

The encoder (all-MiniLM-L6-v2 by default, see encoder.py) is frozen: each prompt is embedded once
and only a small head is trained, on the train split's samples, with the epoch chosen on val. With
tens of training prompts and two CPU cores, fine-tuning 22M encoder weights would mostly memorize the
train prompts; the published methods fine-tune a BERT-sized model on far larger sets.

- `ssjf_reg`: MLP regression of the length (L1 loss on length / budget).
- `ssjf_mc`: MLP classifier over 10 equal-mass length bins of the train lengths; the prediction is
  the mean train length of the most probable bin.
- `s3`: the same classifier over 10 equal-width buckets of [0, max_new_tokens]: S3's bucket
  prediction, scored at the mean train length of the predicted bucket (its midpoint when empty).
- `ltr_c`: an MLP scorer trained with ListMLE on lists of train prompts ranked by their mean
  length (epoch chosen by Kendall's tau on val). Its tau is the score's. For MAE a score becomes a
  length through the train set: its percentile among the train prompts' scores, read off as that
  quantile of the train lengths (monotone, so the ranking is kept).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rollout_len.baselines.base import TRAIN, VAL, Baseline, ForeLenData, Standardize, fit_selecting_on_val
from rollout_len.predictor.head import LengthBins
from rollout_len.predictor.train import kendall_tau

__all__ = ["SSJFReg", "SSJFMultiClass", "S3Buckets", "LearningToRank", "list_mle", "mlp"]

NUM_BINS = 10


def mlp(x_train: torch.Tensor, out_dim: int, hidden: int = 128, dropout: float = 0.1, seed: int = 0) -> nn.Sequential:
    """Standardize (train statistics) → Linear → ReLU → Dropout → Linear, initialized from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(
        Standardize(x_train),
        nn.Linear(x_train.shape[1], hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_dim),
    )


def _features(data: ForeLenData, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embedding and length of every sample of a split."""
    idx = data.samples(split)
    if len(idx) == 0:
        raise ValueError(f"split {split} has no samples; the dataset is too small")
    return data.embeddings[data.sample_prompt[idx]], data.lengths[idx]


class SSJFReg(Baseline):
    name = "ssjf_reg"

    def fit(self, data: ForeLenData) -> None:
        x, y = _features(data, TRAIN)
        x_val, y_val = _features(data, VAL)
        self.scale = float(data.budget)
        self.net = mlp(x, 1)
        fit_selecting_on_val(
            self.net,
            lambda net, xb, yb: (net(xb)[:, 0] - yb / self.scale).abs().mean(),
            x,
            y,
            lambda net: (self._lengths(net(x_val)) - y_val).abs().mean(),
        )

    def _lengths(self, out: torch.Tensor) -> torch.Tensor:
        return (out[:, 0] * self.scale).clamp(0, self.scale)

    @torch.no_grad()
    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self._lengths(self.net(_features(data, split)[0]))


class _BinClassifier(Baseline):
    """An MLP over length bins (cross-entropy on the bin index); predicts the chosen bin's mean train length."""

    def bins(self, data: ForeLenData, train_lengths: torch.Tensor) -> LengthBins:
        raise NotImplementedError

    def fit(self, data: ForeLenData) -> None:
        x, y = _features(data, TRAIN)
        x_val, y_val = _features(data, VAL)
        self.length_bins = self.bins(data, y)
        label = self.length_bins.index(y)
        count = torch.bincount(label, minlength=self.length_bins.num_bins).float()
        total = torch.zeros(self.length_bins.num_bins).index_add_(0, label, y)
        self.values = torch.where(count > 0, total / count.clamp_min(1), self.length_bins.centers)
        self.net = mlp(x, self.length_bins.num_bins)
        fit_selecting_on_val(
            self.net,
            lambda net, xb, lb: nn.functional.cross_entropy(net(xb), lb),
            x,
            label,
            lambda net: (self.values[net(x_val).argmax(1)] - y_val).abs().mean(),
        )

    @torch.no_grad()
    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.values[self.net(_features(data, split)[0]).argmax(1)]


class SSJFMultiClass(_BinClassifier):
    name = "ssjf_mc"

    def bins(self, data: ForeLenData, train_lengths: torch.Tensor) -> LengthBins:
        return LengthBins.from_quantiles(train_lengths.numpy(), NUM_BINS)


class S3Buckets(_BinClassifier):
    name = "s3"

    def bins(self, data: ForeLenData, train_lengths: torch.Tensor) -> LengthBins:
        return LengthBins(tuple(float(e) for e in np.linspace(0, data.budget + 1, NUM_BINS + 1)))


def list_mle(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ListMLE: -log P(the true order | scores) under the Plackett-Luce model, longest first, per item."""
    s = scores[torch.argsort(lengths, descending=True)]
    return (torch.logcumsumexp(s.flip(0), 0).flip(0) - s).mean()


class LearningToRank(Baseline):
    name = "ltr_c"

    def fit(self, data: ForeLenData) -> None:
        prompts = torch.nonzero(data.prompt_split == TRAIN)[:, 0]
        count = torch.bincount(data.sample_prompt, minlength=len(data.prompt_split)).float()
        mean = torch.zeros(len(data.prompt_split)).index_add_(0, data.sample_prompt, data.lengths) / count.clamp_min(1)
        x, y = data.embeddings[prompts], mean[prompts]
        if len(x) < 2:
            raise ValueError("ltr_c needs at least 2 training prompts to rank")
        x_val, y_val = _features(data, VAL)
        self.net = mlp(x, 1, hidden=64)
        fit_selecting_on_val(
            self.net,
            lambda net, xb, yb: list_mle(net(xb)[:, 0], yb),
            x,
            y,
            lambda net: -kendall_tau(net(x_val)[:, 0].numpy(), y_val.numpy()),
            batch_size=16,
        )
        with torch.no_grad():
            self.train_scores = np.sort(self.net(x)[:, 0].numpy())
        self.train_lengths = data.lengths[data.samples(TRAIN)].numpy()

    @torch.no_grad()
    def scores(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.net(_features(data, split)[0])[:, 0]

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        levels = np.interp(
            self.scores(data, split).numpy(), self.train_scores, np.linspace(0, 1, len(self.train_scores))
        )
        return torch.from_numpy(np.quantile(self.train_lengths, levels)).float()
