import pytest
import torch

from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead


def test_quantile_bins_hold_equal_mass_and_merge_repeats():
    lengths = torch.arange(1, 1001).float()
    bins = LengthBins.from_quantiles(lengths, num_bins=10)
    counts = torch.bincount(bins.index(lengths), minlength=10)
    assert bins.num_bins == 10 and counts.min() >= 99 and counts.max() <= 101
    capped = torch.cat([torch.arange(1, 61).float(), torch.full((40,), 384.0)])  # 40% at a cap
    assert LengthBins.from_quantiles(capped, num_bins=20).num_bins < 20


def test_soft_labels_decay_with_bin_distance():
    bins = LengthBins((0, 10, 20, 30, 40, 50))
    p = bins.soft_labels(torch.tensor([25.0]))[0]
    assert int(p.argmax()) == 2 and p.sum().item() == pytest.approx(1.0)
    assert p[1].item() == pytest.approx(p[2].item() / torch.e, rel=1e-5)
    assert p[0].item() == pytest.approx(p[2].item() / torch.e**2, rel=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(lengths=[5.0] * 50), "all equal"),
        (dict(lengths=[1.0, 2.0, 3.0]), "fewer than num_bins"),
        (dict(lengths=[1.0] * 30 + [float("nan")]), "finite"),
    ],
)
def test_degenerate_bins_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        LengthBins.from_quantiles(bad["lengths"], num_bins=20)


def test_head_learns_a_length_signal_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (200 + 80 * x[:, 0]).clamp(10, 400)  # the length is in one feature direction
    bins = LengthBins.from_quantiles(y, 20)
    head = SoftLabelHead(HeadConfig(in_dim=16, dropout=0.0), bins)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        head.loss(x, y).backward()
        opt.step()
    mean, q = head.predict(x, quantiles=(0.1, 0.5, 0.9))
    mae = (mean - y).abs().mean().item()
    assert mae < 0.4 * (y - y.median()).abs().mean().item()  # constant-median MAE ~61, head ~18
    assert torch.all(q[:, 0] <= q[:, 1]) and torch.all(q[:, 1] <= q[:, 2])
    head.save(tmp_path)
    loaded = SoftLabelHead.load(tmp_path, expect_in_dim=16)
    torch.testing.assert_close(loaded.predict(x)[0], mean)
    with pytest.raises(ValueError, match="trained on 16-dim features.*gives 576"):
        SoftLabelHead.load(tmp_path, expect_in_dim=576)


def test_bad_features_are_rejected():
    head = SoftLabelHead(HeadConfig(in_dim=4), LengthBins((0, 1, 2, 3)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        head.predict(torch.zeros(3, 5))
    x = torch.zeros(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf \(rows \[1\]\)"):
        head.predict(x)
    with pytest.raises(FileNotFoundError, match="head.json"):
        SoftLabelHead.load("/nonexistent-folder")
