"""Soft-label length regression: K length bins, soft labels, an MLP head and the joint loss.

    bins = LengthBins.from_quantiles(train_lengths, num_bins=20)
    head = SoftLabelHead(HeadConfig(in_dim=576), bins)   # point="median" by default
    loss = head.loss(features, lengths)          # λ·CE(p, p̂) + (1-λ)·MSE(y/s, ŷ/s)
    point, quantiles = head.predict(features, quantiles=(0.1, 0.5, 0.9))
    head.save("head/", card={"model": ..., "layer": ...}); SoftLabelHead.load("head/", expect_in_dim=576)
    card = load_card("head/"); check_card(card, {"model": "smollm2-135m", "layer": 30}, "dataset X")

Soft labels: a sample of length y in bin i gets p_j ∝ exp(-|j - i| / τ) (τ = 1 by default), so a
near miss costs less than a far one. ŷ = Σ_j p̂_j c_j with c_j the bin centres. The MSE term is on
lengths divided by `scale` (the largest bin centre), which keeps both terms O(1).

The point prediction (`HeadConfig.point`) is the median of the predicted distribution by default: it
minimises the expected absolute error, which the mean does not on skewed lengths. A head saved before
`point` existed predicted the mean and loads as "mean". `HeadConfig.project = r` (an ablation) feeds
the net the top-r principal components of the standardized features (fit on the training features by
`set_standardization`) instead of the features themselves; the last `unprojected` features (PLP's
log(t+1), log(b+1)) pass through as they are.

Calibration (`calibrate`, run by `fit_head` on the validation split): the levels of the predicted
distribution are remapped so that, on held-out data, the level-q quantile lies above the true length
a share q of the time (recalibration of Kuleshov, Fenner and Ermon, "Accurate Uncertainties for Deep
Learning Using Calibrated Regression", ICML 2018): the probability integral transform u = F̂(y) of
the validation examples is taken, and a requested level q is read at the q-quantile of the u's. The
median point prediction and every quantile go through the map; the mean does not. A head never
calibrated (or saved before calibration existed) maps every level to itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rollout_len.data import strict_json

__all__ = ["LengthBins", "HeadConfig", "SoftLabelHead", "POINTS", "load_card", "check_card", "layer_matches"]

CARD = "card.json"  # what a saved head was trained on (forelen/train.py writes it)
POINTS = ("median", "mean")  # the point predictions a head can give (HeadConfig.point)
FORMAT = 2  # head.json format: 2 added config.point (and project, unprojected); 1 had none of them
CALIBRATION_GRID = torch.linspace(0, 1, 101)  # the levels whose calibrated values a head stores


@dataclass(frozen=True)
class LengthBins:
    """Bin edges e_0 < e_1 < ... < e_K over lengths; bin j covers [e_j, e_{j+1})."""

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        if e.ndim != 1 or len(e) < 3 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
            raise ValueError(f"bin edges must be >= 3 finite, strictly increasing values, got {self.edges!r}")

    @property
    def num_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def centers(self) -> torch.Tensor:
        e = torch.tensor(self.edges, dtype=torch.float32)
        return (e[1:] + e[:-1]) / 2  # (K,)

    @classmethod
    def from_quantiles(cls, lengths, num_bins: int = 20) -> LengthBins:
        """Equal-mass bins from training lengths (repeated quantiles, e.g. at a length cap, are merged)."""
        y = _as_lengths(lengths)
        if len(y) < num_bins:
            raise ValueError(f"{len(y)} training lengths are fewer than num_bins={num_bins}")
        edges = np.unique(np.quantile(y, np.linspace(0, 1, num_bins + 1)))
        if len(edges) < 3:
            raise ValueError(f"lengths are (nearly) all equal ({np.unique(y)[:5].tolist()}...): no bins can be formed")
        edges[-1] += 1  # the maximum falls inside the last bin
        return cls(tuple(float(x) for x in edges))

    @classmethod
    def log_spaced(cls, max_length: float, num_bins: int = 20, min_length: float = 1.0) -> LengthBins:
        if not (0 < min_length < max_length):
            raise ValueError(f"need 0 < min_length < max_length, got {min_length}, {max_length}")
        edges = np.geomspace(min_length, max_length + 1, num_bins + 1)
        edges[0] = 0.0
        return cls(tuple(float(x) for x in edges))

    def index(self, lengths: torch.Tensor) -> torch.Tensor:
        """Bin index of each length (clamped to the first/last bin).  (N,) -> (N,) int64"""
        inner = torch.tensor(self.edges[1:-1], dtype=torch.float32, device=lengths.device)
        return torch.searchsorted(inner, lengths.float().contiguous(), right=True)

    def soft_labels(self, lengths: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """p_j ∝ exp(-|j - i| / τ) around each length's bin i.  (N,) -> (N, K)"""
        i = self.index(lengths)[:, None].float()
        j = torch.arange(self.num_bins, device=lengths.device, dtype=torch.float32)[None]
        return torch.softmax(-(j - i).abs() / tau, dim=-1)


def _as_lengths(lengths) -> np.ndarray:
    y = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        raise ValueError("no lengths given")
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise ValueError("lengths must be finite and >= 0")
    return y


def _check_xy_like(features: torch.Tensor, lengths: torch.Tensor) -> None:
    if features.ndim != 2 or lengths.ndim != 1 or len(features) != len(lengths) or len(lengths) == 0:
        raise ValueError(
            f"calibrate needs features (N, d) and lengths (N,) with N >= 1, got "
            f"{tuple(features.shape)}, {tuple(lengths.shape)}"
        )


def check_point(point, where: str) -> None:
    """ValueError naming `where` (e.g. "FitConfig.point") unless point is one of POINTS."""
    if point not in POINTS:
        raise ValueError(f"{where} must be one of {list(POINTS)}, got {point!r}")


def check_project(project, where: str) -> None:
    """ValueError naming `where` unless project is None or an int >= 1."""
    if project is not None and (isinstance(project, bool) or not isinstance(project, int) or project < 1):
        raise ValueError(f"{where} must be None or an int >= 1 (principal components kept), got {project!r}")


@dataclass
class HeadConfig:
    in_dim: int  # features per row the head takes (before any projection)
    hidden_dim: int | None = None  # None: half the net's input (in_dim, or project + unprojected), at least 8
    dropout: float = 0.1
    lam: float = 0.95  # weight of the soft-label CE; 1 - lam goes to the MSE on scaled lengths
    tau: float = 1.0  # soft-label width in bins
    point: str = "median"  # the point prediction: "median" (MAE-optimal) or "mean" of the distribution
    project: int | None = None  # r: the net reads the top-r principal components of the standardized features
    unprojected: int = 2  # with project: the trailing features passed through as they are

    def __post_init__(self) -> None:
        check_point(self.point, "HeadConfig.point")
        check_project(self.project, "HeadConfig.project")
        if self.project is not None:
            if not (0 <= self.unprojected < self.in_dim):
                raise ValueError(f"HeadConfig.unprojected must be in [0, {self.in_dim}), got {self.unprojected}")
            if self.project > self.in_dim - self.unprojected:
                raise ValueError(
                    f"HeadConfig.project={self.project} exceeds the {self.in_dim - self.unprojected} projected "
                    f"features (in_dim {self.in_dim} - unprojected {self.unprojected})"
                )

    @property
    def net_in(self) -> int:
        """Features the MLP reads: in_dim, or project + unprojected when projected."""
        return self.in_dim if self.project is None else self.project + self.unprojected

    @classmethod
    def from_saved(cls, saved: dict) -> HeadConfig:
        """A config as `asdict` saved it; one saved before `point` existed predicted the mean and keeps
        that meaning."""
        return cls(**{"point": "mean", **saved})


class _Dropout(nn.Module):
    """nn.Dropout with masks from a generator of its own (seeded from torch's global one when built),
    never from the global one: the coordinator trains heads in a background thread, and global draws
    there would change what the rest of the process draws (e.g. a model's seeded initialization)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand(x.shape, generator=self.generator) >= self.p).to(x.device)  # (N, hidden)
        return x * keep / (1 - self.p)


class SoftLabelHead(nn.Module):
    """Standardize → [Project] → Linear(d, d/2) → LayerNorm → ReLU → Dropout → Linear(d/2, K): a
    distribution over length bins. Features are standardized with the training set's per-feature mean
    and std (stored with the head) rather than normalized per row, so small side features (progress,
    budget) keep their weight next to hundreds of hidden-state dimensions. With `config.project = r`
    the standardized features but the last `config.unprojected` are projected onto r principal
    components (the `projection` buffer, (in_dim - unprojected, r), stored with the head), so d = r +
    unprojected.
    """

    def __init__(self, config: HeadConfig, bins: LengthBins):
        super().__init__()
        if not (0.0 <= config.lam <= 1.0):
            raise ValueError(f"lam must be in [0, 1], got {config.lam}")
        self.config, self.bins = config, bins
        hidden = config.hidden_dim or max(config.net_in // 2, 8)
        self.net = nn.Sequential(
            nn.Linear(config.net_in, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            _Dropout(config.dropout),
            nn.Linear(hidden, bins.num_bins),
        )
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        if config.project is not None:  # the first `project` features until set_standardization fits it
            self.register_buffer("projection", torch.eye(config.in_dim - config.unprojected, config.project))
        # calibrated level at each of CALIBRATION_GRID's levels; the identity until `calibrate`
        self.register_buffer("calibration", CALIBRATION_GRID.clone())
        self.register_buffer("centers", bins.centers, persistent=False)
        self.scale = float(self.centers[-1])

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.config.in_dim:
            raise ValueError(f"features must be (N, {self.config.in_dim}), got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            bad = torch.nonzero(~torch.isfinite(features).all(1))[:5, 0].tolist()
            raise ValueError(f"features contain NaN/inf (rows {bad})")

    def set_standardization(self, features: torch.Tensor) -> None:
        """Use the per-feature mean and std of these (training) features (N, in_dim) from now on and,
        for a projected head, the top-r principal components of their standardized projected part
        (eigenvectors of its (in_dim - unprojected)² Gram matrix, deterministic)."""
        self._check(features)
        self.feature_mean.copy_(features.float().mean(0))
        self.feature_std.copy_(features.float().std(0).nan_to_num(1.0).clamp_min(1e-6))
        if self.config.project is not None:
            x = self._standardize(features)[:, : self.projection.shape[0]]  # (N, P), mean 0
            _, vectors = torch.linalg.eigh((x.T @ x).double())  # ascending eigenvalues
            self.projection.copy_(vectors[:, -self.config.project :].flip(1).float())

    def _standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.feature_mean) / self.feature_std

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin log-probs (N, K) and the expected length ŷ (N,) of features (N, in_dim)."""
        self._check(features)
        x = self._standardize(features)
        if self.config.project is not None:
            cut = self.projection.shape[0]
            x = torch.cat([x[:, :cut] @ self.projection, x[:, cut:]], dim=1)  # (N, project + unprojected)
        logp = torch.log_softmax(self.net(x), dim=-1)
        return logp, logp.exp() @ self.centers

    def loss(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logp, expected = self(features)
        target = self.bins.soft_labels(lengths, self.config.tau)
        ce = -(target * logp).sum(-1).mean()
        mse = ((expected - lengths.float()) / self.scale).pow(2).mean()
        return self.config.lam * ce + (1 - self.config.lam) * mse

    @torch.no_grad()
    def predict(self, features: torch.Tensor, quantiles: tuple[float, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """The point prediction (N,) (`config.point`: the median or the mean of the predicted
        distribution, in the targets' units, e.g. tokens) and the requested quantiles (N, Q) of
        features (N, in_dim). ValueError on a wrong shape or NaN/inf features.

        Quantiles (and the median) interpolate linearly inside a bin (mass spread uniformly over
        [e_j, e_{j+1})).
        """
        was_training = self.training
        self.eval()
        logp, expected = self(features)
        self.train(was_training)
        probs = logp.exp()
        out = self._quantiles(probs, tuple(self._level(q) for q in quantiles))
        point = expected if self.config.point == "mean" else self._quantiles(probs, (self._level(0.5),))[:, 0]
        return point, out

    def _level(self, q: float) -> float:
        """The level of the predicted distribution to read for a calibrated level-q quantile."""
        return float(np.interp(q, CALIBRATION_GRID.numpy(), self.calibration.numpy()))

    @torch.no_grad()
    def calibrate(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        """Fit the level map (module docstring) on held-out features (N, in_dim) and true lengths (N,):
        calibration[i] = the CALIBRATION_GRID[i]-quantile of u = F̂(y), the predicted CDF at the true
        length (linear inside a bin, 0 below the first edge, 1 above the last)."""
        _check_xy_like(features, lengths)
        was_training = self.training
        self.eval()
        logp, _ = self(features)
        self.train(was_training)
        probs = logp.exp()  # (N, K)
        edges = torch.tensor(self.bins.edges, dtype=torch.float32)
        y = lengths.float().clamp(float(edges[0]), float(edges[-1]))
        j = (torch.searchsorted(edges, y, right=True) - 1).clamp(0, self.bins.num_bins - 1)  # (N,) bin of y
        below = torch.cat([torch.zeros(len(probs), 1), probs.cumsum(-1)], dim=1).gather(1, j[:, None])[:, 0]
        inside = ((y - edges[j]) / (edges[j + 1] - edges[j])).clamp(0, 1)
        u = below + probs.gather(1, j[:, None])[:, 0] * inside  # (N,)
        levels = torch.quantile(u, CALIBRATION_GRID)
        levels[0], levels[-1] = 0.0, 1.0
        self.calibration.copy_(torch.cummax(levels, 0).values)

    @classmethod
    def _complete(cls, tensors: dict) -> dict:
        """Saved tensors with the buffers older heads lack (an uncalibrated head's identity map)."""
        return {"calibration": CALIBRATION_GRID.clone(), **tensors}

    def _quantiles(self, probs: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
        """Quantiles (N, Q) of bin distributions probs (N, K)."""
        edges = torch.tensor(self.bins.edges, dtype=torch.float32)
        cdf = torch.cat([torch.zeros(len(probs), 1), probs.cumsum(-1)], dim=1)  # (N, K+1)
        out = torch.empty(len(probs), len(quantiles))
        for col, q in enumerate(quantiles):
            j = torch.searchsorted(cdf, torch.full((len(probs), 1), q), right=True)[:, 0]
            j = j.clamp(1, self.bins.num_bins) - 1  # (N,) the bin holding quantile q
            lo, hi = cdf.gather(1, j[:, None])[:, 0], cdf.gather(1, (j + 1)[:, None])[:, 0]
            frac = ((q - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
            out[:, col] = edges[j] + frac * (edges[j + 1] - edges[j])
        return out

    def to_state(self) -> dict:
        """Everything needed to rebuild the head elsewhere (e.g. sent to a rollout worker)."""
        return {
            "config": asdict(self.config),
            "edges": list(self.bins.edges),
            "tensors": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> SoftLabelHead:
        head = cls(HeadConfig.from_saved(state["config"]), LengthBins(tuple(state["edges"])))
        head.load_state_dict(cls._complete(state["tensors"]))
        return head.eval()

    def save(self, folder: str | Path, card: dict | None = None) -> None:
        """head.safetensors (weights, feature standardization, projection) and head.json (config, bin edges) in
        `folder` (created if needed); `card` (JSON-able), when given, goes to card.json beside them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "head.safetensors"))
        meta = {"config": asdict(self.config), "edges": list(self.bins.edges), "format": FORMAT}
        (folder / "head.json").write_text(json.dumps(meta, indent=2))
        if card is not None:
            (folder / CARD).write_text(strict_json(card, indent=2))  # a NaN score: null

    @classmethod
    def load(cls, folder: str | Path, expect_in_dim: int | None = None) -> SoftLabelHead:
        """A head `save` wrote (a format-1 one, from before `point`, predicts the mean). FileNotFoundError
        when a file is missing; ValueError when its in_dim is not `expect_in_dim`."""
        folder = Path(folder)
        for name in ("head.json", "head.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a saved SoftLabelHead folder")
        meta = json.loads((folder / "head.json").read_text())
        config = HeadConfig.from_saved(meta["config"])
        if expect_in_dim is not None and config.in_dim != expect_in_dim:
            raise ValueError(
                f"head in {folder} was trained on {config.in_dim}-dim features, but this model gives {expect_in_dim}"
            )
        head = cls(config, LengthBins(tuple(meta["edges"])))
        head.load_state_dict(cls._complete(load_file(str(folder / "head.safetensors"))))
        return head.eval()


def load_card(folder: str | Path) -> dict:
    """The card.json of a saved head: what it was trained on. FileNotFoundError when the folder has
    none (a head saved without a card), ValueError when it is not a JSON object."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a trained head folder (run `rollout-len forelen train`)")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt card ({err})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: not a JSON object")
    return card


def check_card(card: dict, expected: dict, where: str) -> None:
    """Refuse a head whose card differs from `expected` (e.g. {"model", "layer", "in_dim"}) on any key:
    ValueError naming every key that differs, with both values."""
    differs = [f"{k}: the head's {card.get(k)!r}, {where}'s {v!r}" for k, v in expected.items() if card.get(k) != v]
    if differs:
        raise ValueError(f"the head does not fit {where}: " + "; ".join(differs))


def layer_matches(card: dict, tap_layer: int) -> bool:
    """Whether a tap layer (1..L, or negative from the end) is the card's `layer` (1..L). A negative
    one can be matched only when the card gives the model's depth (`num_layers`)."""
    layer = card.get("layer")
    if tap_layer > 0:
        return tap_layer == layer
    depth = card.get("num_layers")
    return depth is not None and layer is not None and depth + 1 + tap_layer == layer
