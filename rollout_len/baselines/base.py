"""What every baseline shares: the dataset view, the interface, the training loop and the scoring.

    data = ForeLenData.load("data/forelen/rl", encoder="all-minilm-l6-v2")
    method = BASELINES["ssjf_reg"]()
    method.fit(data)                     # train on the train split, choose settings on val
    lengths = method.predict(data, TEST) # one predicted total length per test sample
    metrics = evaluate_baseline(BASELINES["trail"](), data)   # {"admission": ..., "in_flight": ..., "by_t": ...}

A progressive method (`progressive = True`) also predicts the remaining length at the dataset's
decode checkpoints (sample s, t tokens generated), the same t axis as PLP. Admission-time (t = 0,
total length) and in-flight (t > 0, remaining length) errors are kept apart, and every MAE carries
the capped fraction of what it scored (the share of those samples that hit max_new_tokens). A method
that also predicts the 90% quantile of the remaining length (`remaining_q90`) gets its calibration,
`q90_coverage`, beside its remaining-length MAEs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from rollout_len.baselines.encoder import load_encoder
from rollout_len.forelen.dataset import TEST, TRAIN, VAL, load_dataset, load_prompts
from rollout_len.model import load_policy
from rollout_len.predictor.train import evaluate, kendall_tau

__all__ = [
    "TRAIN",
    "VAL",
    "TEST",
    "NotApplicable",
    "ForeLenData",
    "Baseline",
    "Standardize",
    "fit_selecting_on_val",
    "single_thread",
    "clamp_remaining",
    "to_remaining",
    "evaluate_baseline",
    "scored",
    "remaining_metrics",
    "IN_FLIGHT",
    "prompt_text",
]

IN_FLIGHT = "every test checkpoint with t > 0 pooled, each once (a sample counts at each checkpoint it reaches)"


class NotApplicable(ValueError):
    """The method does not apply to this dataset (e.g. it needs several samples per prompt)."""


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt as plain text: the string itself, or the chat messages' contents joined by newlines."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def clamp_remaining(remaining: torch.Tensor, budget_left: torch.Tensor) -> torch.Tensor:
    """A remaining length kept within [1, budget left]: a sample still running emits at least one more
    token and at most its budget."""
    return torch.minimum(remaining.float().clamp_min(1.0), budget_left.float())


def to_remaining(total: torch.Tensor, steps: torch.Tensor, budget_left: torch.Tensor) -> torch.Tensor:
    """A predicted total length turned into the remaining length at step t: total - t, clamped."""
    return clamp_remaining(total.float() - steps.float(), budget_left)


class ForeLenData:
    """A built ForeLen-lite dataset as the baselines see it.

    Per sample: prompt index, length, capped (hit max_new_tokens; from the build's `sample/capped`,
    else length >= budget), split (by prompt). Per checkpoint (decode step t of sample s):
    t, the remaining length, the budget left, the pool of the generated final-layer states. The prompt
    texts, their proxy-encoder embeddings and the policy are read or loaded on first use.
    """

    def __init__(
        self,
        card: dict,
        tensors: dict[str, torch.Tensor],
        folder: str | Path | None = None,
        encoder: str = "all-minilm-l6-v2",
        prompts: list | None = None,
        policy=None,
    ):
        self.card, self.tensors = card, tensors
        self.folder = Path(folder) if folder is not None else None
        self.encoder_name = encoder
        self.n = int(card["sampling"]["n"])
        self.budget = int(card["sampling"]["max_new_tokens"])
        self.sample_prompt = tensors["sample/prompt"].long()
        self.lengths = tensors["sample/length"].float()
        capped = tensors.get("sample/capped")
        self.capped = capped.bool() if capped is not None else self.lengths >= self.budget
        self.prompt_split = tensors["prompt/split"].long()
        self.sample_split = self.prompt_split[self.sample_prompt]
        self.ckpt_sample = tensors["ckpt/sample"].long()
        self.ckpt_t = tensors["ckpt/t"].long()
        self.ckpt_remaining = self.lengths[self.ckpt_sample] - self.ckpt_t.float()
        self.ckpt_budget_left = self.budget - self.ckpt_t
        self.ckpt_split = self.sample_split[self.ckpt_sample]
        if prompts is not None:
            self.prompts = prompts
        if policy is not None:
            self.policy = policy

    @classmethod
    def load(cls, folder: str | Path, encoder: str = "all-minilm-l6-v2") -> ForeLenData:
        """A dataset folder written by `rollout-len forelen build` (format: forelen/dataset.py)."""
        card, tensors = load_dataset(folder)
        return cls(card, tensors, folder, encoder)

    def samples(self, split: int) -> torch.Tensor:
        """Indices of the samples of one split (TRAIN, VAL or TEST)."""
        return torch.nonzero(self.sample_split == split)[:, 0]

    def checkpoints(self, split: int) -> torch.Tensor:
        """Indices of the decode checkpoints of one split's samples."""
        return torch.nonzero(self.ckpt_split == split)[:, 0]

    def decode_checkpoints(self, split: int) -> torch.Tensor:
        """The split's checkpoints after t = 0 (something decoded); an error when there are none."""
        idx = self.checkpoints(split)
        idx = idx[self.ckpt_t[idx] > 0]
        if len(idx) == 0:
            raise ValueError(f"split {split} has no decode checkpoints after t = 0; the dataset is too small")
        return idx

    @cached_property
    def ckpt_pool(self) -> torch.Tensor:
        return self.tensors["ckpt/pool"].float()

    @cached_property
    def prompts(self) -> list:
        """Prompt texts (or chat messages) in prompt-index order, from the dataset's prompts.jsonl."""
        if self.folder is None:
            raise ValueError("this dataset has no folder and no prompts were given")
        return load_prompts(self.folder, self.prompt_split)

    @cached_property
    def embeddings(self) -> torch.Tensor:
        """Proxy-encoder embedding of every prompt's text.  (P, d)"""
        return load_encoder(self.encoder_name).encode([prompt_text(p) for p in self.prompts])

    @cached_property
    def policy(self):
        """The policy that generated the dataset (the card's model)."""
        return load_policy(self.card["model"])


class Baseline:
    """One length predictor. `fit` trains on TRAIN and chooses its settings on VAL (recorded in
    `selected`); `predict` gives a total length per sample of a split, in `data.samples(split)` order."""

    name = ""
    progressive = False  # True: `predict_remaining` at decode checkpoints as well
    admission = True  # False: no t = 0 prediction of its own (scored in flight only)

    def __init__(self):
        self.selected: dict = {}

    def fit(self, data: ForeLenData) -> None:
        raise NotImplementedError

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, data: ForeLenData, split: int) -> torch.Tensor:
        """Ranking score per sample (higher = longer), for Kendall's tau; by default the prediction."""
        return self.predict(data, split)

    def predict_remaining(self, data: ForeLenData, split: int) -> torch.Tensor:
        """Remaining length at each checkpoint of a split, in `data.checkpoints(split)` order."""
        raise NotImplementedError(f"{self.name} is not progressive")

    def remaining_q90(self, data: ForeLenData, split: int) -> torch.Tensor | None:
        """The 90% quantile of the remaining length at each checkpoint of a split (as
        `predict_remaining`), or None for a method that predicts no quantile (the default)."""
        return None


class Standardize(nn.Module):
    """x -> (x - mean) / std with the training features' statistics (kept as buffers)."""

    def __init__(self, x_train: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", x_train.float().mean(0))
        self.register_buffer("std", x_train.float().std(0).nan_to_num(1.0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: heads this small gain nothing from intra-op threads, and lose much
    (a tiny matmul gets ~25x slower) when another process holds one of the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_selecting_on_val(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    val_error: Callable[[nn.Module], float],
    epochs: int = 200,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    patience: int = 20,
    seed: int = 0,
) -> float:
    """AdamW on shuffled mini-batches of (x, y) minimizing loss_fn(model, xb, yb). After every epoch
    val_error(model) is measured (eval mode, no grad); the weights with the lowest one are kept, and
    training stops after `patience` epochs without improvement. Returns that lowest validation error
    (a NaN error never counts as an improvement)."""
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many training targets as features (> 0), got {len(x)} and {len(y)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    with single_thread():
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                loss_fn(model, x[idx], y[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                error = float(val_error(model))
            if error < best - 1e-9:
                best, best_state, stale = error, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return best


def scored(pred: torch.Tensor, true: torch.Tensor, capped: torch.Tensor) -> dict:
    """`evaluate` metrics of pred against true (N,) plus `capped_fraction`: the share of the N scored
    items whose sample hit max_new_tokens (capped (N,) bool)."""
    return {**evaluate(pred, true), "capped_fraction": float(capped.float().mean())}


def remaining_metrics(
    pred: torch.Tensor, data: ForeLenData, idx: torch.Tensor, q90: torch.Tensor | None = None
) -> dict:
    """Remaining-length metrics of pred (C,) at the checkpoints idx (C,): `by_t` {t: metrics over the
    samples still running at t} and `in_flight` (over every checkpoint with t > 0, pooled: IN_FLIGHT;
    `samples` counts the distinct samples; absent when no checkpoint has t > 0).

    q90 (C,), when given: the predicted 90% quantiles of the remaining length; each metrics dict then
    has `q90_coverage`, the share of its true remaining lengths <= q90 once q90 is clamped to
    [1, budget left] (`clamp_remaining`). A calibrated q90 covers about 0.9."""
    steps, true, capped = data.ckpt_t[idx], data.ckpt_remaining[idx], data.capped[data.ckpt_sample[idx]]
    covered = None
    if q90 is not None:
        if q90.shape != idx.shape:
            raise ValueError(f"q90 must be one per checkpoint ({tuple(idx.shape)}), got {tuple(q90.shape)}")
        covered = true <= clamp_remaining(q90, data.ckpt_budget_left[idx])  # (C,) bool

    def metrics(rows: torch.Tensor) -> dict:
        m = scored(pred[rows], true[rows], capped[rows])
        if covered is not None:
            m["q90_coverage"] = float(covered[rows].float().mean())
        return m

    result = {"by_t": {int(t): metrics(steps == t) for t in steps.unique().tolist()}}
    later = steps > 0
    if later.any():
        samples = len(data.ckpt_sample[idx][later].unique())
        result["in_flight"] = {**metrics(later), "samples": samples, "averaged": IN_FLIGHT}
    return result


def evaluate_baseline(method: Baseline, data: ForeLenData) -> dict:
    """Fit, then test metrics: `admission` (t = 0: total length per test sample, Kendall's tau on
    `scores`) unless the method makes no admission-time prediction, and for progressive methods the
    remaining-length metrics `by_t` and `in_flight` (remaining_metrics; with `q90_coverage` when the
    method gives `remaining_q90`). Every metrics dict carries its `capped_fraction`. A method that does
    not apply to the dataset gives {"skipped": reason}."""
    try:
        method.fit(data)
    except NotApplicable as err:
        return {"skipped": str(err)}
    result: dict = {}
    if method.admission:
        test = data.samples(TEST)
        true = data.lengths[test]
        result["admission"] = scored(method.predict(data, TEST), true, data.capped[test])
        result["admission"]["kendall_tau"] = kendall_tau(method.scores(data, TEST).numpy(), true.numpy())
    if method.progressive:
        idx, q90 = data.checkpoints(TEST), method.remaining_q90(data, TEST)
        result.update(remaining_metrics(method.predict_remaining(data, TEST), data, idx, q90))
    if method.selected:
        result["selected"] = method.selected
    return result
