import pytest
import torch
from safetensors.torch import load_file, save_file

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


def _head(point="median", project=None, in_dim=10, seed=0):
    torch.manual_seed(seed)
    head = SoftLabelHead(
        HeadConfig(in_dim=in_dim, dropout=0.0, point=point, project=project), LengthBins.log_spaced(400, 12)
    )
    x = torch.randn(200, in_dim, generator=torch.Generator().manual_seed(seed)) * torch.arange(1, in_dim + 1)
    head.set_standardization(x)
    return head.eval(), x


def test_the_point_is_the_median_or_the_mean_of_the_distribution():
    median_head, x = _head("median")
    state = median_head.to_state()
    state["config"]["point"] = "mean"  # the same weights, the other point
    mean_head = SoftLabelHead.from_state(state)
    point, q = median_head.predict(x, quantiles=(0.5, 0.9))
    torch.testing.assert_close(point, q[:, 0])
    with torch.no_grad():
        logp, expected = mean_head(x)
    torch.testing.assert_close(mean_head.predict(x)[0], expected)
    # the median by hand: the bin where the CDF crosses 0.5, interpolated linearly inside it
    probs, edges = logp.exp()[0].double(), torch.tensor(median_head.bins.edges, dtype=torch.float64)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), probs.cumsum(0)])
    j = int(torch.nonzero(cdf > 0.5)[0]) - 1
    by_hand = edges[j] + (0.5 - cdf[j]) / (cdf[j + 1] - cdf[j]) * (edges[j + 1] - edges[j])
    assert float(point[0]) == pytest.approx(float(by_hand), rel=1e-4)
    assert not torch.allclose(point, expected)


def test_a_projection_holds_the_top_principal_components():
    """set_standardization fits the projection: orthonormal columns, the leading eigenvectors of the
    standardized (projected part of the) training features, in order."""
    head, x = _head(project=3)
    p = head.projection
    assert p.shape == (8, 3) and head.net[0].in_features == 5
    torch.testing.assert_close(p.T @ p, torch.eye(3), atol=1e-5, rtol=0)
    z = ((x - x.mean(0)) / x.std(0))[:, :8].double()
    values, vectors = torch.linalg.eigh(z.T @ z)
    for k in range(3):  # the k-th largest eigenvector, up to its sign
        assert abs(float(vectors[:, -1 - k] @ p[:, k].double())) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"\(N, 10\)"):  # in_dim is still the features' size
        head.predict(torch.zeros(2, 5))


def test_point_and_projection_round_trip(tmp_path):
    head, x = _head("median", project=4)
    head.save(tmp_path)
    loaded = SoftLabelHead.load(tmp_path, expect_in_dim=10)
    assert loaded.config == head.config and loaded.config.point == "median" and loaded.config.project == 4
    torch.testing.assert_close(loaded.projection, head.projection, rtol=0, atol=0)
    torch.testing.assert_close(loaded.predict(x, (0.9,)), head.predict(x, (0.9,)), rtol=0, atol=0)
    rebuilt = SoftLabelHead.from_state(head.to_state())
    assert rebuilt.config == head.config
    torch.testing.assert_close(rebuilt.predict(x, (0.9,)), head.predict(x, (0.9,)), rtol=0, atol=0)


def test_a_head_saved_before_point_existed_still_predicts_the_mean(tmp_path):
    import json

    head, x = _head("mean")
    head.save(tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    for key in ("point", "project", "unprojected"):
        del meta["config"][key]
    meta["format"] = 1
    (tmp_path / "head.json").write_text(json.dumps(meta))
    tensors = load_file(str(tmp_path / "head.safetensors"))
    del tensors["calibration"]  # format 1 had no calibration: it loads as the identity map
    save_file(tensors, str(tmp_path / "head.safetensors"))
    old = SoftLabelHead.load(tmp_path)
    assert old.config.point == "mean" and old.config.project is None
    torch.testing.assert_close(old.predict(x)[0], old(x)[1])
    state = head.to_state()
    state["config"] = {k: v for k, v in state["config"].items() if k != "point"}
    assert SoftLabelHead.from_state(state).config.point == "mean"
    state["tensors"].pop("calibration")
    torch.testing.assert_close(SoftLabelHead.from_state(state).calibration, torch.linspace(0, 1, 101))
    assert HeadConfig(in_dim=4).point == "median"  # a new head takes the median


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point="mode"), r"HeadConfig.point must be one of \['median', 'mean'\], got 'mode'"),
        (dict(project=0), "HeadConfig.project must be None or an int >= 1"),
        (dict(project=9), r"HeadConfig.project=9 exceeds the 8 projected features"),
        (dict(project=2, unprojected=10), r"HeadConfig.unprojected must be in \[0, 10\)"),
    ],
)
def test_bad_head_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(in_dim=10, **kwargs)


def test_calibration_makes_held_out_quantiles_cover_their_level(tmp_path):
    """An untrained head's distribution says nothing about these lengths, so its raw q90 covers them
    at some arbitrary rate; recalibrated on one half, its q10/q50/q90 cover about 10/50/90% of the
    other half, and the map survives save/load."""
    head, x = _head("median")
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(len(x), generator=g) * 300 + 20).round()  # (N,) lengths the head never saw
    fit, held = slice(0, 100), slice(100, 200)
    levels = (0.1, 0.5, 0.9)

    def coverage(h):
        point, q = h.predict(x[held], quantiles=levels)
        torch.testing.assert_close(point, q[:, 1])  # the median point goes through the same map
        return [float((y[held] <= q[:, i]).float().mean()) for i in range(len(levels))]

    raw = coverage(head)
    head.calibrate(x[fit], y[fit])
    calibrated = coverage(head)
    assert max(abs(got - want) for got, want in zip(raw, levels)) > 0.3, raw  # the raw head is far off
    for got, want in zip(calibrated, levels):
        assert abs(got - want) <= 0.12, (calibrated, raw)
    assert torch.all(head.calibration[1:] >= head.calibration[:-1])
    head.save(tmp_path)
    torch.testing.assert_close(SoftLabelHead.load(tmp_path).predict(x)[1], head.predict(x)[1])
    with pytest.raises(ValueError, match=r"calibrate needs features \(N, d\) and lengths \(N,\)"):
        head.calibrate(x[:3], y[:2])


def test_a_saved_card_is_strict_json_with_undefined_scores_as_null(tmp_path):
    import json

    from rollout_len.predictor.head import load_card

    head = SoftLabelHead(HeadConfig(in_dim=4), LengthBins((0, 1, 2, 3)))
    head.save(tmp_path, card={"scores": {"kendall_tau": float("nan"), "mae": 12.5}})
    text = (tmp_path / "card.json").read_text()
    assert "NaN" not in text and json.loads(text)["scores"] == {"kendall_tau": None, "mae": 12.5}
    assert load_card(tmp_path)["scores"]["mae"] == 12.5
