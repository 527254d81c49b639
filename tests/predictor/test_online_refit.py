"""The Coordinator's online re-fit runs in the background, and its head goes out at a fixed step
(`refit_lag`), whatever the timing; a re-fit that fails there fails the step that waits for it."""

import pytest

from rollout_len.predictor.train import OnlineTrainer
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig, StepFailed
from rollout_len.sample import SamplingParams, expand_prompts

PROMPTS = [[5 + i, 6, 7, 8 + i, 9] for i in range(3)]


def coordinator(**kw) -> Coordinator:
    return Coordinator("tiny-llama", RolloutConfig(num_workers=1, slots_per_worker=4, every=4, use_ray=False, **kw))


def step(coord: Coordinator, seed: int):
    return coord.run_step(expand_prompts(PROMPTS, 2, SamplingParams(max_new_tokens=12), seed=seed), "length_aware")


@pytest.mark.parametrize("lag", [0, 1])
def test_the_refit_head_goes_out_at_a_fixed_step(lag):
    """A head fit on step 0's samples predicts in step 1 (lag 0: that step waited for it) or step 2
    (lag 1: the re-fit ran during step 1); before it, nothing predicts."""
    coord = coordinator(refit_lag=lag)
    predicted = [step(coord, seed).metrics["predictions"] > 0 for seed in range(3)]
    assert predicted == [False, True, True] if lag == 0 else [False, False, True]
    coord.shutdown()


def test_wait_refit_sends_the_newest_head_with_the_next_step():
    coord = coordinator(refit_lag=1)
    step(coord, 0)
    coord.wait_refit()
    assert step(coord, 1).metrics["predictions"] > 0


def test_a_failed_background_refit_fails_the_next_step_before_it_starts(monkeypatch):
    coord = coordinator()
    monkeypatch.setattr(OnlineTrainer, "refit", lambda self: (_ for _ in ()).throw(RuntimeError("refit broke")))
    step(coord, 0)  # the re-fit starts after the step, in the background
    with pytest.raises(
        StepFailed, match="re-fit after the previous step failed: refit broke .*nothing of this step ran"
    ):
        step(coord, 1)
    assert coord.steps == 1 and coord._head_state is None  # the workers keep the previous head (none)
    monkeypatch.undo()
    assert step(coord, 2).metrics["predictions"] == 0  # the step runs; its re-fit works again
    coord.wait_refit()
    assert step(coord, 3).metrics["predictions"] > 0
