"""Soft-label length regression: K length bins, soft labels, an MLP head and the joint loss.

    bins = LengthBins.from_quantiles(train_lengths, num_bins=20)
    head = SoftLabelHead(HeadConfig(in_dim=576), bins)
    loss = head.loss(features, lengths)          # λ·CE(p, p̂) + (1-λ)·MSE(y/s, ŷ/s)
    mean, quantiles = head.predict(features, quantiles=(0.1, 0.5, 0.9))
    head.save("head/", card={"model": ..., "layer": ...}); SoftLabelHead.load("head/", expect_in_dim=576)
    card = load_card("head/"); check_card(card, {"model": "smollm2-135m", "layer": 30}, "dataset X")

Soft labels: a sample of length y in bin i gets p_j ∝ exp(-|j - i| / τ) (τ = 1 by default), so a
near miss costs less than a far one. ŷ = Σ_j p̂_j c_j with c_j the bin centres. The MSE term is on
lengths divided by `scale` (the largest bin centre), which keeps both terms O(1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["LengthBins", "HeadConfig", "SoftLabelHead", "load_card", "check_card", "layer_matches"]

CARD = "card.json"  # what a saved head was trained on (forelen/train.py writes it)


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


@dataclass
class HeadConfig:
    in_dim: int
    hidden_dim: int | None = None  # None: in_dim // 2
    dropout: float = 0.1
    lam: float = 0.95  # weight of the soft-label CE; 1 - lam goes to the MSE on scaled lengths
    tau: float = 1.0  # soft-label width in bins


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
    """Standardize → Linear(d, d/2) → LayerNorm → ReLU → Dropout → Linear(d/2, K): a distribution over
    length bins. Features are standardized with the training set's per-feature mean and std (stored
    with the head) rather than normalized per row, so small side features (progress, budget) keep
    their weight next to hundreds of hidden-state dimensions.
    """

    def __init__(self, config: HeadConfig, bins: LengthBins):
        super().__init__()
        if not (0.0 <= config.lam <= 1.0):
            raise ValueError(f"lam must be in [0, 1], got {config.lam}")
        self.config, self.bins = config, bins
        hidden = config.hidden_dim or max(config.in_dim // 2, 8)
        self.net = nn.Sequential(
            nn.Linear(config.in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            _Dropout(config.dropout),
            nn.Linear(hidden, bins.num_bins),
        )
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        self.register_buffer("centers", bins.centers, persistent=False)
        self.scale = float(self.centers[-1])

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.config.in_dim:
            raise ValueError(f"features must be (N, {self.config.in_dim}), got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            bad = torch.nonzero(~torch.isfinite(features).all(1))[:5, 0].tolist()
            raise ValueError(f"features contain NaN/inf (rows {bad})")

    def set_standardization(self, features: torch.Tensor) -> None:
        """Use the per-feature mean and std of these (training) features from now on."""
        self._check(features)
        self.feature_mean.copy_(features.float().mean(0))
        self.feature_std.copy_(features.float().std(0).nan_to_num(1.0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin log-probs (N, K) and the expected length ŷ (N,)."""
        self._check(features)
        x = (features.float() - self.feature_mean) / self.feature_std
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
        """Expected length (N,) and the requested quantiles (N, Q) of the predicted distribution.

        Quantiles interpolate linearly inside a bin (mass spread uniformly over [e_j, e_{j+1})).
        """
        was_training = self.training
        self.eval()
        logp, expected = self(features)
        self.train(was_training)
        probs = logp.exp()
        edges = torch.tensor(self.bins.edges, dtype=torch.float32)
        cdf = torch.cat([torch.zeros(len(probs), 1), probs.cumsum(-1)], dim=1)  # (N, K+1)
        out = torch.empty(len(probs), len(quantiles))
        for col, q in enumerate(quantiles):
            j = torch.searchsorted(cdf, torch.full((len(probs), 1), q), right=True)[:, 0]
            j = j.clamp(1, self.bins.num_bins) - 1  # (N,) the bin holding quantile q
            lo, hi = cdf.gather(1, j[:, None])[:, 0], cdf.gather(1, (j + 1)[:, None])[:, 0]
            frac = ((q - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
            out[:, col] = edges[j] + frac * (edges[j + 1] - edges[j])
        return expected, out

    def to_state(self) -> dict:
        """Everything needed to rebuild the head elsewhere (e.g. sent to a rollout worker)."""
        return {
            "config": asdict(self.config),
            "edges": list(self.bins.edges),
            "tensors": {k: v.detach().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> SoftLabelHead:
        head = cls(HeadConfig(**state["config"]), LengthBins(tuple(state["edges"])))
        head.load_state_dict(state["tensors"])
        return head.eval()

    def save(self, folder: str | Path, card: dict | None = None) -> None:
        """head.safetensors (weights, feature standardization) and head.json (config, bin edges) in
        `folder` (created if needed); `card` (JSON-able), when given, goes to card.json beside them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "head.safetensors"))
        meta = {"config": asdict(self.config), "edges": list(self.bins.edges), "format": 1}
        (folder / "head.json").write_text(json.dumps(meta, indent=2))
        if card is not None:
            (folder / CARD).write_text(json.dumps(card, indent=2))

    @classmethod
    def load(cls, folder: str | Path, expect_in_dim: int | None = None) -> SoftLabelHead:
        folder = Path(folder)
        for name in ("head.json", "head.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a saved SoftLabelHead folder")
        meta = json.loads((folder / "head.json").read_text())
        config = HeadConfig(**meta["config"])
        if expect_in_dim is not None and config.in_dim != expect_in_dim:
            raise ValueError(
                f"head in {folder} was trained on {config.in_dim}-dim features, but this model gives {expect_in_dim}"
            )
        head = cls(config, LengthBins(tuple(meta["edges"])))
        head.load_state_dict(load_file(str(folder / "head.safetensors")))
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
    if tap_layer > 0:
        return tap_layer == card["layer"]
    depth = card.get("num_layers")
    return depth is not None and depth + 1 + tap_layer == card["layer"]
