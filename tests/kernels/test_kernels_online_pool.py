"""online_pool_update: streaming state equals egtp_pool over every prefix; triton equals torch (atol 1e-5)."""

import pytest
import torch

from rollout_len.kernels import OnlinePoolState, egtp_pool, online_pool_update
from rollout_len.kernels.online_pool import _online_pool_update_triton

B, D, STEPS = 3, 37, 6


def _stream(device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(STEPS, B, D, generator=g).to(device=device, dtype=dtype)  # (steps, B, d)
    es = (torch.rand(STEPS, B, generator=g) * 4).to(device)  # (steps, B)
    return hs, es


def _egtp_prefix(hs, es, n):
    """egtp_pool of every sample over its first n tokens: (B, d)."""
    hidden = hs[:n].transpose(0, 1).reshape(-1, hs.shape[-1]).cpu()  # sample-major packing
    entropy = es[:n].transpose(0, 1).reshape(-1).cpu()
    cu = torch.arange(0, hs.shape[1] + 1) * n
    return egtp_pool(hidden, entropy, cu, impl="torch")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stream_equals_egtp_of_prefix(impl, dtype, device):
    dev = device if impl == "triton" else "cpu"
    hs, es = _stream(dev, dtype)
    state = OnlinePoolState.init(B, D, dev)
    for n in range(1, STEPS + 1):
        returned = online_pool_update(state, hs[n - 1], es[n - 1], impl=impl)
        assert returned is state
        torch.testing.assert_close(state.pooled().cpu(), _egtp_prefix(hs, es, n), atol=1e-5, rtol=1e-5)
    assert state.pooled().dtype == torch.float32 and state.pooled().shape == (B, D)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_subset_rows_ragged(impl, device):
    """Samples advance at different steps; rows given out of order; untouched rows keep their state."""
    dev = device if impl == "triton" else "cpu"
    g = torch.Generator().manual_seed(1)
    schedule = [[2, 0], [1], [0, 1, 2], [2], [1, 2]]
    state = OnlinePoolState.empty(B, D, dev)
    seen_h: list[list[torch.Tensor]] = [[] for _ in range(B)]
    seen_e: list[list[torch.Tensor]] = [[] for _ in range(B)]
    for rows in schedule:
        h = torch.randn(len(rows), D, generator=g).to(dev)
        e = (torch.rand(len(rows), generator=g) * 3).to(dev)
        untouched = [r for r in range(B) if r not in rows]
        before = state.acc[untouched].clone(), state.s[untouched].clone(), state.m[untouched].clone()
        online_pool_update(state, h, e, torch.tensor(rows, device=dev), impl=impl)
        after = state.acc[untouched], state.s[untouched], state.m[untouched]
        assert all(torch.equal(x, y) for x, y in zip(before, after))
        for k, r in enumerate(rows):
            seen_h[r].append(h[k].cpu())
            seen_e[r].append(e[k].cpu())
    lens = [len(x) for x in seen_h]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    ref = egtp_pool(torch.stack(sum(seen_h, [])), torch.stack(sum(seen_e, [])), cu, impl="torch")
    torch.testing.assert_close(state.pooled().cpu(), ref, atol=1e-5, rtol=1e-5)


def test_triton_state_equals_torch_state(device):
    hs, es = _stream(device)
    st_t, st_k = OnlinePoolState.init(B, D, device), OnlinePoolState.init(B, D, device)
    for n in range(STEPS):
        online_pool_update(st_t, hs[n], es[n], impl="torch")
        _online_pool_update_triton(st_k, hs[n], es[n], None, block_d=16)  # 3 d blocks, last one partial
    for name in ("m", "s", "acc"):
        torch.testing.assert_close(getattr(st_k, name), getattr(st_t, name), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_large_entropies_do_not_overflow(impl, device):
    dev = device if impl == "triton" else "cpu"
    state = OnlinePoolState.init(2, 4, dev)
    h = torch.eye(4, device=dev)
    online_pool_update(state, h[:2], torch.tensor([1e4, 0.0], device=dev), impl=impl)
    online_pool_update(state, h[2:], torch.tensor([0.0, 1e4], device=dev), impl=impl)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]], device=dev)
    assert torch.isfinite(state.pooled()).all()
    torch.testing.assert_close(state.pooled(), expected)


def test_fresh_rows_pool_to_zero_and_reset():
    state = OnlinePoolState.init(3, 5)
    assert torch.equal(state.pooled(), torch.zeros(3, 5))
    online_pool_update(state, torch.ones(3, 5), torch.zeros(3))
    assert torch.equal(state.pooled(), torch.ones(3, 5))
    state.reset(torch.tensor([1]))
    assert torch.equal(state.pooled()[1], torch.zeros(5)) and torch.equal(state.pooled()[0], torch.ones(5))
    assert state.m[1] == float("-inf") and state.batch_size == 3 and state.dim == 5
    state.reset()
    assert torch.equal(state.s, torch.zeros(3))


def test_empty_rows_update_is_a_no_op():
    state = OnlinePoolState.init(2, 4)
    online_pool_update(state, torch.empty(0, 4), torch.empty(0), torch.empty(0, dtype=torch.long))
    assert torch.equal(state.s, torch.zeros(2))


@pytest.mark.parametrize(
    "hidden,entropy,rows,exc,match",
    [
        (torch.randn(3, 5), torch.rand(3), None, ValueError, r"hidden_t must be \(3, 4\).*got \(3, 5\)"),
        (torch.randn(3, 4), torch.rand(2), None, ValueError, r"entropy_t must be \(3,\), got \(2,\)"),
        (torch.randn(4), torch.rand(3), None, ValueError, "hidden_t must have 2 dim"),
        (torch.randn(2, 4), torch.rand(2), torch.tensor([0, 3]), ValueError, r"in \[0, 3\), got range \[0, 3\]"),
        (torch.randn(2, 4), torch.rand(2), torch.tensor([1, 1]), ValueError, "rows must be distinct"),
        (torch.randn(2, 4), torch.rand(2), torch.tensor([0.0, 1.0]), TypeError, "rows must be an integer"),
        (torch.randn(3, 4), torch.rand(2), torch.tensor([0, 1]), ValueError, r"hidden_t must be \(2, 4\)"),
    ],
)
def test_validation(hidden, entropy, rows, exc, match):
    with pytest.raises(exc, match=match):
        online_pool_update(OnlinePoolState.init(3, 4), hidden, entropy, rows)


def test_validation_of_state():
    with pytest.raises(TypeError, match="state must be an OnlinePoolState"):
        online_pool_update((torch.zeros(2),), torch.randn(2, 4), torch.rand(2))
    bad = OnlinePoolState.init(2, 4)
    bad.s = bad.s.double()
    with pytest.raises(TypeError, match="state.s must be float32"):
        online_pool_update(bad, torch.randn(2, 4), torch.rand(2))
    with pytest.raises(ValueError, match="batch >= 0 and dim > 0"):
        OnlinePoolState.init(2, 0)
