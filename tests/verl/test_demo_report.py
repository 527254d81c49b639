"""The GRPO demo's report helpers (rollout_len.verl.demo_report) on hand-made inputs."""

from __future__ import annotations

import pickle

import pytest
import torch
from tensordict import TensorDict
from verl import DataProto

from rollout_len.sched.timeline import Chunk, Timeline
from rollout_len.verl import RESULT_KEY
from rollout_len.verl.demo_report import comparison_metrics, timelines

METRICS = {
    "predictor_mae": 3.0,
    "padded_fraction": 0.1,
    "migrations": 2.0,
    "worker_idle_fraction": 0.2,
    "tokens_per_s": 50.0,
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
    drawn = timelines(aware, fcfs)
    assert list(drawn) == ["length_aware", "fcfs"] and drawn["fcfs"].idle_fraction() == pytest.approx(0.4)
