"""ForeLen-lite pictures: length distribution per scenario, the PLP error curve, token importance vs entropy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt  # noqa: E402

from rollout_len.forelen.dataset import load_dataset  # noqa: E402

__all__ = ["plot_lengths", "plot_plp_curve", "plot_attribution"]


def plot_lengths(folders: list[str], png: str | Path) -> None:
    fig, axes = plt.subplots(1, len(folders), figsize=(4.5 * len(folders), 3.4), squeeze=False)
    for ax, folder in zip(axes[0], folders):
        card, t = load_dataset(folder)
        lengths = t["sample/length"].numpy()
        ax.hist(lengths, bins=40, color="#4C72B0")
        ax.set_title(f"{card['scenario']} (n={len(lengths)}, capped {card['lengths']['capped_fraction']:.0%})")
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_plp_curve(curve: dict[int, dict[str, dict]], png: str | Path, title: str = "PLP") -> None:
    """Remaining-length MAE against decoded tokens t, one line per method, from `plp_curve`
    ({t: {method: metrics}})."""
    steps = sorted(curve)
    methods = list(dict.fromkeys(m for t in steps for m in curve[t]))
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method in methods:
        shown = [t for t in steps if method in curve[t]]
        ax.plot(shown, [curve[t][method]["mae"] for t in shown], marker="o", markersize=3, label=method)
    ax.set_xlabel("decoded tokens t")
    ax.set_ylabel("MAE of remaining length (tokens)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_attribution(result: dict, png: str | Path) -> None:
    """Scatter of token importance ||dL/dh_t|| (log scale) against token entropy, from `attribution`."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.scatter(result["entropy"], result["importance"], s=6, alpha=0.4, color="#4C72B0")
    ax.set_yscale("log")
    ax.set_xlabel("next-token entropy H_t (nats)")
    ax.set_ylabel(f"importance ||dL/dh_t|| (layer {result['layer']})")
    ax.set_title(f"{result['scenario']}: Pearson r = {result['pearson_r']:.3f} ({result['tokens']} tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
