"""Streaming Entropy-Guided Token Pooling for progressive length prediction during decoding.

Per sample the state keeps, over all tokens seen so far (entropies H_1..H_n, hidden states h_1..h_n):

    m   = max_i H_i                                   # (B,)
    s   = sum_i exp(H_i - m)                          # (B,)
    acc = sum_i exp(H_i - m) * h_i                    # (B, d)
    pooled = acc / s = sum_i softmax(H_1..H_n)_i h_i  # == egtp_pool over the same tokens

One step with a new token (H, h):

    m' = max(m, H);  a = exp(m - m');  c = exp(H - m')
    s' = a * s + c;  acc' = a * acc + c * h

O(d) per sample per step; old hidden states are never re-read.

* "torch":  reference (indexed in-place updates).
* "triton": one launch for the batch, one program per updated row, looping over d in BLOCK_D slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rollout_len.kernels._checks import check_impl, check_tensor
from rollout_len.kernels._triton import check_triton_inputs, lazy_jit, use_triton

__all__ = ["OnlinePoolState", "online_pool_update"]

_IMPLS = ("auto", "torch", "triton")
_OP = "online_pool_update"

tl: Any = None  # bound to triton.language by _triton.lazy_jit before the kernel is first built


@dataclass
class OnlinePoolState:
    """Running EGTP state of B samples: m (B,), s (B,), acc (B, d), all float32 on one device."""

    m: torch.Tensor  # (B,) running max entropy; -inf before the first token
    s: torch.Tensor  # (B,) sum exp(H - m)
    acc: torch.Tensor  # (B, d) sum exp(H - m) * h

    @classmethod
    def init(cls, batch: int, dim: int, device: torch.device | str = "cpu") -> OnlinePoolState:
        """A state for `batch` samples of width `dim` that has seen no tokens yet."""
        if batch < 0 or dim <= 0:
            raise ValueError(f"OnlinePoolState.init: need batch >= 0 and dim > 0, got batch={batch}, dim={dim}")
        return cls(
            m=torch.full((batch,), float("-inf"), dtype=torch.float32, device=device),
            s=torch.zeros(batch, dtype=torch.float32, device=device),
            acc=torch.zeros(batch, dim, dtype=torch.float32, device=device),
        )

    empty = init  # alias: OnlinePoolState.empty(B, d, device)

    @property
    def batch_size(self) -> int:
        return self.acc.shape[0]

    @property
    def dim(self) -> int:
        return self.acc.shape[1]

    def pooled(self) -> torch.Tensor:
        """acc / s -> (B, d) float32; rows that have seen no token yet are all zeros."""
        return self.acc / self.s.clamp_min(torch.finfo(torch.float32).tiny)[:, None]

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the tokens of `rows` (all rows when None), e.g. when a decode slot gets a new sample."""
        if rows is None:
            self.m.fill_(float("-inf"))
            self.s.zero_()
            self.acc.zero_()
        else:
            self.m[rows] = float("-inf")
            self.s[rows] = 0.0
            self.acc[rows] = 0.0


def online_pool_update(
    state: OnlinePoolState,
    hidden_t: torch.Tensor,
    entropy_t: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    impl: str = "auto",
) -> OnlinePoolState:
    """Fold one new token per sample into `state` in place (and return it).

    m' = max(m, H), s' = exp(m - m') s + exp(H - m'), acc' = exp(m - m') acc + exp(H - m') h, so that
    state.pooled() = sum_i softmax(H_1..H_n)_i h_i over every token seen. hidden_t (K, d), entropy_t (K,):
    with rows=None, K = B and every sample advances; otherwise rows (K,) holds distinct sample indices in
    [0, B) and row k of hidden_t/entropy_t belongs to sample rows[k] (the others are left untouched).
    impl: "torch" (reference), "triton" (one launch; CUDA, or CPU under TRITON_INTERPRET=1), "auto".
    """
    check_impl(_OP, impl, _IMPLS)
    if not isinstance(state, OnlinePoolState):
        raise TypeError(f"{_OP}: state must be an OnlinePoolState, got {type(state).__name__}")
    check_tensor(_OP, "state.m", state.m, 1)
    check_tensor(_OP, "state.s", state.s, 1)
    check_tensor(_OP, "state.acc", state.acc, 2)
    batch, dim = state.acc.shape
    for name, t in (("m", state.m), ("s", state.s), ("acc", state.acc)):
        if t.dtype != torch.float32:
            raise TypeError(f"{_OP}: state.{name} must be float32, got {t.dtype}")
    if state.m.shape[0] != batch or state.s.shape[0] != batch:
        raise ValueError(
            f"{_OP}: inconsistent state: m {tuple(state.m.shape)}, s {tuple(state.s.shape)}, "
            f"acc {tuple(state.acc.shape)}"
        )
    check_tensor(_OP, "hidden_t", hidden_t, 2, floating=True)
    check_tensor(_OP, "entropy_t", entropy_t, 1, floating=True)
    n_upd = batch if rows is None else None
    if rows is not None:
        check_tensor(_OP, "rows", rows, 1, floating=False)
        n_upd = rows.shape[0]
    if hidden_t.shape != (n_upd, dim):
        raise ValueError(
            f"{_OP}: hidden_t must be ({n_upd}, {dim}) for state acc {tuple(state.acc.shape)}"
            f"{'' if rows is None else f' and rows {tuple(rows.shape)}'}, got {tuple(hidden_t.shape)}"
        )
    if entropy_t.shape != (n_upd,):
        raise ValueError(f"{_OP}: entropy_t must be ({n_upd},), got {tuple(entropy_t.shape)}")
    tensors = [state.m, state.s, state.acc, hidden_t, entropy_t] + ([] if rows is None else [rows])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"{_OP}: state and inputs must be on one device, got {[str(t.device) for t in tensors]}")
    if rows is not None and rows.numel():
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= batch:
            raise ValueError(f"{_OP}: rows must lie in [0, {batch}), got range [{lo}, {hi}]")
        if torch.unique(rows).numel() != rows.numel():
            raise ValueError(f"{_OP}: rows must be distinct, got {rows.tolist()}")

    if n_upd == 0:
        return state
    if use_triton(impl, hidden_t.device):
        _online_pool_update_triton(state, hidden_t, entropy_t, rows)
    else:
        _online_pool_update_torch(state, hidden_t, entropy_t, rows)
    return state


# ---------------------------------------------------------------------------------------------- torch


def _online_pool_update_torch(
    state: OnlinePoolState, hidden_t: torch.Tensor, entropy_t: torch.Tensor, rows: torch.Tensor | None
) -> None:
    """Reference: gather the rows' state, apply the update, scatter it back."""
    idx = slice(None) if rows is None else rows.long()
    ent = entropy_t.float()  # (K,)
    m_old, s_old, acc_old = state.m[idx], state.s[idx], state.acc[idx]  # (K,), (K,), (K, d)
    m_new = torch.maximum(m_old, ent)  # (K,)
    a = torch.exp(m_old - m_new)  # (K,) 0 for a fresh row (m = -inf)
    c = torch.exp(ent - m_new)  # (K,)
    state.acc[idx] = a[:, None] * acc_old + c[:, None] * hidden_t.float()  # (K, d)
    state.s[idx] = a * s_old + c
    state.m[idx] = m_new


# --------------------------------------------------------------------------------------------- triton


def _online_pool_kernel(
    m_ptr,  # (B,) float32, in/out
    s_ptr,  # (B,) float32, in/out
    acc_ptr,  # (B, d) float32, in/out, row stride stride_acc
    h_ptr,  # (K, d) new hidden states, row stride stride_h
    e_ptr,  # (K,) new entropies
    rows_ptr,  # (K,) sample index of each update (unused unless HAS_ROWS)
    D,
    stride_acc,
    stride_h,
    HAS_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0)  # one program per updated sample: it alone reads and writes that sample's state
    if HAS_ROWS:
        r = tl.load(rows_ptr + k).to(tl.int64)
    else:
        r = k.to(tl.int64)
    m = tl.load(m_ptr + r)
    s = tl.load(s_ptr + r)
    ent = tl.load(e_ptr + k).to(tl.float32)
    m_new = tl.maximum(m, ent)
    a = tl.exp(m - m_new)  # 0 for a fresh row (m = -inf)
    c = tl.exp(ent - m_new)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)  # (BD,)
        ok = cols < D
        acc = tl.load(acc_ptr + r * stride_acc + cols, mask=ok, other=0.0)
        h = tl.load(h_ptr + k * stride_h + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(acc_ptr + r * stride_acc + cols, a * acc + c * h, mask=ok)
    tl.store(s_ptr + r, a * s + c)
    tl.store(m_ptr + r, m_new)


def _online_pool_update_triton(
    state: OnlinePoolState,
    hidden_t: torch.Tensor,
    entropy_t: torch.Tensor,
    rows: torch.Tensor | None,
    *,
    block_d: int = 256,
) -> None:
    """Host launcher: grid (K,), one launch for the whole batch; updates state in place."""
    tensors = [state.m, state.s, state.acc, hidden_t, entropy_t] + ([] if rows is None else [rows])
    check_triton_inputs(_OP, *tensors)
    for name in ("m", "s", "acc"):
        t = getattr(state, name)
        if not t.is_contiguous():
            raise ValueError(f"{_OP}: impl='triton' updates the state in place and needs contiguous state.{name}")
    hidden_t = hidden_t if hidden_t.stride(-1) == 1 else hidden_t.contiguous()
    entropy_t = entropy_t.contiguous()
    rows = None if rows is None else rows.contiguous()
    n_upd, dim = hidden_t.shape
    lazy_jit(_online_pool_kernel)[(n_upd,)](
        state.m,
        state.s,
        state.acc,
        hidden_t,
        entropy_t,
        rows if rows is not None else entropy_t,  # dummy pointer when absent (never read)
        dim,
        state.acc.stride(0),
        hidden_t.stride(0),
        HAS_ROWS=rows is not None,
        BLOCK_D=block_d,
    )
