import pytest
import torch

from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead
from rollout_len.predictor.plp import PLPTracker, checkpoint_steps, is_checkpoint, plp_features
from rollout_len.predictor.pooling import pool

D = 6


def _tracker():
    torch.manual_seed(0)
    head = SoftLabelHead(HeadConfig(in_dim=2 * D + 2, dropout=0.0), LengthBins.log_spaced(512, 8))
    return PLPTracker(head, D)


def test_online_pool_equals_egtp_over_the_generated_tokens():
    tracker = _tracker()
    prompts = torch.randn(3, D)
    for i in range(3):
        tracker.start(f"s{i}", prompts[i], max_new_tokens=512)
    seen = {f"s{i}": ([], []) for i in range(3)}
    for step in range(12):
        ids = ["s0", "s1", "s2"] if step % 3 else ["s2", "s0"]  # rows arrive in any order, some skip
        hidden, entropy = torch.randn(len(ids), D), torch.rand(len(ids)) * 5
        tracker.update(ids + ["untracked"], torch.cat([hidden, torch.randn(1, D)]), torch.cat([entropy, torch.rand(1)]))
        for row, sid in enumerate(ids):
            seen[sid][0].append(hidden[row])
            seen[sid][1].append(entropy[row])
    mean, _ = tracker.predict(["s0", "s1", "s2"])
    for i in range(3):
        sid = f"s{i}"
        h, e = torch.stack(seen[sid][0]), torch.stack(seen[sid][1])
        assert tracker.tokens_done(sid) == len(e)
        z = plp_features(
            prompts[i][None], pool(h, e, "egtp")[None], torch.tensor([len(e)]), torch.tensor([512 - len(e)])
        )
        torch.testing.assert_close(mean[i], tracker.head.predict(z)[0][0], atol=1e-4, rtol=1e-4)


def test_export_and_resume_give_the_same_prediction():
    tracker, other = _tracker(), _tracker()
    other.head.load_state_dict(tracker.head.state_dict())
    tracker.start("a", torch.randn(D), max_new_tokens=512)
    for _ in range(5):
        tracker.update(["a"], torch.randn(1, D), torch.rand(1))
    before, _ = tracker.predict(["a"])
    state = tracker.export("a")
    other.start("a", state["prompt"], state["max_new_tokens"], state=state)
    torch.testing.assert_close(other.predict(["a"])[0], before)
    assert "a" not in tracker and other.tokens_done("a") == 5


def test_predictions_never_exceed_the_budget_left():
    tracker = _tracker()
    tracker.start("a", torch.randn(D), max_new_tokens=10)
    for _ in range(7):
        tracker.update(["a"], torch.randn(1, D), torch.rand(1))
    mean, q = tracker.predict(["a"], quantiles=(0.5, 0.99))
    assert mean.item() <= 3 and q.max().item() <= 3


def test_many_samples_grow_the_state():
    tracker = _tracker()
    for i in range(20):
        tracker.start(f"s{i}", torch.randn(D), max_new_tokens=64)
    tracker.drop("s3")
    tracker.start("s3", torch.randn(D), max_new_tokens=64)
    assert tracker.predict([f"s{i}" for i in range(20)])[0].shape == (20,)


def test_bad_input():
    tracker = _tracker()
    with pytest.raises(ValueError, match=r"needs 10"):
        PLPTracker(tracker.head, 4)
    with pytest.raises(ValueError, match=r"prompt_feature must be \(6,\)"):
        tracker.start("x", torch.zeros(5), max_new_tokens=8)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        tracker.start("x", torch.zeros(6), max_new_tokens=0)
    with pytest.raises(KeyError, match="not tracked"):
        tracker.predict(["nobody"])
    with pytest.raises(ValueError, match="k .* >= 1"):
        checkpoint_steps(10, 0)
    with pytest.raises(ValueError, match="k .* >= 1"):
        is_checkpoint(3, 0)


def test_checkpoints_are_at_t_0_k_2k():
    assert [t for t in range(20) if is_checkpoint(t, 8)] == [0, 8, 16]
    assert all(is_checkpoint(t, 1) for t in range(5))
    assert checkpoint_steps(10, 4) == [0, 4, 8]
    assert checkpoint_steps(8, 4) == [0, 4]  # t < length: a sample of 8 tokens has ended at t = 8
    assert checkpoint_steps(0, 4) == [0]


def test_tokens_done_counts_start_plus_updates():
    """t after `start(tokens_done=t0)` is t0 with an empty (zero) pool; each `update` adds one tap and 1 to t."""
    tracker = _tracker()
    tracker.start("a", torch.randn(D), max_new_tokens=64, tokens_done=1)
    tracker.start("b", torch.randn(D), max_new_tokens=64)
    assert tracker.tokens_done("a") == 1 and tracker.tokens_done("b") == 0
    torch.testing.assert_close(tracker.pooled(["a", "b"]), torch.zeros(2, D))
    taps = [], []
    for _ in range(3):
        hidden, entropy = torch.randn(1, D), torch.rand(1) * 3
        tracker.update(["a"], hidden, entropy)
        taps[0].append(hidden[0]), taps[1].append(entropy[0])
    assert tracker.tokens_done("a") == 4 and tracker.tokens_done("b") == 0
    torch.testing.assert_close(tracker.pooled(["a"])[0], pool(torch.stack(taps[0]), torch.stack(taps[1])))


def test_the_tracker_predicts_the_heads_point():
    """The live path's single predicted length is the head's point prediction: the median by default,
    the mean for a head configured (or saved before `point` existed) so."""
    tracker = _tracker()
    tracker.start("a", torch.randn(D), max_new_tokens=512)
    for _ in range(3):
        tracker.update(["a"], torch.randn(1, D), torch.rand(1))
    z, _ = tracker.features(["a"])
    point, q = tracker.predict(["a"], quantiles=(0.5,))
    assert tracker.head.config.point == "median"
    torch.testing.assert_close(point, q[:, 0])
    state = tracker.head.to_state()
    state["config"]["point"] = "mean"
    tracker.set_head(SoftLabelHead.from_state(state))
    with torch.no_grad():
        expected = tracker.head(z)[1]
    torch.testing.assert_close(tracker.predict(["a"])[0], expected)
    assert not torch.allclose(expected, point)
