"""Next-token entropy (and optionally token log-probs) straight from hidden states, or from logits.

    linear_entropy(hidden, weight, bias)   # (T, d), (V, d), (V,) -> (T,): the logits never materialized
    logits_entropy(logits)                 # (..., V) -> (...): logits already at hand (a decode step)

    z_t  = (h_t W^T + b) / temperature                      # logits of row t, (V,)
    p_t  = softmax(z_t)
    H_t  = -sum_v p_tv log p_tv
    lp_t = log p_t[token_ids[t]]                             # only when token_ids is given

Three implementations, all computing in float32 (bf16/fp16 inputs are upcast inside):

* "naive":   the full (T, V) logits and log_softmax. The reference; O(T*V) memory.
* "chunked": torch, loops over vocabulary chunks and row chunks with an online softmax, O(T + R*C) memory.
* "triton":  a fused linear+entropy kernel: each program owns BLOCK_T rows, walks the vocabulary a
             BLOCK_V tile at a time, builds the logit tile from hidden/weight blocks with tl.dot and
             folds it into the online softmax. The logits never exist in memory.

Online softmax state per row (m = running max, s = sum exp(z - m), t = sum exp(z - m) * (z - m)):

    m' = max(m, max_tile z);  a = exp(m - m')
    s' = a * s + sum exp(z - m')
    t' = a * (t + (m - m') * s) + sum exp(z - m') * (z - m')
    H  = log s - t / s                       (== m + log s - sum exp(z - m) z / s)
    lp = z_tok - m - log s

t is kept relative to the running max instead of as sum exp(z - m) * z: the identity is the same,
but it avoids the cancellation of two ~|z| sized terms when logits are large (|z| ~ 1e4 would cost
~1e-3 of absolute entropy error in float32 otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from rollout_len.kernels._checks import check_impl, check_temperature, check_tensor
from rollout_len.kernels._triton import cdiv, check_triton_inputs, interpret_mode, lazy_jit, use_triton

__all__ = ["linear_entropy", "logits_entropy"]

_IMPLS = ("auto", "naive", "chunked", "triton")
_OP = "linear_entropy"

tl: Any = None  # bound to triton.language by _triton.lazy_jit before the kernel is first built


def linear_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    token_ids: torch.Tensor | None = None,
    impl: str = "auto",
    chunk_rows: int = 512,
    chunk_vocab: int = 4096,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Entropy of p_t = softmax((hidden @ weight.T + bias) / temperature) for every row t.

    H_t = -sum_v p_tv log p_tv. hidden (T, d), weight (V, d), bias (V,) or None -> entropy (T,) float32.
    With token_ids (T,) integer in [0, V), returns (entropy, logprob) where logprob_t = log p_t[token_ids[t]]
    (float32, (T,)). impl: "naive" (full logits, reference), "chunked" (torch online softmax over
    chunk_rows x chunk_vocab tiles), "triton" (fused kernel; CUDA tensors, or CPU under TRITON_INTERPRET=1),
    "auto" (triton on CUDA tensors, chunked otherwise).
    """
    check_impl(_OP, impl, _IMPLS)
    check_tensor(_OP, "hidden", hidden, 2, floating=True)
    check_tensor(_OP, "weight", weight, 2, floating=True)
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{_OP}: hidden (T, d) and weight (V, d) disagree on d: {tuple(hidden.shape)} vs {tuple(weight.shape)}"
        )
    vocab = weight.shape[0]
    if vocab == 0:
        raise ValueError(f"{_OP}: weight has an empty vocabulary, shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(_OP, "bias", bias, 1, floating=True)
        if bias.shape[0] != vocab:
            raise ValueError(f"{_OP}: bias must be (V,) = ({vocab},), got {tuple(bias.shape)}")
    temperature = check_temperature(_OP, temperature)
    if token_ids is not None:
        check_tensor(_OP, "token_ids", token_ids, 1, floating=False)
        if token_ids.shape[0] != hidden.shape[0]:
            raise ValueError(f"{_OP}: token_ids must be (T,) = ({hidden.shape[0]},), got {tuple(token_ids.shape)}")
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab):
            raise ValueError(
                f"{_OP}: token_ids must lie in [0, {vocab}), got range [{int(token_ids.min())}, {int(token_ids.max())}]"
            )
    for name, value in (("chunk_rows", chunk_rows), ("chunk_vocab", chunk_vocab)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{_OP}: {name} must be a positive int, got {value!r}")
    tensors = [t for t in (hidden, weight, bias, token_ids) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"{_OP}: all inputs must be on one device, got {[str(t.device) for t in tensors]}")

    if use_triton(impl, hidden.device):
        entropy, logprob = _linear_entropy_triton(hidden, weight, bias, temperature, token_ids)
    elif impl == "naive":
        entropy, logprob = _linear_entropy_naive(hidden, weight, bias, temperature, token_ids)
    else:
        entropy, logprob = _linear_entropy_chunked(
            hidden, weight, bias, temperature, token_ids, chunk_rows=chunk_rows, chunk_vocab=chunk_vocab
        )
    return entropy if logprob is None else (entropy, logprob)


# ---------------------------------------------------------------------------------------------- naive


def logits_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v of p = softmax(logits) along the last dim, in float32.  (..., V) -> (...)

    The definition itself (log_softmax, then the sum), as `linear_entropy(impl="naive")` computes it;
    for callers that hold the logits anyway, such as the decode step that samples from them."""
    return _entropy_of_logp(torch.log_softmax(logits.float(), dim=-1))


def _entropy_of_logp(logp: torch.Tensor) -> torch.Tensor:
    """-sum_v exp(logp_v) logp_v along the last dim.  (..., V) -> (...)"""
    return -(logp.exp() * logp).sum(-1)


def _linear_entropy_naive(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    token_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: materialize the full logits."""
    logits = torch.nn.functional.linear(
        hidden.float(), weight.float(), None if bias is None else bias.float()
    )  # (T, V)
    logp = torch.log_softmax(logits / temperature, dim=-1)  # (T, V)
    entropy = _entropy_of_logp(logp)  # (T,)
    logprob = None if token_ids is None else logp.gather(1, token_ids.long()[:, None])[:, 0]  # (T,)
    return entropy, logprob


# -------------------------------------------------------------------------------------------- chunked


def _linear_entropy_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    token_ids: torch.Tensor | None,
    *,
    chunk_rows: int = 512,
    chunk_vocab: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Online softmax over vocabulary chunks (outer loop; each weight chunk is upcast once) and row chunks."""
    n_rows, vocab = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    h32 = hidden.float()  # (T, d); a no-op for float32 input
    tok = None if token_ids is None else token_ids.long()  # (T,)
    m = torch.full((n_rows,), float("-inf"), dtype=torch.float32, device=dev)  # (T,) running max
    s = torch.zeros(n_rows, dtype=torch.float32, device=dev)  # (T,) sum exp(z - m)
    t = torch.zeros(n_rows, dtype=torch.float32, device=dev)  # (T,) sum exp(z - m) * (z - m)
    z_tok = torch.zeros(n_rows, dtype=torch.float32, device=dev)  # (T,) logit of token_ids
    for v0 in range(0, vocab, chunk_vocab):
        v1 = min(v0 + chunk_vocab, vocab)
        w = weight[v0:v1].float()  # (C, d)
        b = None if bias is None else bias[v0:v1].float()  # (C,)
        for r0 in range(0, n_rows, chunk_rows):
            r1 = min(r0 + chunk_rows, n_rows)
            z = torch.nn.functional.linear(h32[r0:r1], w, b)  # (R, C)
            if temperature != 1.0:
                z.div_(temperature)
            if tok is not None:
                local = tok[r0:r1] - v0  # (R,)
                hit = (local >= 0) & (local < v1 - v0)
                picked = z.gather(1, local.clamp(0, v1 - v0 - 1)[:, None])[:, 0]  # (R,)
                z_tok[r0:r1] += torch.where(hit, picked, 0.0)
            m_old, s_old = m[r0:r1], s[r0:r1]  # views, (R,)
            m_new = torch.maximum(m_old, z.amax(1))  # (R,)
            alpha = torch.exp(m_old - m_new)  # (R,) 0 on the first chunk
            shift = torch.where(s_old > 0, m_old - m_new, 0.0)  # (R,) avoids -inf * 0
            zs = z.sub_(m_new[:, None])  # (R, C) z - m', in place
            e = torch.exp(zs)  # (R, C)
            t[r0:r1] = alpha * (t[r0:r1] + shift * s_old) + (e * zs).sum(1)
            s[r0:r1] = alpha * s_old + e.sum(1)
            m[r0:r1] = m_new
            del z, zs, e
    log_s = torch.log(s)
    entropy = log_s - t / s  # (T,)
    logprob = None if tok is None else z_tok - m - log_s  # (T,)
    return entropy, logprob


# --------------------------------------------------------------------------------------------- triton


def _linear_entropy_kernel(
    h_ptr,  # (T, d) hidden, row stride stride_h, unit column stride
    w_ptr,  # (V, d) weight, row stride stride_w, unit column stride
    b_ptr,  # (V,) bias (unused unless HAS_BIAS)
    tok_ptr,  # (T,) token ids (unused unless HAS_TOKENS)
    ent_ptr,  # (T,) float32 out
    lp_ptr,  # (T,) float32 out (unused unless HAS_TOKENS)
    T,
    V,
    D,
    stride_h,
    stride_w,
    temperature,
    HAS_BIAS: tl.constexpr,
    HAS_TOKENS: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
    row_ok = rows < T
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)  # running max
    s = tl.zeros([BLOCK_T], dtype=tl.float32)  # sum exp(z - m)
    t = tl.zeros([BLOCK_T], dtype=tl.float32)  # sum exp(z - m) * (z - m)
    z_tok = tl.zeros([BLOCK_T], dtype=tl.float32)
    if HAS_TOKENS:
        tok = tl.load(tok_ptr + rows, mask=row_ok, other=-1).to(tl.int64)  # (BT,)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # (BV,)
        col_ok = cols < V
        acc = tl.zeros([BLOCK_T, BLOCK_V], dtype=tl.float32)  # logit tile, fp32 accumulation
        for d0 in range(0, D, BLOCK_D):
            ks = d0 + tl.arange(0, BLOCK_D)  # (BD,)
            k_ok = ks < D
            h = tl.load(
                h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )  # (BT, BD)
            w = tl.load(
                w_ptr + cols[None, :].to(tl.int64) * stride_w + ks[:, None],
                mask=col_ok[None, :] & k_ok[:, None],
                other=0.0,
            )  # (BD, BV) = W^T block
            if UPCAST:  # interpreter only: its tl.dot mishandles bf16 operands (bf16*bf16 is exact in fp32)
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            if IEEE:  # float32 operands: exact fp32 products, no TF32
                acc = tl.dot(h, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(h, w, acc)  # bf16/fp16 operands, fp32 accumulator
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        z = acc / temperature  # (BT, BV)
        if HAS_TOKENS:
            z_tok += tl.sum(tl.where(cols[None, :] == tok[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(tl.where(col_ok[None, :], z, float("-inf")), axis=1))  # (BT,)
        alpha = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
        shift = tl.where(s > 0, m - m_new, 0.0)
        zs = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)  # (BT, BV); padded columns -> 0
        e = tl.where(col_ok[None, :], tl.exp(zs), 0.0)  # padded columns contribute nothing
        t = alpha * (t + shift * s) + tl.sum(e * zs, axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
    log_s = tl.log(s)
    tl.store(ent_ptr + rows, log_s - t / s, mask=row_ok)
    if HAS_TOKENS:
        tl.store(lp_ptr + rows, z_tok - m - log_s, mask=row_ok)


def _linear_entropy_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    token_ids: torch.Tensor | None,
    *,
    block_t: int | None = None,
    block_v: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Host launcher: one program per BLOCK_T rows; block sizes must be powers of two >= 16 (tl.dot)."""
    tensors = [t for t in (hidden, weight, bias, token_ids) if t is not None]
    check_triton_inputs(_OP, *tensors)
    if hidden.dtype != weight.dtype:  # tl.dot wants one operand dtype; promote (e.g. bf16 + fp32 -> fp32)
        common = torch.promote_types(hidden.dtype, weight.dtype)
        hidden, weight = hidden.to(common), weight.to(common)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    token_ids = None if token_ids is None else token_ids.contiguous()
    n_rows, dim = hidden.shape
    vocab = weight.shape[0]
    entropy = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)  # (T,)
    logprob = torch.empty(n_rows, dtype=torch.float32, device=hidden.device) if token_ids is not None else None
    if n_rows == 0:
        return entropy, logprob
    cuda = hidden.device.type == "cuda"
    block_t = block_t or (64 if cuda else 32)
    block_v = block_v or (128 if cuda else 64)
    block_d = block_d or 64
    extra = {}
    if cuda:
        extra = {"num_warps": num_warps or 8, "num_stages": num_stages or 3}
    upcast = interpret_mode() and hidden.dtype != torch.float32  # see the UPCAST branch in the kernel
    kernel = lazy_jit(_linear_entropy_kernel)
    grid = (cdiv(n_rows, block_t),)
    kernel[grid](
        hidden,
        weight,
        bias if bias is not None else entropy,  # dummy pointer when absent (never read)
        token_ids if token_ids is not None else entropy,
        entropy,
        logprob if logprob is not None else entropy,
        n_rows,
        vocab,
        dim,
        hidden.stride(0),
        weight.stride(0),
        float(temperature),
        HAS_BIAS=bias is not None,
        HAS_TOKENS=token_ids is not None,
        UPCAST=upcast,
        IEEE=upcast or hidden.dtype == torch.float32,
        BLOCK_T=block_t,
        BLOCK_V=block_v,
        BLOCK_D=block_d,
        **extra,
    )
    return entropy, logprob
