import numpy as np
import pytest
import torch

from rollout_len.predictor.train import FitConfig, OnlineTrainer, evaluate, fit_head, kendall_tau


def _data(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (150 + 60 * x[:, 0] + shift).clamp(5, 500)
    return x, y


def test_fit_beats_the_constant_median():
    x, y = _data(600)
    head = fit_head(x[:400], y[:400], x[400:500], y[400:500], FitConfig(epochs=100, dropout=0.0))
    pred = head.predict(x[500:])[0]
    assert evaluate(pred, y[500:])["mae"] < 0.6 * evaluate(torch.full((100,), float(y[:400].median())), y[500:])["mae"]


def test_metrics():
    m = evaluate(torch.tensor([0.0, 100.0, 260.0]), torch.tensor([10.0, 150.0, 100.0]))
    assert m["mae"] == pytest.approx((10 + 50 + 160) / 3)
    assert (m["acc50"], m["acc100"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    a, b = np.random.default_rng(0).normal(size=(2, 40))
    from itertools import combinations

    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in combinations(range(40), 2))
    assert kendall_tau(a, b) == pytest.approx(s / (40 * 39 / 2))


def test_online_refit_follows_a_drift():
    x, y = _data(600)
    head = fit_head(
        x[:400], y[:400], x[400:500], y[400:500], FitConfig(epochs=40, dropout=0.0, bins="log", max_length=800)
    )
    xs, ys = _data(800, shift=120.0, seed=1)  # the policy now writes 120 tokens more
    before = evaluate(head.predict(xs[600:])[0], ys[600:])["mae"]
    trainer = OnlineTrainer(head, buffer_size=300, steps=50)
    for start in range(0, 600, 100):
        trainer.add(xs[start : start + 100], ys[start : start + 100])
        trainer.refit()
    assert len(trainer) == 300
    after = evaluate(head.predict(xs[600:])[0], ys[600:])["mae"]
    assert after < 0.6 * before


def test_a_refit_costs_the_same_whatever_the_buffer_holds():
    """Each re-fit takes `steps` gradient steps on `batch_size` examples, whether the buffer holds 50
    examples or is full; the buffer is a ring of the newest examples."""
    x, y = _data(3000)
    head = fit_head(x[:400], y[:400], x[400:500], y[400:500], FitConfig(epochs=2, bins="log", max_length=800))
    trainer = OnlineTrainer(head, buffer_size=1000, steps=7, batch_size=16)
    seen: list[int] = []
    loss = head.loss
    head.loss = lambda features, lengths: seen.append(len(lengths)) or loss(features, lengths)
    per_refit = []
    for start in range(0, 3000, 250):
        trainer.add(x[start : start + 250], y[start : start + 250])
        seen.clear()
        assert trainer.refit() == 7 * 16
        per_refit.append(list(seen))
    assert per_refit == [[16] * 7] * 12
    assert len(trainer) == 1000
    kept = sorted(trainer._y.tolist())  # the ring holds the newest 1000 examples, each once
    assert kept == sorted(y[2000:].tolist())
    assert OnlineTrainer(head).refit() == 0  # an empty buffer: nothing to fit


def test_bad_training_input():
    x, y = _data(50)
    x_bad = x.clone()
    x_bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"train: features contain NaN/inf \(rows \[3\]\)"):
        fit_head(x_bad, y, x, y)
    with pytest.raises(ValueError, match="fewer than num_bins"):
        fit_head(x[:10], y[:10], x, y)
    with pytest.raises(ValueError, match="unknown bins"):
        fit_head(x, y, x, y, FitConfig(bins="linear"))
    with pytest.raises(ValueError, match="all equal"):
        fit_head(x, torch.full((50,), 7.0), x, y)


def _skewed(n, seed=0):
    """Lengths with a long right tail (lognormal, sigma 0.9) around a scale set by the first feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (60 * torch.exp(0.3 * x[:, 0] + 0.9 * torch.randn(n, generator=g))).clamp(1, 2000)
    return x, y


def test_the_median_point_beats_the_mean_on_skewed_lengths():
    """The median of the predicted distribution minimises the expected absolute error; on lengths with
    a long right tail the mean sits above it and loses MAE. Same data, same seed: only `point` differs."""
    x, y = _skewed(1400)
    maes = {}
    for point in ("median", "mean"):
        config = FitConfig(epochs=60, dropout=0.0, patience=10, point=point)
        head = fit_head(x[:800], y[:800], x[800:1000], y[800:1000], config)
        assert head.config.point == point
        maes[point] = evaluate(head.predict(x[1000:])[0], y[1000:])["mae"]
    assert maes["median"] < 0.92 * maes["mean"], maes


def test_fit_selects_the_epoch_on_its_own_point_prediction(monkeypatch):
    """The val MAE that picks the epoch is that of the head's point prediction (head.predict), so a
    "mean" fit and a "median" fit score val differently."""
    import rollout_len.predictor.train as train_module

    x, y = _skewed(600)
    scored_points = []
    predict = train_module.SoftLabelHead.predict

    def spy(head, features, quantiles=()):
        scored_points.append(head.config.point)
        return predict(head, features, quantiles)

    monkeypatch.setattr(train_module.SoftLabelHead, "predict", spy)
    for point in ("median", "mean"):
        scored_points.clear()
        fit_head(x[:400], y[:400], x[400:500], y[400:500], FitConfig(epochs=3, point=point))
        assert scored_points == [point] * 3


def test_a_projected_fit_learns_from_the_principal_directions():
    """project=r: the net reads the top-r principal components of the standardized features (but the
    last two); the length signal lives in the top one here, so a 2-component head still learns it."""
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(700, generator=g)
    x = torch.randn(700, 12, generator=g) * 0.3
    x[:, :10] += latent[:, None] * torch.linspace(0.5, 1.5, 10)  # one dominant direction over 10 features
    y = (200 + 60 * latent).clamp(5, 500)
    head = fit_head(x[:400], y[:400], x[400:500], y[400:500], FitConfig(epochs=60, dropout=0.0, project=2))
    assert head.config.project == 2 and head.projection.shape == (10, 2)
    assert head.net[0].in_features == 4  # 2 components + the 2 unprojected features
    constant = evaluate(torch.full((200,), float(y[:400].median())), y[500:])["mae"]
    assert evaluate(head.predict(x[500:])[0], y[500:])["mae"] < 0.4 * constant


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point="avg"), r"FitConfig.point must be one of \['median', 'mean'\], got 'avg'"),
        (dict(point=None), "FitConfig.point"),
        (dict(project=0), r"FitConfig.project must be None or an int >= 1 .*got 0"),
        (dict(project=2.5), "FitConfig.project"),
        (dict(project=True), "FitConfig.project"),
    ],
)
def test_bad_point_or_project_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FitConfig(**kwargs)


def test_a_projection_wider_than_the_features_is_refused():
    x, y = _data(60)  # 8 features: at most 6 projected
    with pytest.raises(ValueError, match="FitConfig.project=7 exceeds the 6 projected features"):
        fit_head(x, y, x, y, FitConfig(project=7))
