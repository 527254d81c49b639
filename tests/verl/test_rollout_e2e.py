"""LengthAwareRollout end to end as verl's trainer drives it: created by verl's loader with verl's reward
workers on Ray, a GSM8K batch from verl's RLHFDataset through generate_sequences, weights from
verl's weight-sync entry point."""

from __future__ import annotations

import asyncio

import pytest
import ray
import torch
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo import core_algos
from verl.utils.import_utils import load_class_from_fqn
from verl.utils.reward_score import gsm8k

from helpers import tiny
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import tiny_policy
from rollout_len.sample import Sample
from rollout_len.verl.backend import WeightReceiver
from rollout_len.verl.convert import rollout_request
from verl_setup import rlhf_batch

N = 3
SETTINGS = [
    "+actor_rollout_ref.rollout.custom.rollout_len.policy=length_aware",
    "+actor_rollout_ref.rollout.custom.rollout_len.num_workers=1",
    "+actor_rollout_ref.rollout.custom.rollout_len.use_ray=false",
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
    manager_class = load_class_from_fqn(config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager")
    created = manager_class.create(
        config=config, llm_client=None, teacher_client=None, reward_loop_worker_handles=reward_workers
    )
    yield created
    created.shutdown()


def test_generate_sequences_gives_verl_a_scored_grpo_batch(manager, config):
    batch, tokenizer = rlhf_batch(config, N)
    out = manager.generate_sequences(batch)
    rows, response_length = len(batch), config.actor_rollout_ref.rollout.response_length
    assert len(out) == rows
    assert out.batch["responses"].shape == (rows, response_length)
    lengths = out.batch["response_mask"].sum(dim=1)
    assert ((lengths >= 1) & (lengths <= response_length)).all()
    for row in range(rows):  # rewards are verl's GSM8K checker on the decoded responses
        response = out.batch["responses"][row, : int(lengths[row])].tolist()
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


def test_weights_from_verl_weight_sync_reach_the_rollout(manager, config):
    new_policy = tiny_policy("llama", seed=1)  # same names and shapes, other weights
    receiver = WeightReceiver(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, device_mesh=None)
    asyncio.run(receiver.update_weights(iter(new_policy.model.state_dict().items())))

    batch, _ = rlhf_batch(config, 1)
    batch.meta_info["validate"] = True  # greedy (rollout.val_kwargs), so the outputs are comparable
    out = manager.generate_sequences(batch)
    request = rollout_request(batch, manager.token_builder, config.actor_rollout_ref.rollout)
    lengths = out.batch["response_mask"].sum(dim=1)
    responses = [out.batch["responses"][row, : int(lengths[row])].tolist() for row in range(len(out))]
    greedy = {}
    for name, policy in (("new", new_policy), ("old", tiny("llama"))):
        reference = [Sample(f"r{i}", prompt, request.params) for i, prompt in enumerate(request.prompts)]
        DecodeEngine(policy, EngineConfig(max_batch_size=len(reference))).run(reference)
        greedy[name] = [sample.output_ids for sample in reference]
    assert responses == greedy["new"]
    assert responses != greedy["old"]  # the check can tell the two apart


def test_unknown_rollout_len_setting_names_the_key(ray_session, make_config):
    config = make_config(*SETTINGS, "+actor_rollout_ref.rollout.custom.rollout_len.no_such_setting=1")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.custom\.rollout_len"):
        load_class_from_fqn(config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "").create(
            config=config, reward_loop_worker_handles=[]
        )
