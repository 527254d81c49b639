"""The Coordinator's step metrics report the cost model's floor of the step (in-process, tiny model)."""

import numpy as np
import pytest

from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.simulator import floor_s

PROMPTS = [[5 + i, 6, 7, 8 + i, 9, 10][: 3 + i] for i in range(3)]


def test_step_metrics_include_the_floor():
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False))
    result = coord.run_step(expand_prompts(PROMPTS, 2, SamplingParams(max_new_tokens=16), seed=1), "pool")
    m = result.metrics
    lengths = [s.num_output for s in result.samples]
    prompt_tokens = int(np.mean([len(p) for p in PROMPTS for _ in range(2)]))
    assert m["floor_s"] > 0
    assert m["floor_s"] == pytest.approx(floor_s(lengths, 2, 3, coord.cost, prompt_tokens))
    assert m["ratio_to_floor"] == pytest.approx(m["step_time_s"] / m["floor_s"])


def test_chunks_log_every_engine_step_for_the_live_fit():
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False))
    samples = expand_prompts(PROMPTS, 2, SamplingParams(max_new_tokens=16), seed=1)
    result = coord.run_step(samples, "pool")
    rows = [row for chunk in result.timeline.chunks for row in chunk.step_log]
    # every generated token comes from one engine step: a decode row, or the first token of a prefill
    assert sum(r[0] for r in rows) + len(samples) == sum(s.num_output for s in result.samples)
    assert sum(r[3] for r in rows) == sum(len(p) for p in PROMPTS) * 2  # every prompt prefilled once
    assert all(r[1] >= r[0] and r[2] >= 0 and r[4] >= 0 for r in rows)  # each decode row attends to >= 1 token
    assert all((r[2] > 0) == (r[0] > 0) and (r[4] > 0) == (r[3] > 0) for r in rows)
    for chunk in result.timeline.chunks:
        assert sum(r[2] + r[4] for r in chunk.step_log) <= chunk.busy_s


@pytest.mark.parametrize("fit", [True, False])
def test_the_cost_model_is_refitted_to_the_workers_own_steps(fit):
    config = RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False, fit_cost_model=fit)
    coord = Coordinator("tiny-llama", config)
    profile = coord.cost
    params = SamplingParams(max_new_tokens=48, ignore_stop=True)
    result = coord.run_step(expand_prompts(PROMPTS, 2, params, seed=1), "pool")
    rows = [row for chunk in result.timeline.chunks for row in chunk.step_log]
    assert sum(r[0] > 0 for r in rows) >= 64  # enough for the first refit
    if fit:
        assert coord.cost == CostModel.from_step_log(rows, name="live-fit")
        # the floor of the step is computed with the refitted model
        lengths = [s.num_output for s in result.samples]
        assert result.metrics["floor_s"] == pytest.approx(floor_s(lengths, 2, 3, coord.cost, 4))
    else:
        assert coord.cost == profile


def test_predictor_errors_stand_beside_their_baselines_at_the_same_t():
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False))
    params = SamplingParams(max_new_tokens=24, ignore_stop=True)
    coord.run_step(expand_prompts(PROMPTS, 2, params, seed=1), "length_aware")  # fits the head
    coord.wait_refit()
    m = coord.run_step(expand_prompts(PROMPTS, 2, params, seed=2), "length_aware").metrics  # predicts
    assert m["predictions"] > 0
    for model, baseline in (
        ("predictor_mae_admission", "constant_mae_admission"),
        ("predictor_mae_inflight", "survival_mae_inflight"),
    ):
        assert np.isfinite(m[model]) and np.isfinite(m[baseline]) and m[baseline] >= 0
    assert m["cost_step_base_s"] == coord.cost.step_base_s and m["cost_per_seq_s"] == coord.cost.per_seq_s
