"""Synthetic length traces for the simulator, labelled as such: long-tailed by construction.

    groups, cap = synthetic_trace("reasoning", prompts=512, n=8, seed=0)

Each prompt p draws a median length m_p = median * exp(prompt_sigma * N(0, 1)); its n samples draw
m_p * exp(sample_sigma * N(0, 1)), rounded up and capped at `cap`. Both spreads are log-normal, the
shape of response lengths in RL sampling (a heavy right tail: a few samples run far past the rest,
which is the tail a synchronous step waits for). `mix` puts short-answer and reasoning prompts in
one step (heterogeneous prompts, where the prompt alone says much about the length).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SYNTHETIC_TRACES", "synthetic_trace"]

# name: (components as (share of prompts, median tokens, prompt sigma, sample sigma), cap)
SYNTHETIC_TRACES: dict[str, tuple[tuple[tuple[float, float, float, float], ...], int]] = {
    # Reasoning-style lengths: median ~600, p90 ~2,500 (p90/median ~4), ~1% capped.
    "reasoning": (((1.0, 600.0, 0.6, 0.9),), 8192),
    # The demo's regime: median ~60, p90 ~225 (the long tail of a small model), ~2% capped.
    "short": (((1.0, 60.0, 0.55, 0.85),), 512),
    # Half short-answer prompts (median 120), half reasoning prompts (median 1,200).
    "mix": (((0.5, 120.0, 0.4, 0.6), (0.5, 1200.0, 0.4, 0.7)), 8192),
}


def synthetic_trace(name: str, prompts: int, n: int, seed: int = 0) -> tuple[list[list[int]], int]:
    """(groups of `n` lengths for each of `prompts` prompts, cap). Raises ValueError on an unknown
    name or on prompts/n < 1."""
    if name not in SYNTHETIC_TRACES:
        raise ValueError(f"unknown synthetic trace {name!r}; valid: {sorted(SYNTHETIC_TRACES)}")
    if prompts < 1 or n < 1:
        raise ValueError(f"a synthetic trace needs prompts >= 1 and n >= 1, got {prompts} and {n}")
    components, cap = SYNTHETIC_TRACES[name]
    rng = np.random.default_rng(seed)
    shares = np.array([c[0] for c in components])
    kinds = rng.choice(len(components), size=prompts, p=shares / shares.sum())
    groups = []
    for kind in kinds:
        _, median, prompt_sigma, sample_sigma = components[kind]
        m = median * np.exp(prompt_sigma * rng.standard_normal())
        lengths = np.ceil(m * np.exp(sample_sigma * rng.standard_normal(n)))
        groups.append([int(x) for x in np.clip(lengths, 1, cap)])
    return groups, cap
