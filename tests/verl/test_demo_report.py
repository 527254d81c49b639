"""The GRPO demo's report helpers (rollout_len.verl.demo_report) on hand-made inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from verl import DataProto

from rollout_len.rollout.coordinator import RolloutConfig
from rollout_len.sched.timeline import Chunk, Timeline
from rollout_len.verl import RESULT_KEY
from rollout_len.verl.demo_report import SimReplay, comparison_metrics, slope_ci, timelines

METRICS = {
    "predictor_mae": 3.0,
    "predictor_mae_inflight": 2.5,
    "survival_mae_inflight": 4.0,
    "predictor_mae_admission": 6.0,
    "constant_mae_admission": 7.0,
    "padded_fraction": 0.1,
    "migrations": 2.0,
    "worker_idle_fraction": 0.2,
    "tokens_per_s": 50.0,
    "floor_s": 1.5,
    "ratio_to_floor": 2.0,
}


def test_timeline_survives_to_dict():
    timeline = Timeline(
        2, [Chunk(0, 0.0, 0.5, 0.4, 3.0), Chunk(1, 0.1, 0.7, 0.6, 2.5)], [(0.3, "7", 0, 1)], [(0.6, 1)], end_s=0.7
    )
    again = Timeline.from_dict(pickle.loads(pickle.dumps(timeline.to_dict())))
    assert again == timeline and again.idle_fraction() == timeline.idle_fraction()


def output(responses: list[list[int]], policy: str, idle: float) -> DataProto:
    tensor = torch.tensor(responses)
    out = DataProto(
        batch=TensorDict({"responses": tensor, "response_mask": torch.ones_like(tensor)}, batch_size=len(tensor))
    )
    timeline = Timeline(1, [Chunk(0, 0.0, 1.0, 1.0 - idle, 2.0)], end_s=1.0)
    out.meta_info[RESULT_KEY] = {
        "policy": policy,
        "seed": 0,
        "metrics": {**METRICS, "worker_idle_fraction": idle},
        "timeline": timeline.to_dict(),
    }
    return out


def test_comparison_metrics_of_two_rollouts():
    aware, fcfs = output([[1, 2], [3, 4]], "length_aware", 0.2), output([[1, 2], [3, 5]], "fcfs", 0.4)
    m = comparison_metrics(aware, fcfs, {"gen": 3.0, "gen_fcfs": 4.0, "step": 10.0})
    assert m["rollout_len/saving_vs_fcfs"] == pytest.approx(0.25)
    assert m["rollout_len/grpo_step_saving_vs_fcfs"] == pytest.approx(1 - 10 / 11)
    assert m["rollout_len/same_responses_fraction"] == 0.5
    assert m["rollout_len/worker_idle_fraction"] == 0.2 and m["rollout_len/fcfs_worker_idle_fraction"] == 0.4
    assert m["rollout_len/migrations"] == 2.0 and m["rollout_len/predictor_mae"] == 3.0
    assert m["rollout_len/predictor_mae_inflight"] == 2.5 and m["rollout_len/survival_mae_inflight"] == 4.0
    drawn = timelines(aware, fcfs)
    assert list(drawn) == ["length_aware", "fcfs"] and drawn["fcfs"].idle_fraction() == pytest.approx(0.4)


def test_sim_replay_of_a_long_tailed_step():
    """On a step with a long tail the oracle beats fcfs, nothing beats the floor, and the shares add up."""
    replay = SimReplay(RolloutConfig(num_workers=2, slots_per_worker=4, every=16, use_ray=False), max_new_tokens=256)
    rng = np.random.default_rng(0)
    groups = [[int(x) for x in np.clip(rng.lognormal(4, 0.9, size=8), 1, 256)] for _ in range(4)]
    first, second = replay.step(groups, prompt_tokens=30, seed=0), replay.step(groups, prompt_tokens=30, seed=1)
    for r in (first, second):
        sim = r["sim_s"]
        assert set(sim) == {"fcfs", "pool", "length_aware", "oracle"}
        assert min(sim.values()) >= r["sim_floor_s"] > 0
        assert r["oracle_saving"] == pytest.approx(1 - sim["oracle"] / sim["fcfs"]) and r["oracle_saving"] > 0
        assert r["sim_saving"] == pytest.approx(1 - sim["length_aware"] / sim["fcfs"])
        assert r["sim_oracle_gain_share"] == pytest.approx(r["sim_saving"] / r["oracle_saving"])
    assert first["sim_s"]["oracle"] == second["sim_s"]["oracle"]  # exact lengths: the seed does not matter


def test_slope_ci():
    slope, interval = slope_ci([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert slope == pytest.approx(2.0) and interval == pytest.approx([2.0, 2.0])
    rng = np.random.default_rng(1)
    x = list(range(12))
    slope, (low, high) = slope_ci(x, [0.5 * v + rng.normal() for v in x])
    assert low < slope < high and low < 0.5 < high
    assert slope_ci([3, 3], [0.0, 1.0]) == (None, None)  # one x: no slope
