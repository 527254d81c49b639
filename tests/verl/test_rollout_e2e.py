"""LengthAwareRollout end to end as verl's trainer drives it: created by verl's loader with verl's reward
workers on Ray, a GSM8K batch from verl's RLHFDataset through generate_sequences, weights from
verl's weight-sync entry point."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
import ray
import torch
from helpers import tiny
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo import core_algos
from verl.utils.import_utils import load_class_from_fqn
from verl.utils.reward_score import gsm8k
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
from verl_setup import rlhf_batch

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import tiny_policy
from rollout_len.sched.policies import POLICIES
from rollout_len.verl import POLICY_KEY, RESULT_KEY, SEED_KEY
from rollout_len.verl.backend import WeightReceiver
from rollout_len.verl.convert import to_samples

N = 3
SETTINGS = [
    "+actor_rollout_ref.rollout.custom.rollout_len.policy=length_aware",
    "+actor_rollout_ref.rollout.custom.rollout_len.num_workers=1",
    "+actor_rollout_ref.rollout.custom.rollout_len.use_ray=false",
    "+actor_rollout_ref.rollout.custom.rollout_len.seed=100",
]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(*SETTINGS)


@pytest.fixture(scope="module")
def manager(ray_session, config):
    reward_workers = [ray.remote(RewardLoopWorker).remote(config)]
    manager_class = load_class_from_fqn(
        config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager"
    )
    created = manager_class.create(
        config=config, llm_client=None, teacher_client=None, reward_loop_worker_handles=reward_workers
    )
    yield created
    created.shutdown()


def responses(out) -> list[list[int]]:
    lengths = out.batch["response_mask"].sum(dim=1).tolist()
    return [out.batch["responses"][row, :length].tolist() for row, length in enumerate(lengths)]


def alone(samples) -> list[list[int]]:
    """What each sample generates run by itself in an engine with the tiny policy (the model in the config's
    folder): same prompt, sample id and seed, so the same random numbers."""
    outputs = []
    for sample in samples:
        DecodeEngine(tiny("llama"), EngineConfig(max_batch_size=1)).run([sample])
        outputs.append(sample.output_ids)
    return outputs


def test_generate_sequences_gives_verl_a_scored_grpo_batch(manager, config):
    batch, tokenizer = rlhf_batch(config, N)
    out = manager.generate_sequences(batch)
    rows, response_length = len(batch), config.actor_rollout_ref.rollout.response_length
    assert len(out) == rows
    assert out.batch["responses"].shape == (rows, response_length)
    lengths = out.batch["response_mask"].sum(dim=1)
    assert ((lengths >= 1) & (lengths <= response_length)).all()
    for row, response in enumerate(responses(out)):  # rewards are verl's GSM8K checker on the decoded responses
        truth = batch.non_tensor_batch["reward_model"][row]["ground_truth"]
        expected = gsm8k.compute_score(tokenizer.decode(response, skip_special_tokens=True), truth)
        assert out.batch["rm_scores"][row].sum().item() == expected
    for i in range(0, rows, N):  # n different samples per prompt
        group = {tuple(out.batch["responses"][row].tolist()) for row in range(i, i + N)}
        assert len(group) > 1
    timing = out.meta_info["timing"]
    assert all(key.startswith("rollout_len/") for key in timing)
    assert timing["rollout_len/generate_s"] > 0 and "rollout_len/step_time_s" in timing
    merged = batch.union(out)  # as verl's trainer does
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=merged.batch["rm_scores"],
        response_mask=merged.batch["response_mask"],
        index=merged.non_tensor_batch["uid"],
    )
    assert torch.isfinite(advantages).all() and not advantages[~merged.batch["response_mask"].bool()].any()


@pytest.mark.parametrize("validate", [True, False], ids=["greedy-validation", "sampled"])
def test_each_row_is_generated_from_its_own_prompt(manager, config, validate):
    """verl pads validation batches with copies of other rows: four different prompts whose uids are
    [a, a, b, b], n = 1. Every row gets a response to its own prompt, in row order."""
    batch, tokenizer = rlhf_batch(config, 1)
    assert len(batch) == 4 and len(set(map(str, batch.non_tensor_batch["raw_prompt"]))) == 4
    batch.non_tensor_batch["uid"] = np.array(["a", "a", "b", "b"], dtype=object)
    batch.meta_info.update({"validate": validate, SEED_KEY: 5})
    out = manager.generate_sequences(batch)

    builder = create_continuous_token_builder(tokenizer, hf_model_type="llama")
    expected = to_samples(batch, builder, config.actor_rollout_ref.rollout, seed=5)
    prompt_length = config.actor_rollout_ref.rollout.prompt_length
    for row, sample in enumerate(expected):  # its own prompt, in its own row
        prompt = out.batch["prompts"][row][out.batch["attention_mask"][row, :prompt_length].bool()].tolist()
        assert prompt == sample.prompt_ids
    reference = alone(expected)
    assert len({tuple(r) for r in reference}) == 4, "the check could not tell the prompts' responses apart"
    assert responses(out) == reference
    for row, response in enumerate(responses(out)):  # scored against the row's own ground truth
        truth = batch.non_tensor_batch["reward_model"][row]["ground_truth"]
        expected_score = gsm8k.compute_score(tokenizer.decode(response, skip_special_tokens=True), truth)
        assert out.batch["rm_scores"][row].sum().item() == expected_score


def test_meta_info_sets_seed_and_policy_and_returns_the_step(manager, config):
    batch, _ = rlhf_batch(config, N)

    def run(**meta):
        batch.meta_info = dict(meta)
        return manager.generate_sequences(batch)

    aware, fcfs, other = run(**{SEED_KEY: 11}), run(**{SEED_KEY: 11, POLICY_KEY: "fcfs"}), run(**{SEED_KEY: 12})
    assert responses(aware) == responses(fcfs)  # per-sample RNG: the schedule does not change the tokens
    assert responses(aware) != responses(other)
    assert torch.equal(aware.batch["rollout_log_probs"], fcfs.batch["rollout_log_probs"])

    step = aware.meta_info[RESULT_KEY]
    assert step["policy"] == "length_aware" and step["seed"] == 11
    assert fcfs.meta_info[RESULT_KEY]["policy"] == "fcfs" and other.meta_info[RESULT_KEY]["seed"] == 12
    lengths = aware.batch["response_mask"].sum(dim=1).float()
    assert step["metrics"]["step_time_s"] > 0 and step["metrics"]["response_length_mean"] == pytest.approx(
        lengths.mean().item()
    )
    assert all(isinstance(value, float) for value in step["metrics"].values())
    timeline = step["timeline"]
    assert timeline["num_workers"] == 1 and timeline["chunks"] and timeline["end_s"] > 0
    # plain data: travels with verl's batch (compared by repr: a metric without a value is NaN, and NaN != NaN)
    assert repr(pickle.loads(pickle.dumps(step))) == repr(step)

    # Without a seed: the Coordinator config's seed (100) plus the number of earlier calls, so calls differ.
    first, second = run(), run()
    seeds = [first.meta_info[RESULT_KEY]["seed"], second.meta_info[RESULT_KEY]["seed"]]
    assert seeds[1] == seeds[0] + 1 and seeds[0] > 100
    assert responses(first) != responses(second)

    with pytest.raises(ValueError, match=r"rollout_len_policy.*shortest_first_maybe.*valid.*fcfs"):
        run(**{POLICY_KEY: "shortest_first_maybe"})
    assert "fcfs" in POLICIES and "length_aware" in POLICIES
    with pytest.raises(TypeError, match="rollout_len_seed"):
        run(**{SEED_KEY: "11"})


def test_weights_from_verl_weight_sync_reach_the_rollout(manager, config):
    new_policy = tiny_policy("llama", seed=1)  # same names and shapes, other weights
    receiver = WeightReceiver(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, device_mesh=None)
    asyncio.run(receiver.update_weights(iter(new_policy.model.state_dict().items())))
    try:
        batch, tokenizer = rlhf_batch(config, 1)
        batch.meta_info["validate"] = True  # greedy (rollout.val_kwargs), so the outputs are comparable
        out = manager.generate_sequences(batch)
        builder = create_continuous_token_builder(tokenizer, hf_model_type="llama")
        greedy = {}
        for name, policy in (("new", new_policy), ("old", tiny("llama"))):
            reference = to_samples(batch, builder, config.actor_rollout_ref.rollout, seed=0)
            DecodeEngine(policy, EngineConfig(max_batch_size=len(reference))).run(reference)
            greedy[name] = [sample.output_ids for sample in reference]
        assert responses(out) == greedy["new"]
        assert responses(out) != greedy["old"]  # the check can tell the two apart

        prompt = [5, 6, 7, 8]
        (logits,) = manager.worker_logits(prompt)  # the documented weight-sync check: one worker here
        expected = new_policy.model(torch.tensor([prompt])).logits[0, -1].float()
        torch.testing.assert_close(logits, expected.detach(), rtol=0, atol=1e-5)
    finally:
        manager.update_weights(tiny("llama").model.state_dict())  # back to the folder's weights


def test_unknown_rollout_len_setting_names_the_key(ray_session, make_config):
    config = make_config(*SETTINGS, "+actor_rollout_ref.rollout.custom.rollout_len.no_such_setting=1")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.custom\.rollout_len"):
        load_class_from_fqn(config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "").create(
            config=config, reward_loop_worker_handles=[]
        )
