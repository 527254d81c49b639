"""Predictors an RL framework has for free, without any model.

- `constant` (admission time, t = 0 only): the train median length.
- `survival` (in flight, t > 0): a sample that has generated t tokens gets the median of L - t over
  the train samples that ran past t (L > t), the conditional residual median given t; when no train
  sample ran past t, half of the budget left. At t = 0 every sample has run past t, so it equals
  `constant` there. The same rule as the live quality gate's prior (sched/predictions.LengthPrior).
  Its 90% quantile (`remaining_q90`, for q90 coverage) follows the same rule at q = 0.9: the 90th
  percentile of L - t over those train samples, or 0.9 x the budget left where none ran past t.
- `survival_group`: `survival` over the sample's own group: the median of L - t over the *other*
  samples of the same prompt that ran past t (the finished siblings, or the prompt's rollouts in an
  earlier step); `survival` where none did. Offline it sees the siblings' final lengths, so, like
  `history`, it is what a group can tell at best rather than what a live scheduler knows at step t.
- `history` (RhymeRL-style): the mean length of the *other* samples of the same prompt, standing for
  that prompt's rollouts in the previous epoch. It sees the test prompt's own lengths, so it is a
  prompt-level ceiling rather than a predictor a prompt-only method should be expected to beat.
- `siblings` (Seer-style, progressive): at decode step t, the mean length of the sample's group
  mates that have finished by t (length <= t), as a remaining length; `survival` while none has.

`survival_group`, `history` and `siblings` need several samples per prompt (the `rl` scenario).
Medians are the midpoint of the two middle values for an even count (as numpy's).
"""

from __future__ import annotations

import torch

from rollout_len.baselines.base import TRAIN, Baseline, ForeLenData, NotApplicable, clamp_remaining, to_remaining

__all__ = ["Constant", "Survival", "SurvivalGroup", "History", "Siblings", "survival_remaining"]


def _median(x: torch.Tensor) -> float:
    return _quantile(x, 0.5)


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double(), q))


def _train_lengths(data: ForeLenData) -> torch.Tensor:
    train = data.samples(TRAIN)
    if len(train) == 0:
        raise ValueError("the train split has no samples")
    return data.lengths[train]


def survival_remaining(
    lengths: torch.Tensor, steps: torch.Tensor, budget_left: torch.Tensor, q: float = 0.5
) -> torch.Tensor:
    """The survival estimate of the remaining length at each step t: by default its median, else its
    q-quantile (q in [0, 1]).

    lengths (N,): finished lengths (tokens); steps, budget_left (C,): t and max_new_tokens - t.
    Returns (C,) float: quantile_q(L - t over L > t), or q x budget_left (budget_left / 2 for the
    median) where no L exceeds t, kept in [1, budget left] (a running sample emits at least one more
    token, at most its budget)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    lengths = lengths.double()
    unique, inverse = torch.unique(steps, return_inverse=True)
    ran_past = [lengths[lengths > t] - t for t in unique.tolist()]
    quantile = torch.tensor([_quantile(r, q) if len(r) else float("nan") for r in ran_past], dtype=torch.float64)
    estimate = quantile[inverse]
    estimate = torch.where(estimate.isnan(), budget_left.double() * q, estimate)
    return clamp_remaining(estimate.float(), budget_left)


class Constant(Baseline):
    name = "constant"

    def fit(self, data: ForeLenData) -> None:
        self.median = _median(_train_lengths(data))

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return torch.full((len(data.samples(split)),), self.median)


class Survival(Baseline):
    name = "survival"
    progressive = True
    admission = False  # at t = 0 it is `constant`

    def fit(self, data: ForeLenData) -> None:
        self.train_lengths = _train_lengths(data)

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return torch.full((len(data.samples(split)),), _median(self.train_lengths))

    def remaining_at(self, steps: torch.Tensor, budget_left: torch.Tensor, q: float = 0.5) -> torch.Tensor:
        """Remaining length (its q-quantile; the median by default) at steps t (C,) with budget_left (C,)
        tokens still allowed.  (C,)"""
        return survival_remaining(self.train_lengths, steps, budget_left, q)

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        return self.remaining_at(data.ckpt_t[idx], data.ckpt_budget_left[idx])

    def remaining_q90(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        return self.remaining_at(data.ckpt_t[idx], data.ckpt_budget_left[idx], q=0.9)


def _require_groups(data: ForeLenData, name: str) -> None:
    if data.n < 2:
        raise NotApplicable(f"{name} needs several samples per prompt; this dataset has n={data.n}")


class SurvivalGroup(Baseline):
    name = "survival_group"
    progressive = True
    admission = False

    def fit(self, data: ForeLenData) -> None:
        _require_groups(data, self.name)
        self.survival = Survival()
        self.survival.fit(data)

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.survival.predict(data, split)

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        samples, steps, budget_left = data.ckpt_sample[idx], data.ckpt_t[idx], data.ckpt_budget_left[idx]
        prompt = data.sample_prompt
        # (C, S): the other samples of each checkpoint's prompt that ran past its step t.
        mates = prompt[samples][:, None] == prompt[None, :]
        mates[torch.arange(len(idx)), samples] = False
        alive = mates & (data.lengths[None, :] > steps[:, None])
        residual = torch.where(alive, data.lengths[None, :].double() - steps[:, None].double(), torch.nan)
        group = clamp_remaining(residual.nanquantile(0.5, dim=1).nan_to_num(0.0).float(), budget_left)
        return torch.where(alive.any(1), group, self.survival.remaining_at(steps, budget_left))


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
        self.survival = Survival()
        self.survival.fit(data)

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self.survival.predict(data, split)  # t = 0: nothing has finished yet

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        idx = data.checkpoints(split)
        samples, steps, budget_left = data.ckpt_sample[idx], data.ckpt_t[idx], data.ckpt_budget_left[idx]
        prompt = data.sample_prompt
        # (C, S): the samples of each checkpoint's group that have finished by its step t (never the
        # checkpoint's own sample, which runs past t).
        finished = (prompt[samples][:, None] == prompt[None, :]) & (data.lengths[None, :] <= steps[:, None])
        count = finished.sum(1)
        mean = (finished.float() @ data.lengths) / count.clamp_min(1)
        fallback = self.survival.remaining_at(steps, budget_left)
        return torch.where(count > 0, to_remaining(mean, steps, budget_left), fallback)
