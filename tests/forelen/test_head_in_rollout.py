"""The Coordinator starts from a head saved by `forelen train` (RolloutConfig.head_path) and keeps
re-fitting it online; a head that does not fit the rollout's model or tap layer is refused."""

import pytest
import torch

from rollout_len.forelen.train import load_head, train_head
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts

PROMPTS = [[5 + i, 6, 7, 8 + i, 9] for i in range(4)]


def config(head, **kw):
    return RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False, head_path=str(head), **kw)


@pytest.fixture(scope="module")
def head(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("head")
    train_head([str(synthetic)], out)
    return out


def test_the_coordinator_starts_from_the_saved_head(head):
    saved, _ = load_head(head)
    coord = Coordinator("tiny-llama", config(head))
    z = torch.randn(7, saved.config.in_dim, generator=torch.Generator().manual_seed(0))
    for worker in coord.workers:  # installed before the first step
        torch.testing.assert_close(worker.tracker.head.predict(z)[0], saved.predict(z)[0], rtol=0, atol=0)
    first = coord.run_step(expand_prompts(PROMPTS, 2, SamplingParams(max_new_tokens=12), seed=1), "length_aware")
    assert first.metrics["predictions"] > 0  # the first step is already predicted: by the saved head
    for worker in coord.workers:  # that step's head was the saved one
        torch.testing.assert_close(worker.tracker.head.predict(z)[0], saved.predict(z)[0], rtol=0, atol=0)
    coord.wait_refit()  # and it keeps re-fitting online, from the saved head (its bins, not new ones)
    assert coord.head.bins == saved.bins and first.metrics["refit_buffer"] > 0
    assert not torch.equal(coord.head.predict(z)[0], saved.predict(z)[0])
    coord.shutdown()


def test_a_head_that_does_not_fit_the_rollout_is_refused(head, make_synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"head reads layer 2 of 2 of tiny-llama, but RolloutConfig.tap_layer=1"):
        config(head, tap_layer=1)
    assert config(head, tap_layer=2).head_path == str(head)  # the same layer, counted from the front
    narrow = tmp_path / "narrow"
    train_head([str(make_synthetic(tmp_path / "d32", hidden_size=32))], narrow)
    with pytest.raises(ValueError, match=r"head_path=.*narrow.*takes 66-dim features; hidden size 64 needs 130"):
        Coordinator("tiny-llama", config(narrow))
    with pytest.raises(ValueError, match="head_path=.*card.json is missing"):
        config(tmp_path)


def test_verl_settings_pass_the_head_on_as_an_absolute_path(head, tmp_path, monkeypatch):
    """custom.rollout_len.head_path reaches the Coordinator's config, made absolute (its Ray actor may run
    elsewhere); a folder without a head is refused naming the verl key."""
    from rollout_len.verl.settings import SETTINGS_KEY, coordinator_config

    monkeypatch.chdir(head.parent)
    assert coordinator_config({"head_path": head.name}).head_path == str(head.resolve())
    with pytest.raises(ValueError, match=rf"^{SETTINGS_KEY}.head_path: .*card.json is missing"):
        coordinator_config({"head_path": str(tmp_path)})
