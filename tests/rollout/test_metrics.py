"""The Coordinator's step metrics report the cost model's floor of the step (in-process, tiny model)."""

import numpy as np
import pytest

from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts
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
