"""Weights verl syncs before LengthAwareRollout exists (its v1 trainer does, in trainer.init()) are held
and loaded by create; a module of its own, so that no Coordinator runs when the test starts."""

from __future__ import annotations

import asyncio

import pytest
import ray
import torch
from verl.utils.import_utils import load_class_from_fqn

from rollout_len.model import tiny_policy
from rollout_len.verl.backend import PENDING_WEIGHTS_ACTOR_NAME, WeightReceiver

SETTINGS = [
    "+actor_rollout_ref.rollout.custom.rollout_len.num_workers=1",
    "+actor_rollout_ref.rollout.custom.rollout_len.use_ray=false",
]


@pytest.fixture(scope="module")
def ray_session():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_weights_synced_before_the_rollout_starts_are_loaded_by_create(ray_session, make_config):
    """verl's v1 trainer syncs weights in trainer.init(), before it creates the agent-loop manager:
    they are held and the Coordinator starts from them (a run resumed from a checkpoint)."""
    config = make_config(*SETTINGS)
    new_policy = tiny_policy("llama", seed=2)
    receiver = WeightReceiver(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, device_mesh=None)
    asyncio.run(receiver.update_weights(iter(new_policy.model.state_dict().items())))
    assert ray.get_actor(PENDING_WEIGHTS_ACTOR_NAME) is not None
    manager_class = load_class_from_fqn(config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "")
    created = manager_class.create(config=config, reward_loop_worker_handles=[])
    try:
        prompt = [5, 6, 7, 8]
        (logits,) = created.worker_logits(prompt)
        expected = new_policy.model(torch.tensor([prompt])).logits[0, -1].float()
        torch.testing.assert_close(logits, expected.detach(), rtol=0, atol=1e-5)
        with pytest.raises(ValueError):
            ray.get_actor(PENDING_WEIGHTS_ACTOR_NAME)  # taken: the holder is gone
    finally:
        created.shutdown()

    other = make_config(*SETTINGS, "~actor_rollout_ref.rollout.agent.agent_loop_manager_class")
    receiver = WeightReceiver(other.actor_rollout_ref.rollout, other.actor_rollout_ref.model, device_mesh=None)
    with pytest.raises(ValueError, match=r"agent_loop_manager_class=rollout_len\.verl\.LengthAwareRollout"):
        asyncio.run(receiver.update_weights(iter(new_policy.model.state_dict().items())))
