"""egtp_pool: torch reference against the float64 definition, triton against torch (atol 1e-5 fp32 / 1e-4 bf16)."""

import pytest
import torch

from rollout_len.kernels import egtp_pool
from rollout_len.kernels.egtp import _egtp_pool_triton

LENS = [[1], [1, 5, 40, 3], [17, 2, 33]]


def _packed(lens, d, dtype=torch.float32, device="cpu", seed=0, ent_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    hidden = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)  # (N, d)
    entropy = (torch.rand(n, generator=g) * ent_scale).to(device)  # (N,)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=device)  # (B+1,)
    return hidden, entropy, cu


def _ref64(hidden, entropy, cu):
    out = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        w = torch.exp(entropy[s:e].double() - entropy[s:e].double().max())
        out.append((w / w.sum()) @ hidden[s:e].double())
    return torch.stack(out)  # (B, d)


@pytest.mark.parametrize("lens", LENS)
def test_torch_matches_definition(lens):
    hidden, entropy, cu = _packed(lens, 37)
    out = egtp_pool(hidden, entropy, cu, impl="torch")
    assert out.shape == (len(lens), 37) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _ref64(hidden, entropy, cu), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-4)])
@pytest.mark.parametrize("lens", LENS)
@pytest.mark.parametrize("cu_dtype", [torch.int32, torch.int64])
def test_triton_matches_torch(dtype, tol, lens, cu_dtype, device):
    hidden, entropy, cu = _packed(lens, 37, dtype, device)
    cu = cu.to(cu_dtype)
    ref = egtp_pool(hidden.cpu(), entropy.cpu(), cu.cpu(), impl="torch")
    out = egtp_pool(hidden, entropy, cu, impl="triton")
    torch.testing.assert_close(out.cpu(), ref, atol=tol, rtol=tol)
    small = _egtp_pool_triton(hidden, entropy, cu, block_n=16, block_d=16)  # several token and d blocks
    torch.testing.assert_close(small.cpu(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_uniform_entropy_is_mean_and_dominant_entropy_selects(impl, device):
    dev = device if impl == "triton" else "cpu"
    hidden, _, cu = _packed([4, 6], 37, device=dev)
    flat = torch.full((10,), 1.7, device=dev)
    out = egtp_pool(hidden, flat, cu, impl=impl)
    torch.testing.assert_close(out, torch.stack([hidden[:4].mean(0), hidden[4:].mean(0)]), atol=1e-6, rtol=1e-5)
    spike = torch.zeros(10, device=dev)
    spike[2], spike[7] = 1e4, 1e4  # huge but finite: must not overflow
    out = egtp_pool(hidden, spike, cu, impl=impl)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.stack([hidden[2], hidden[7]]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_shift_invariance(impl, device):
    dev = device if impl == "triton" else "cpu"
    hidden, entropy, cu = _packed([5, 9], 16, device=dev)
    torch.testing.assert_close(
        egtp_pool(hidden, entropy + 500.0, cu, impl=impl),
        egtp_pool(hidden, entropy, cu, impl=impl),
        atol=1e-5,
        rtol=1e-5,
    )


def test_auto_on_cpu_equals_torch():
    hidden, entropy, cu = _packed([3, 8], 37)
    assert torch.equal(egtp_pool(hidden, entropy, cu), egtp_pool(hidden, entropy, cu, impl="torch"))


def test_no_sequences():
    out = egtp_pool(torch.empty(0, 8), torch.empty(0), torch.tensor([0]), impl="torch")
    assert out.shape == (0, 8)


@pytest.mark.parametrize(
    "hidden,entropy,cu,exc,match",
    [
        (torch.randn(6, 4), torch.rand(6), torch.tensor([0, 2, 2, 6]), ValueError, r"sequence 1 is empty"),
        (torch.randn(6, 4), torch.rand(6), torch.tensor([0, 4, 2, 6]), ValueError, r"increasing.*cu_seqlens\[2\] = 2"),
        (torch.randn(6, 4), torch.rand(6), torch.tensor([0, 2, 5]), ValueError, "must end at N = 6, got 5"),
        (torch.randn(6, 4), torch.rand(6), torch.tensor([1, 2, 6]), ValueError, "must start at 0, got 1"),
        (torch.randn(6, 4), torch.rand(5), torch.tensor([0, 6]), ValueError, r"entropy must be \(N,\) = \(6,\)"),
        (torch.randn(6), torch.rand(6), torch.tensor([0, 6]), ValueError, "hidden must have 2 dim"),
        (torch.randn(6, 4), torch.rand(6, 1), torch.tensor([0, 6]), ValueError, "entropy must have 1 dim"),
        (torch.randn(6, 4), torch.rand(6), torch.tensor([0.0, 6.0]), TypeError, "cu_seqlens must be an integer"),
        (torch.randn(6, 4), torch.rand(6), torch.tensor([], dtype=torch.long), ValueError, "at least one entry"),
    ],
)
def test_validation(hidden, entropy, cu, exc, match):
    with pytest.raises(exc, match=match):
        egtp_pool(hidden, entropy, cu)
