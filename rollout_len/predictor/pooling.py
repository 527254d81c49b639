"""Pooling a prompt's token states into one feature: EGTP and its ablations, over packed batches.

EGTP (entropy-guided token pooling): w = softmax(H), h = Σ_i w_i h_i, where H_i is the entropy of the
next-token distribution at position i. Tokens where the model is unsure weigh more. `mean`, `max`
and `last` are the ablations of the reference paper, behind the same interface.

    feats = pool_packed(hidden, entropy, cu_seqlens, "egtp")   # (N, d), (N,), (B+1,) -> (B, d)
    feat = pool(hidden, entropy, "egtp")                        # one sequence: (T, d), (T,) -> (d,)

EGTP is `rollout_len.kernels.egtp_pool` (the Triton kernel on CUDA, its torch reference otherwise);
the ablations are segment reductions. Every result is float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rollout_len.kernels import egtp_pool

__all__ = ["POOLINGS", "pool", "pool_packed"]


def _segments(cu_seqlens: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence index of every packed token (N,) and the sequence lengths (B,)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device)  # (B,)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths), lengths


def _mean(hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    seg, lengths = _segments(cu_seqlens, hidden.device)
    total = torch.zeros(len(lengths), hidden.shape[1], device=hidden.device).index_add_(0, seg, hidden.float())
    return total / lengths[:, None]  # (B, d)


def _max(hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    seg, lengths = _segments(cu_seqlens, hidden.device)
    out = torch.zeros(len(lengths), hidden.shape[1], device=hidden.device)  # (B, d)
    return out.scatter_reduce_(0, seg[:, None].expand_as(hidden), hidden.float(), "amax", include_self=False)


def _last(hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    return hidden[cu_seqlens[1:].to(hidden.device) - 1].float()  # (B, d)


# name -> packed pooling: hidden (N, d), entropy (N,), cu_seqlens (B+1,) -> (B, d) float32
POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "egtp": egtp_pool,
    "mean": _mean,
    "max": _max,
    "last": _last,
}


def pool_packed(
    hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor, method: str = "egtp"
) -> torch.Tensor:
    """Pool B packed sequences: hidden (N, d), entropies (N,), cu_seqlens (B+1,) with sequence b at
    rows cu_seqlens[b] .. cu_seqlens[b+1] - 1 (none empty) -> (B, d) float32."""
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}; valid: {sorted(POOLINGS)}")
    if hidden.ndim != 2 or entropy.shape != hidden.shape[:1]:
        raise ValueError(f"need hidden (N, d) and entropy (N,), got {tuple(hidden.shape)}, {tuple(entropy.shape)}")
    bounds = cu_seqlens.tolist() if cu_seqlens.ndim == 1 else []  # (B+1,) on the host
    if len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != len(hidden):
        raise ValueError(f"cu_seqlens must be (B+1,) from 0 to N = {len(hidden)}, got {cu_seqlens.tolist()}")
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if any(n < 1 for n in lengths):
        raise ValueError(f"every sequence needs T >= 1 tokens, got lengths {lengths}")
    return POOLINGS[method](hidden, entropy, cu_seqlens)


def pool(hidden: torch.Tensor, entropy: torch.Tensor, method: str = "egtp") -> torch.Tensor:
    """Pool one sequence's states (T, d) with its entropies (T,) into (d,)."""
    if hidden.ndim != 2 or entropy.shape != hidden.shape[:1] or hidden.shape[0] == 0:
        raise ValueError(
            f"need hidden (T, d) and entropy (T,) with T >= 1, got {tuple(hidden.shape)}, {tuple(entropy.shape)}"
        )
    return pool_packed(hidden, entropy, torch.tensor([0, hidden.shape[0]]), method)[0]
