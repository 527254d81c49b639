"""linear_entropy: every implementation against the naive reference (which is itself checked in float64).

Tolerances: float32 inputs atol 2e-5 / rtol 1e-5 on entropies in [0, log V] (only summation order differs);
bf16 inputs atol 1e-4 / rtol 1e-4 against naive on the same bf16 values (every impl upcasts to float32, and
bf16*bf16 products are exact in float32, so only accumulation order differs).
"""

import math

import pytest
import torch

from rollout_len.kernels import entropy as entropy_mod
from rollout_len.kernels import linear_entropy, logits_entropy
from rollout_len.kernels.entropy import _linear_entropy_triton

SHAPES = [(1, 37, 50), (7, 37, 131), (40, 16, 300)]  # (T, d, V): T=1, odd d, V not a block multiple
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-4, rtol=1e-4)}


def _inputs(T, d, V, dtype, device, bias=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, d, generator=g) * scale).to(device=device, dtype=dtype)  # (T, d)
    w = (torch.randn(V, d, generator=g) * (2.0 / math.sqrt(d))).to(device=device, dtype=dtype)  # (V, d)
    b = torch.randn(V, generator=g).to(device=device, dtype=dtype) if bias else None  # (V,)
    tok = torch.randint(0, V, (T,), generator=g).to(device)  # (T,)
    return h, w, b, tok


def _ref64(h, w, b, temperature, tok):
    """Definition in float64: H = -sum p log p, lp = log_softmax gathered at tok."""
    z = h.double() @ w.double().T  # (T, V)
    if b is not None:
        z = z + b.double()
    logp = torch.log_softmax(z / temperature, dim=-1)  # (T, V)
    return -(logp.exp() * logp).sum(-1), logp.gather(1, tok.long()[:, None])[:, 0]


def _run(impl, h, w, b, temperature, tok):
    """impl 'triton16' drives the launcher with 16-wide blocks: many vocab tiles, several d blocks."""
    if impl == "triton16":
        return _linear_entropy_triton(h, w, b, temperature, tok, block_t=16, block_v=16, block_d=16)
    if impl == "chunked_tiny":  # chunk edges everywhere
        return linear_entropy(h, w, b, temperature, token_ids=tok, impl="chunked", chunk_rows=3, chunk_vocab=7)
    return linear_entropy(h, w, b, temperature, token_ids=tok, impl=impl)


@pytest.mark.parametrize("T,d,V", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_naive_matches_float64_definition(T, d, V, temperature):
    h, w, b, tok = _inputs(T, d, V, torch.float32, "cpu")
    ent, lp = linear_entropy(h, w, b, temperature, token_ids=tok, impl="naive")
    ref_ent, ref_lp = _ref64(h, w, b, temperature, tok)
    assert ent.dtype == torch.float32 and ent.shape == (T,)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    assert (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-5).all()


@pytest.mark.parametrize("impl", ["chunked", "chunked_tiny", "triton", "triton16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,d,V", SHAPES)
def test_matches_naive(impl, dtype, T, d, V, device):
    dev = device if impl.startswith("triton") else "cpu"
    for bias, temperature in ((True, 0.7), (False, 1.0)):
        h, w, b, tok = _inputs(T, d, V, dtype, dev, bias=bias)
        ent, lp = _run(impl, h, w, b, temperature, tok)
        ref_ent, ref_lp = linear_entropy(h, w, b, temperature, token_ids=tok, impl="naive")
        assert ent.dtype == torch.float32 and ent.shape == (T,) and lp.shape == (T,)
        torch.testing.assert_close(ent, ref_ent, **TOL[dtype])
        torch.testing.assert_close(lp, ref_lp, **TOL[dtype])


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
def test_logprob_is_log_softmax_gather(impl, device):
    dev = device if impl == "triton" else "cpu"
    h, w, b, tok = _inputs(9, 37, 200, torch.float32, dev)
    _, lp = linear_entropy(h, w, b, 1.3, token_ids=tok, impl=impl)
    logp = torch.log_softmax((h @ w.T + b) / 1.3, dim=-1)  # (T, V)
    torch.testing.assert_close(lp, logp.gather(1, tok[:, None])[:, 0], atol=2e-5, rtol=1e-5)
    assert (lp <= 0).all()


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton16"])
def test_dominant_logit_gives_zero_entropy(impl, device):
    """hidden x1e3: logit gaps ~1e3, p is one-hot; no overflow, no NaN, entropy ~0, log-prob of argmax ~0."""
    dev = device if impl.startswith("triton") else "cpu"
    h, w, b, _ = _inputs(5, 37, 131, torch.float32, dev, scale=1e3)
    top = (h @ w.T + b).argmax(1)  # (T,)
    ent, lp = _run(impl, h, w, b, 1.0, top)
    assert torch.isfinite(ent).all() and torch.isfinite(lp).all()
    assert ent.abs().max() < 1e-4
    assert lp.abs().max() < 1e-4
    other = (top + 1) % 131
    _, lp_other = _run(impl, h, w, b, 1.0, other)
    _, ref_other = linear_entropy(h, w, b, token_ids=other, impl="naive")
    assert torch.isfinite(lp_other).all() and (lp_other < -10).all()
    torch.testing.assert_close(lp_other, ref_other, rtol=1e-5, atol=1e-2)  # |lp| ~ 1e3..1e4


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton16"])
@pytest.mark.parametrize("V", [1, 50, 300])
def test_uniform_logits_give_log_v(impl, V, device):
    dev = device if impl.startswith("triton") else "cpu"
    h = torch.randn(4, 37, device=dev)
    w = torch.zeros(V, 37, device=dev)
    b = torch.full((V,), 2.5, device=dev)  # equal logits
    tok = torch.arange(4, device=dev) % V
    ent, lp = _run(impl, h, w, b, 0.3, tok)
    torch.testing.assert_close(ent, torch.full_like(ent, math.log(V)), atol=1e-5, rtol=0)
    torch.testing.assert_close(lp, torch.full_like(lp, -math.log(V)), atol=1e-5, rtol=0)


def test_temperature_flattens_distribution():
    h, w, b, _ = _inputs(6, 37, 200, torch.float32, "cpu")
    cold, mid, hot = (linear_entropy(h, w, b, t, impl="chunked") for t in (0.25, 1.0, 8.0))
    assert (cold < mid).all() and (mid < hot).all() and (hot < math.log(200)).all()


def test_engine_positional_call_returns_tensor():
    """The decode engine calls linear_entropy(final[row, :n], weight, bias): a (T,) float32 tensor back."""
    final = torch.randn(2, 11, 37, dtype=torch.bfloat16)
    w = torch.randn(90, 37, dtype=torch.bfloat16) * 0.2
    out = linear_entropy(final[1, :7], w, None)
    assert isinstance(out, torch.Tensor) and out.shape == (7,) and out.dtype == torch.float32
    torch.testing.assert_close(out, linear_entropy(final[1, :7], w, None, impl="naive"), atol=1e-4, rtol=1e-4)


def test_logits_entropy_is_the_definition_and_agrees_with_linear_entropy():
    """logits_entropy: the decode step's entropy from logits it already has; the same H as linear_entropy."""
    assert logits_entropy(torch.zeros(10)).item() == pytest.approx(math.log(10.0))
    assert logits_entropy(torch.tensor([1e4, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
    h, w, b, tok = _inputs(7, 37, 131, torch.bfloat16, "cpu")
    logits = torch.nn.functional.linear(h.float(), w.float(), b.float())  # (T, V)
    ref, _ = _ref64(h, w, b, 1.0, tok)
    ent = logits_entropy(logits.to(torch.bfloat16))  # upcast inside
    assert ent.dtype == torch.float32 and ent.shape == (7,)
    torch.testing.assert_close(logits_entropy(logits).double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_entropy(logits), linear_entropy(h, w, b, impl="naive"), atol=0, rtol=0)
    assert logits_entropy(logits.view(7, 1, 131)).shape == (7, 1)


def test_auto_is_chunked_on_cpu(monkeypatch):
    calls = []
    real = entropy_mod._linear_entropy_chunked
    monkeypatch.setattr(entropy_mod, "_linear_entropy_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(entropy_mod, "_linear_entropy_triton", lambda *a, **k: pytest.fail("triton on CPU"))
    h, w, b, _ = _inputs(3, 16, 40, torch.float32, "cpu")
    linear_entropy(h, w, b)
    assert calls == [1]


def test_triton_strided_and_mixed_dtype_inputs(device):
    h, w, b, tok = _inputs(6, 37, 70, torch.float32, device)
    wide = torch.randn(6, 50, device=device)
    wide[:, 5:42] = h
    strided = wide[:, 5:42]  # row stride 50, like a slice of a bigger activation
    assert strided.stride(0) == 50
    ent, lp = linear_entropy(strided, w.bfloat16(), b, token_ids=tok, impl="triton")
    ref_ent, ref_lp = linear_entropy(h, w.bfloat16(), b, token_ids=tok, impl="naive")
    torch.testing.assert_close(ent, ref_ent, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp, ref_lp, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
def test_empty_rows(impl, device):
    dev = device if impl == "triton" else "cpu"
    h = torch.empty(0, 16, device=dev)
    w = torch.randn(30, 16, device=dev)
    ent, lp = linear_entropy(h, w, token_ids=torch.empty(0, dtype=torch.long, device=dev), impl=impl)
    assert ent.shape == (0,) and lp.shape == (0,) and ent.dtype == torch.float32


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    h, w, _, _ = _inputs(2, 16, 20, torch.float32, "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        linear_entropy(h, w, impl="triton")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(hidden=torch.randn(3, 8), weight=torch.randn(5, 9)), ValueError, r"disagree on d: \(3, 8\) vs \(5, 9\)"),
        (dict(hidden=torch.randn(8), weight=torch.randn(5, 8)), ValueError, r"must have 2 dim\(s\), got shape \(8,\)"),
        (dict(hidden=torch.randn(3, 8), weight=torch.randn(5, 8, 1)), ValueError, "weight must have 2"),
        (dict(hidden=torch.randn(3, 8), weight=torch.randn(0, 8)), ValueError, "empty vocabulary"),
        (dict(bias=torch.randn(4)), ValueError, r"bias must be \(V,\) = \(5,\), got \(4,\)"),
        (dict(temperature=0.0), ValueError, "temperature must be finite and > 0, got 0.0"),
        (dict(temperature=-1.0), ValueError, "> 0, got -1.0"),
        (dict(temperature=float("nan")), ValueError, "got nan"),
        (dict(temperature=float("inf")), ValueError, "got inf"),
        (dict(temperature="1.0"), TypeError, "temperature must be a real number"),
        (dict(token_ids=torch.tensor([0, 5, 1])), ValueError, r"in \[0, 5\), got range \[0, 5\]"),
        (dict(token_ids=torch.tensor([0, -1, 1])), ValueError, r"got range \[-1, 1\]"),
        (dict(token_ids=torch.tensor([0, 1])), ValueError, r"token_ids must be \(T,\) = \(3,\), got \(2,\)"),
        (dict(token_ids=torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer tensor"),
        (dict(hidden=torch.randint(0, 3, (3, 8))), TypeError, "hidden must be a floating tensor"),
        (dict(hidden=[[0.0] * 8]), TypeError, "hidden must be a torch.Tensor, got list"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
        (dict(chunk_rows=0), ValueError, "chunk_rows must be a positive int, got 0"),
    ],
)
def test_validation(kwargs, exc, match):
    args = dict(hidden=torch.randn(3, 8), weight=torch.randn(5, 8), bias=None, temperature=1.0)
    args.update(kwargs)
    hidden, weight, bias, temperature = (args.pop(k) for k in ("hidden", "weight", "bias", "temperature"))
    with pytest.raises(exc, match=match):
        linear_entropy(hidden, weight, bias, temperature, **args)
