"""Coordinator with real workers on a tiny random-weight model: in-process and on Ray."""

import pytest
import torch

from rollout_len.model import load_policy
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig, StepFailed
from rollout_len.sample import Sample, SamplingParams, expand_prompts
from rollout_len.sched.policies import POLICIES, LengthAware, register_policy
from rollout_len.sched.view import Migration

PROMPTS = [[5 + i, 6, 7, 8 + i, 9] for i in range(4)]


def local(**kw):
    return Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=False, **kw))


def outputs(result):
    return [s.output_ids for s in result.samples]


def step(coord, prompts, n, params, policy="length_aware", seed=0, **kw):
    return coord.run_step(expand_prompts(prompts, n, params, seed=seed), policy, **kw)


def test_policies_generate_the_same_samples():
    coord = local()
    params = SamplingParams(max_new_tokens=24)
    fcfs = step(coord, PROMPTS, 3, params, "fcfs", seed=1)
    aware = step(coord, PROMPTS, 3, params, "length_aware", seed=1)
    assert [len(g) for g in fcfs.groups().values()] == [3] * 4
    assert all(s.status.is_finished and 1 <= s.num_output <= 24 for s in aware.samples)
    assert all(len(s.logprobs) == s.num_output for s in aware.samples)
    # per-sample RNG from (seed, id): the schedule does not change what a sample generates
    assert outputs(fcfs) == outputs(aware)
    assert coord.head is not None, "the PLP head is fit online after a length_aware step"
    again = step(coord, PROMPTS, 3, params, "length_aware", seed=2)
    assert again.metrics["predictions"] > 0 and again.metrics["predictor_mae"] >= 0


class MoveEverything(LengthAware):
    """Moves every running sample of worker 0 to worker 1 once: exercises export/import."""

    def migrate(self, m, w, now):
        moved = getattr(self, "_done", set())
        self._done = moved
        src, dst = m.alive_workers()[:2]
        orders = [
            Migration(s, 0, 1)
            for s in sorted(src.running)
            if s not in moved
            and m.samples[s].migrating_to is None
            and m.samples[s].tokens_done > 2
            and dst.committed < dst.slots
        ]
        moved.update(s for s, _, _ in orders[:1])
        return orders[:1]


@pytest.fixture
def move_everything():
    register_policy("test_move_everything")(MoveEverything)
    yield "test_move_everything"
    POLICIES.pop("test_move_everything")


@pytest.mark.parametrize("use_ray", [False, True], ids=["in-process", "ray"])
def test_migrated_samples_continue_exactly(use_ray, move_everything):
    """Tokens and log-probs of migrated samples equal an unmoved run's; `migrations` counts completed moves."""
    if use_ray:
        pytest.importorskip("ray")
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=use_ray))
    try:
        params = SamplingParams(max_new_tokens=20, ignore_stop=True)
        still = step(coord, PROMPTS[:2], 2, params, "fcfs", seed=3)
        moved = step(coord, PROMPTS[:2], 2, params, move_everything, seed=3)
    finally:
        coord.shutdown()
    # completed moves; an ordered move whose sample ends first is not carried out, so not counted
    assert 1 <= moved.metrics["migrations"] <= len(moved.timeline.migrations)
    assert outputs(moved) == outputs(still)
    for a, b in zip(moved.samples, still.samples):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_weight_updates_reach_the_workers():
    coord = local()
    trainer = load_policy("tiny-llama").model
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompt = PROMPTS[0]
    before = coord.worker_logits(prompt)
    coord.update_weights(trainer.state_dict())
    expected = trainer(torch.tensor([prompt])).logits[0, -1].float()
    for got, old in zip(coord.worker_logits(prompt), before):
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(old, expected, atol=1e-3)
    with pytest.raises(ValueError, match="do not match"):
        coord.update_weights({"nonsense.weight": torch.zeros(2)})


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"slots_per_worker": 0}, "slots_per_worker"),
        ({"every": 0}, "every"),
        ({"predictions": "psychic"}, "predictions"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(use_ray=False, **kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_workers": True}, r"num_workers must be an int >= 1, got True"),
        ({"gpus_per_worker": -1}, r"gpus_per_worker must be a number >= 0"),
        ({"dtype": "fp8"}, r"dtype must be one of"),
        ({"device": "tpu"}, r"device must be"),
        ({"cost_profile": "/no/such/profile.yaml"}, r"cost_profile='/no/such/profile.yaml'"),
        ({"use_ray": "yes"}, r"use_ray must be true or false"),
        ({"start_timeout_s": 0}, r"start_timeout_s must be"),
        ({"seed": 1.5}, r"seed must be an int"),
    ],
)
def test_config_is_checked_at_construction(kw, match):
    """Refused before any worker starts, naming the field (the issue's num_workers=True, gpus_per_worker=-1)."""
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kw)


def test_bad_step_arguments():
    coord = local()
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match="valid: .*fcfs"):
        step(coord, PROMPTS, 2, params, "random")
    with pytest.raises(ValueError, match="n "):
        step(coord, PROMPTS, 0, params)
    with pytest.raises(ValueError, match="oracle"):
        step(coord, PROMPTS, 2, params, "oracle")
    with pytest.raises(ValueError, match="at least one sample"):
        coord.run_step([], "fcfs")
    twice = [Sample("a", [5, 6], params), Sample("a", [7, 8], params)]
    with pytest.raises(ValueError, match="unique.*'a'"):
        coord.run_step(twice, "fcfs")
    with pytest.raises(TypeError, match="Sample"):
        coord.run_step([[5, 6, 7]], "fcfs")


def test_identity_comes_from_the_caller():
    """Rows keep their ids, groups and order; a group whose rows hold different prompts (verl's
    padded validation batches: uids [a, a, b, b], four prompts) generates each row's own prompt."""
    coord = local()
    params = SamplingParams(max_new_tokens=6, ignore_stop=True)
    rows = [Sample(f"row{r}", PROMPTS[r], params, seed=5, group_id=g) for r, g in enumerate("aabb")]
    result = coord.run_step(rows, "length_aware")
    assert [s.sample_id for s in result.samples] == ["row0", "row1", "row2", "row3"]
    assert result.samples[0] is rows[0] and rows[0].num_output == 6  # filled in, in place
    assert list(result.groups()) == ["a", "b"]
    alone = [coord.run_step([Sample(f"row{r}", PROMPTS[r], params, seed=5)], "fcfs").samples[0] for r in range(4)]
    assert [s.output_ids for s in result.samples] == [s.output_ids for s in alone]


STOPPING = SamplingParams(max_new_tokens=30, stop_ids=tuple(range(3, 60)))  # tiny model: stops after ~5 tokens


def test_a_killed_ray_actor_loses_no_samples():
    """Samples that stop on their own, a worker killed mid-step: every sample finishes with exactly
    the tokens and log-probs of an uninterrupted run (nothing lost, nothing duplicated)."""
    ray = pytest.importorskip("ray")
    uninterrupted = step(local(), PROMPTS, 2, STOPPING, "length_aware", seed=4)
    lengths = [s.num_output for s in uninterrupted.samples]
    assert len(set(lengths)) > 1 and max(lengths) < 30, lengths  # the samples stop on their own
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=2, every=2, use_ray=True))
    reports = {"n": 0}

    def kill_worker_0(c, worker_id, result):
        reports["n"] += 1
        if reports["n"] == 3:
            c.kill_worker(0)

    try:
        result = step(coord, PROMPTS, 2, STOPPING, "length_aware", seed=4, on_report=kill_worker_0)
        assert result.metrics["dead_workers"] == 1 and result.metrics["workers"] == 1
        assert outputs(result) == outputs(uninterrupted)
        for a, b in zip(result.samples, uninterrupted.samples):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
        assert len(coord.workers) == 1  # the next step runs on the survivor
        nxt = step(coord, PROMPTS[:1], 2, SamplingParams(max_new_tokens=5, ignore_stop=True), "fcfs")
        assert all(s.num_output == 5 for s in nxt.samples)
    finally:
        coord.shutdown()
        ray.shutdown()


def test_a_worker_dead_between_steps_is_dropped():
    """A worker that died between steps: the weight update and the next step carry on without it."""
    ray = pytest.importorskip("ray")
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=2, every=2, use_ray=True))
    try:
        step(coord, PROMPTS[:1], 2, STOPPING, "fcfs", seed=1)
        coord.kill_worker(0)
        coord.update_weights(load_policy("tiny-llama").model.state_dict())
        assert len(coord.workers) == 1 and coord.lost_workers == 1
        result = step(coord, PROMPTS, 2, STOPPING, "length_aware", seed=4)
        assert result.metrics["workers"] == 1
        assert outputs(result) == outputs(step(local(), PROMPTS, 2, STOPPING, "length_aware", seed=4))
        coord.kill_worker(0)
        with pytest.raises(StepFailed, match="every rollout worker is dead"):
            step(coord, PROMPTS, 1, STOPPING, "fcfs")
    finally:
        coord.shutdown()
        ray.shutdown()
