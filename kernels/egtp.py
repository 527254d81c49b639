"""Entropy-Guided Token Pooling (EGTP) over packed variable-length sequences.

For sequence b, tokens s = cu_seqlens[b] .. e = cu_seqlens[b+1] - 1:

    w_i      = softmax(entropy[s:e])_i = exp(H_i - max H) / sum_j exp(H_j - max H)
    pooled_b = sum_i w_i * hidden_i                                  # (d,)

High-entropy (uncertain) positions dominate the pooled representation.

* "torch":  reference, a plain loop over sequences.
* "triton": one program per (sequence, BLOCK_D slice of d): a first pass over the sequence's entropies
            finds the max, a second streams the hidden rows once, accumulating exp(H - max) * h and the
            normaliser in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from rollout_len.kernels._checks import check_impl, check_tensor
from rollout_len.kernels._triton import cdiv, check_triton_inputs, lazy_jit, use_triton

__all__ = ["egtp_pool"]

_IMPLS = ("auto", "torch", "triton")
_OP = "egtp_pool"

tl: Any = None  # bound to triton.language by _triton.lazy_jit before the kernel is first built


def egtp_pool(
    hidden: torch.Tensor,
    entropy: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Entropy-weighted mean of each packed sequence: pooled_b = sum_i softmax(entropy[s:e])_i hidden_i.

    hidden (N, d) packed tokens, entropy (N,), cu_seqlens (B+1,) integer with cu_seqlens[0] = 0,
    strictly increasing (no empty sequence), cu_seqlens[-1] = N -> (B, d) float32.
    impl: "torch" (reference), "triton" (CUDA tensors, or CPU under TRITON_INTERPRET=1), "auto".
    """
    check_impl(_OP, impl, _IMPLS)
    check_tensor(_OP, "hidden", hidden, 2, floating=True)
    check_tensor(_OP, "entropy", entropy, 1, floating=True)
    check_tensor(_OP, "cu_seqlens", cu_seqlens, 1, floating=False)
    n_tokens = hidden.shape[0]
    if entropy.shape[0] != n_tokens:
        raise ValueError(
            f"{_OP}: entropy must be (N,) = ({n_tokens},) to match hidden {tuple(hidden.shape)}, "
            f"got {tuple(entropy.shape)}"
        )
    if cu_seqlens.shape[0] < 1:
        raise ValueError(f"{_OP}: cu_seqlens must be (B+1,) with at least one entry, got shape (0,)")
    if hidden.device != entropy.device:
        raise ValueError(f"{_OP}: hidden on {hidden.device} but entropy on {entropy.device}")
    bounds = cu_seqlens.tolist()  # (B+1,) on the host; tiny
    if bounds[0] != 0:
        raise ValueError(f"{_OP}: cu_seqlens must start at 0, got {bounds[0]}")
    if bounds[-1] != n_tokens:
        raise ValueError(f"{_OP}: cu_seqlens must end at N = {n_tokens}, got {bounds[-1]}")
    for b in range(len(bounds) - 1):
        if bounds[b + 1] < bounds[b]:
            raise ValueError(
                f"{_OP}: cu_seqlens must be increasing, but cu_seqlens[{b + 1}] = {bounds[b + 1]} "
                f"< cu_seqlens[{b}] = {bounds[b]}"
            )
        if bounds[b + 1] == bounds[b]:
            raise ValueError(f"{_OP}: sequence {b} is empty (cu_seqlens[{b}] = cu_seqlens[{b + 1}] = {bounds[b]})")

    if use_triton(impl, hidden.device):
        return _egtp_pool_triton(hidden, entropy, cu_seqlens.to(hidden.device))
    return _egtp_pool_torch(hidden, entropy, bounds)


# ---------------------------------------------------------------------------------------------- torch


def _egtp_pool_torch(hidden: torch.Tensor, entropy: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Reference: softmax of each sequence's entropies, then a weighted sum of its hidden rows."""
    out = torch.empty(len(bounds) - 1, hidden.shape[1], dtype=torch.float32, device=hidden.device)  # (B, d)
    for b, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = torch.softmax(entropy[s:e].float(), dim=0)  # (L,)
        out[b] = w @ hidden[s:e].float()  # (L,) @ (L, d) -> (d,)
    return out


# --------------------------------------------------------------------------------------------- triton


def _egtp_pool_kernel(
    h_ptr,  # (N, d) packed hidden, row stride stride_h
    e_ptr,  # (N,) entropies
    cu_ptr,  # (B+1,) sequence offsets
    out_ptr,  # (B, d) float32, row stride stride_o
    D,
    stride_h,
    stride_o,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    col_ok = cols < D
    start = tl.load(cu_ptr + b).to(tl.int64)
    end = tl.load(cu_ptr + b + 1).to(tl.int64)
    # pass 1: max entropy of the sequence (entropies only; cheap)
    mx = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N)  # (BN,)
        mx = tl.maximum(mx, tl.load(e_ptr + idx, mask=idx < end, other=float("-inf")).to(tl.float32))
    m = tl.max(mx, axis=0)
    # pass 2: one read of the hidden rows
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N)
        ok = idx < end
        ent = tl.load(e_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        w = tl.where(ok, tl.exp(ent - m), 0.0)  # (BN,)
        h = tl.load(h_ptr + idx[:, None] * stride_h + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0).to(
            tl.float32
        )  # (BN, BD)
        acc += tl.sum(w[:, None] * h, axis=0)
        den += w
    tl.store(out_ptr + b * stride_o + cols, acc / tl.sum(den, axis=0), mask=col_ok)


def _egtp_pool_triton(
    hidden: torch.Tensor,
    entropy: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    block_n: int = 32,
    block_d: int = 128,
) -> torch.Tensor:
    """Host launcher: grid (B, ceil(d / BLOCK_D))."""
    check_triton_inputs(_OP, hidden, entropy, cu_seqlens)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    entropy = entropy.contiguous()
    cu_seqlens = cu_seqlens.contiguous()
    batch, dim = cu_seqlens.shape[0] - 1, hidden.shape[1]
    out = torch.empty(batch, dim, dtype=torch.float32, device=hidden.device)  # (B, d)
    if batch == 0 or dim == 0:
        return out
    grid = (batch, cdiv(dim, block_d))
    lazy_jit(_egtp_pool_kernel)[grid](
        hidden, entropy, cu_seqlens, out, dim, hidden.stride(0), out.stride(0), BLOCK_N=block_n, BLOCK_D=block_d
    )
    return out
