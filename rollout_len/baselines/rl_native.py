"""Predictors an RL framework has for free, without any model.

- `constant`: the train median length. At decode step t it predicts the train median of the
  remaining length among train samples still running at t (t past every train sample: median - t).
- `history` (RhymeRL-style): the mean length of the *other* samples of the same prompt, standing for
  that prompt's rollouts in the previous epoch. It sees the test prompt's own lengths, so it is a
  prompt-level ceiling rather than a predictor a prompt-only method should be expected to beat.
- `siblings` (Seer-style, progressive): at decode step t, the mean length of the sample's group
  mates that have finished by t (length <= t), as a remaining length; `constant` while none has.

`history` and `siblings` need several samples per prompt (the `rl` scenario).
"""

from __future__ import annotations

import torch

from rollout_len.baselines.base import TRAIN, Baseline, ForeLenData, NotApplicable, to_remaining

__all__ = ["Constant", "History", "Siblings"]


class Constant(Baseline):
    name = "constant"
    progressive = True

    def fit(self, data: ForeLenData) -> None:
        train = data.samples(TRAIN)
        if len(train) == 0:
            raise ValueError("the train split has no samples")
        self.median = float(data.lengths[train].median())
        idx = data.checkpoints(TRAIN)
        steps, left = data.ckpt_t[idx], data.ckpt_remaining[idx]
        self.median_left = {int(t): float(left[steps == t].median()) for t in torch.unique(steps).tolist()}

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return torch.full((len(data.samples(split)),), self.median)

    def remaining_at(self, steps: torch.Tensor, budget_left: torch.Tensor) -> torch.Tensor:
        fallback = to_remaining(torch.full(steps.shape, self.median), steps, budget_left)
        known = torch.tensor([self.median_left.get(int(t), float("nan")) for t in steps.tolist()])
        return torch.where(known.isnan(), fallback, known)

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        return self.remaining_at(data.ckpt_t[idx], data.ckpt_budget_left[idx])


def _require_groups(data: ForeLenData, name: str) -> None:
    if data.n < 2:
        raise NotApplicable(f"{name} needs several samples per prompt; this dataset has n={data.n}")


class History(Baseline):
    name = "history"

    def fit(self, data: ForeLenData) -> None:
        _require_groups(data, self.name)

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.samples(split)
        prompt = data.sample_prompt
        total = torch.zeros(len(data.prompt_split)).index_add_(0, prompt, data.lengths)
        count = torch.bincount(prompt, minlength=len(data.prompt_split)).float()
        p = prompt[idx]
        return (total[p] - data.lengths[idx]) / (count[p] - 1)


class Siblings(Baseline):
    name = "siblings"
    progressive = True

    def fit(self, data: ForeLenData) -> None:
        _require_groups(data, self.name)
        self.constant = Constant()
        self.constant.fit(data)

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.constant.predict(data, split)  # t = 0: nothing has finished yet

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        samples, steps, budget_left = data.ckpt_sample[idx], data.ckpt_t[idx], data.ckpt_budget_left[idx]
        prompt = data.sample_prompt
        # (C, S): the samples of each checkpoint's group that have finished by its step t (never the
        # checkpoint's own sample, which runs past t).
        finished = (prompt[samples][:, None] == prompt[None, :]) & (data.lengths[None, :] <= steps[:, None])
        count = finished.sum(1)
        mean = (finished.float() @ data.lengths) / count.clamp_min(1)
        fallback = self.constant.remaining_at(steps, budget_left)
        return torch.where(count > 0, to_remaining(mean, steps, budget_left), fallback)
