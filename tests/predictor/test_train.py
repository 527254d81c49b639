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
