"""Next-token entropy straight from hidden states: H_t = -sum_v p_tv log p_tv, p_t = softmax(h_t W^T + b).

The logits are produced a chunk of rows at a time, so a long prompt never holds a [T, V] tensor.
"""

from __future__ import annotations

import torch

__all__ = ["linear_entropy"]


def linear_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_rows: int = 256,
) -> torch.Tensor:
    """Entropy of softmax((hidden @ weight.T + bias) / temperature) per row.  (T, d), (V, d) -> (T,) float32"""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = torch.nn.functional.linear(hidden[start : start + chunk_rows], weight, bias).float()
        logp = torch.log_softmax(logits / temperature, dim=-1)  # (chunk, V)
        out[start : start + chunk_rows] = -(logp.exp() * logp).sum(-1)
    return out
