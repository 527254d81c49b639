"""Fitting and evaluating length heads: offline fit with validation selection, metrics, online re-fit.

head = fit_head(x_train, y_train, x_val, y_val, FitConfig(num_bins=20))   # point="median"
metrics = evaluate(head.predict(x_test)[0], y_test)   # {"mae", "rmse", "acc50", "acc100", "kendall_tau"}

trainer = OnlineTrainer(head, buffer_size=4096, steps=64)
trainer.add(features_of_finished, true_lengths)       # free labels from finished samples
trainer.refit()                                        # 64 steps on batches drawn from the replay buffer
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead, check_point, check_project

__all__ = ["FitConfig", "fit_head", "evaluate", "kendall_tau", "OnlineTrainer"]


@dataclass
class FitConfig:
    num_bins: int = 20
    bins: str = "quantile"  # "quantile" (from training lengths) or "log" (log-spaced up to max_length)
    max_length: int | None = None  # log bins: the longest length to cover (e.g. max_new_tokens); None = train max
    lam: float = 0.95
    hidden_dim: int | None = None
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-2
    epochs: int = 200
    batch_size: int = 64
    patience: int = 20  # epochs without validation improvement before stopping
    seed: int = 0
    point: str = "median"  # the head's point prediction, also what the val epoch selection scores: "median" | "mean"
    # recalibrate the predicted distribution's levels on the validation split (head.py), so quantiles
    # and the median are calibrated on held-out data; False: the raw distribution (an ablation)
    calibrate: bool = True
    # r: project the standardized features, but the last two (PLP's log(t+1), log(b+1)), onto their top-r
    # principal components on the train features (an ablation); None: no projection
    project: int | None = None

    def __post_init__(self) -> None:
        check_point(self.point, "FitConfig.point")
        check_project(self.project, "FitConfig.project")


def _check_xy(x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{where}: need features (N, d) and lengths (N,), got {tuple(x.shape)}, {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{where}: no examples")
    if not torch.isfinite(x).all():
        bad = torch.nonzero(~torch.isfinite(x).all(1))[:5, 0].tolist()
        raise ValueError(f"{where}: features contain NaN/inf (rows {bad})")
    if not torch.isfinite(y).all() or (y < 0).any():
        raise ValueError(f"{where}: lengths must be finite and >= 0")


def make_bins(y: torch.Tensor, config: FitConfig) -> LengthBins:
    if config.bins == "quantile":
        return LengthBins.from_quantiles(y.numpy(), config.num_bins)
    if config.bins == "log":
        return LengthBins.log_spaced(float(config.max_length or y.max()), config.num_bins)
    raise ValueError(f"unknown bins {config.bins!r}; valid: ['log', 'quantile']")


def _epoch(
    head: SoftLabelHead, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator
) -> None:
    head.train()
    order = torch.randperm(len(x), generator=gen)
    for start in range(0, len(x), batch):
        idx = order[start : start + batch]
        opt.zero_grad()
        head.loss(x[idx], y[idx]).backward()
        opt.step()


def fit_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: FitConfig | None = None,
) -> SoftLabelHead:
    """Train a SoftLabelHead on features (N, d) and lengths (N,); keep the epoch whose point predictions
    (`config.point`) have the lowest validation MAE (early stopping), then, with `config.calibrate`,
    recalibrate its levels on the validation split (`SoftLabelHead.calibrate`). With `config.project
    = r` the projection is fit on x_train. ValueError on bad inputs, or r > d - 2."""
    config = config or FitConfig()
    _check_xy(x_train, y_train, "train")
    _check_xy(x_val, y_val, "val")
    d = x_train.shape[1]
    if config.project is not None and config.project > d - 2:
        raise ValueError(f"FitConfig.project={config.project} exceeds the {d - 2} projected features of {d}-dim ones")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    head = SoftLabelHead(
        HeadConfig(
            in_dim=d,
            hidden_dim=config.hidden_dim,
            dropout=config.dropout,
            lam=config.lam,
            point=config.point,
            project=config.project,
        ),
        make_bins(y_train, config),
    )
    head.set_standardization(x_train)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, stale = float("inf"), copy.deepcopy(head.state_dict()), 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a head this small gains nothing from more, and on busy cores loses ~10x with two
    try:
        for _ in range(config.epochs):
            _epoch(head, opt, x_train.float(), y_train.float(), config.batch_size, gen)
            mae = float((head.predict(x_val.float())[0] - y_val).abs().mean())
            if mae < best - 1e-6:
                best, best_state, stale = mae, copy.deepcopy(head.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    finally:
        torch.set_num_threads(threads)
    head.load_state_dict(best_state)
    if config.calibrate:
        head.calibrate(x_val.float(), y_val)
    return head.eval()


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (ties counted as neither concordant nor discordant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    da, db = da[upper], db[upper]
    denom = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float((da * db).sum() / denom) if denom else float("nan")


def evaluate(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE, fraction within ±50 and ±100 tokens, Kendall's tau."""
    p, t = predicted.double().numpy(), true.double().numpy()
    err = np.abs(p - t)
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "acc50": float((err <= 50).mean()),
        "acc100": float((err <= 100).mean()),
        "kendall_tau": kendall_tau(p, t),
        "n": int(len(t)),
    }


class OnlineTrainer:
    """Re-fits a head from finished samples (free labels) kept in a bounded replay buffer.

    The buffer is a ring of the most recent `buffer_size` examples (preallocated, so memory does not
    grow), and the head follows a policy whose lengths drift during RL. A re-fit takes a fixed budget:
    `steps` AdamW steps, each on `batch_size` examples drawn uniformly from the buffer, so its cost
    does not grow with the buffer. Bins stay fixed (the head's output layer is not resized).
    """

    def __init__(
        self,
        head: SoftLabelHead,
        buffer_size: int = 4096,
        lr: float = 1e-3,
        steps: int = 64,
        batch_size: int = 64,
        seed: int = 0,
    ):
        for name, value in (("buffer_size", buffer_size), ("steps", steps), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.head = head
        self.buffer_size, self.steps, self.batch_size = buffer_size, steps, batch_size
        self._x = torch.zeros(buffer_size, head.config.in_dim)  # (buffer_size, d) ring
        self._y = torch.zeros(buffer_size)
        self._size = 0  # examples held
        self._next = 0  # the ring slot the next example goes to
        self._opt = torch.optim.AdamW(head.parameters(), lr=lr)
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    def add(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        """Keep (N, d) features and their (N,) lengths, overwriting the oldest examples when full."""
        _check_xy(features, lengths, "OnlineTrainer.add")
        if features.shape[1] != self.head.config.in_dim:
            raise ValueError(f"features must be (N, {self.head.config.in_dim}), got {tuple(features.shape)}")
        features, lengths = features[-self.buffer_size :], lengths[-self.buffer_size :]
        slots = (self._next + torch.arange(len(lengths))) % self.buffer_size  # (N,)
        self._x[slots], self._y[slots] = features.float(), lengths.float()
        self._next = int(slots[-1] + 1) % self.buffer_size
        self._size = min(self._size + len(lengths), self.buffer_size)

    def refit(self) -> int:
        """`steps` gradient steps on batches drawn from the buffer; returns the examples used
        (steps x batch_size, or none on an empty buffer)."""
        if not self._size:
            return 0
        self.head.train()
        for _ in range(self.steps):
            idx = torch.randint(self._size, (self.batch_size,), generator=self._gen)
            self._opt.zero_grad()
            self.head.loss(self._x[idx], self._y[idx]).backward()
            self._opt.step()
        self.head.eval()
        return self.steps * self.batch_size
