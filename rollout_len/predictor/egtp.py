"""Pooling a prompt's token states into one feature: EGTP and its ablations.

EGTP (entropy-guided token pooling): w = softmax(H), h = Σ_i w_i h_i, where H_i is the entropy of the
next-token distribution at position i. Tokens where the model is unsure weigh more. `mean`, `max`
and `last` are the ablations of the reference paper, behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["POOLINGS", "pool"]


def _egtp(hidden: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    return torch.softmax(entropy.float(), dim=0) @ hidden.float()  # (T,) @ (T, d) -> (d,)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "egtp": _egtp,
    "mean": lambda hidden, entropy: hidden.float().mean(0),
    "max": lambda hidden, entropy: hidden.float().amax(0),
    "last": lambda hidden, entropy: hidden[-1].float(),
}


def pool(hidden: torch.Tensor, entropy: torch.Tensor, method: str = "egtp") -> torch.Tensor:
    """Pool one sequence's states (T, d) with its entropies (T,) into (d,)."""
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}; valid: {sorted(POOLINGS)}")
    if hidden.ndim != 2 or entropy.shape != hidden.shape[:1] or hidden.shape[0] == 0:
        raise ValueError(f"need hidden (T, d) and entropy (T,) with T >= 1, got {tuple(hidden.shape)}, {tuple(entropy.shape)}")
    return POOLINGS[method](hidden, entropy)
