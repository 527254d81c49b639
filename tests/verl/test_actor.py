"""The single-process GRPO actor (rollout_len.verl.actor) on verl's policy loss, with the tiny policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny
from verl.trainer.ppo import core_algos

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import tiny_policy
from rollout_len.sample import Sample, SamplingParams
from rollout_len.verl.actor import GRPOActor, last_token_logits, response_log_probs, trainable_parameters
from rollout_len.verl.convert import to_data_proto

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
UIDS = ["a", "b", "a", "b"]  # groups that are not runs of rows


def rollout_batch():
    """Four rows sampled from the tiny policy, with rewards and GRPO advantages by uid."""
    params = SamplingParams(max_new_tokens=8, stop_ids=tuple(range(32, 96)))
    samples = [Sample(str(r), p, params, seed=3, group_id=u) for r, (p, u) in enumerate(zip(PROMPTS, UIDS))]
    DecodeEngine(tiny("llama"), EngineConfig(max_batch_size=4)).run(samples)
    data = to_data_proto(samples, 8, 8, pad_token_id=0)
    data.non_tensor_batch["uid"] = np.array(UIDS, dtype=object)
    scores = torch.zeros_like(data.batch["response_mask"], dtype=torch.float32)
    lengths = data.batch["response_mask"].sum(dim=1)
    scores[torch.arange(4), lengths - 1] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    data.batch["advantages"], _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=scores, response_mask=data.batch["response_mask"], index=data.non_tensor_batch["uid"]
    )
    return data


def test_trainable_parameters():
    model = tiny_policy("llama").model
    params = trainable_parameters(model, 1)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all(name.startswith(("model.layers.1.", "model.norm.")) for name in names)
    assert len(params) == len(names)
    assert len(trainable_parameters(model, 0)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="train_layers=3, but the model has 2 decoder layers"):
        trainable_parameters(model, 3)
    with pytest.raises(ValueError, match="train_layers must be >= 0"):
        trainable_parameters(model, -1)


def test_log_probs_are_the_samplers_and_the_update_keeps_row_order():
    data = rollout_batch()
    model = tiny_policy("llama").model  # a fresh copy: the update changes it
    for rows in (torch.tensor([0, 2]), torch.tensor([1, 3]), slice(0, 4)):
        mask = data.batch["response_mask"][rows].bool()
        log_probs = response_log_probs(model, data.batch, rows, temperature=1.0)
        assert log_probs.shape == data.batch["responses"][rows].shape
        torch.testing.assert_close(log_probs[mask], data.batch["rollout_log_probs"][rows][mask], atol=1e-4, rtol=0)
        assert not log_probs[~mask].any()

    before = last_token_logits(model, PROMPTS[0])
    actor = GRPOActor(model, train_layers=1, lr=1e-2)
    metrics = actor.update(data)
    assert set(metrics) == {
        "actor/pg_loss",
        "actor/pg_clipfrac",
        "actor/grad_norm",
        "actor/lr",
        "actor/param_update_norm",
    }
    assert metrics["actor/param_update_norm"] > 0 and metrics["actor/pg_clipfrac"] == 0.0  # ratio 1: nothing clipped
    mask = data.batch["response_mask"].bool()
    torch.testing.assert_close(
        data.batch["old_log_probs"][mask], data.batch["rollout_log_probs"][mask], atol=1e-4, rtol=0
    )
    assert (last_token_logits(model, PROMPTS[0]) - before).abs().max() > 0
    state = actor.state_dict()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GRPOActor(model, train_layers=1, lr=1e-2, temperature=0.0)


def test_a_partial_sync_of_the_trained_tensors_makes_a_worker_match_the_trainer():
    from rollout_len.rollout.worker import RolloutWorker

    model = tiny_policy("llama").model
    actor = GRPOActor(model, train_layers=1, lr=1e-2)
    trained = actor.trained_state_dict()
    assert trained and set(trained) < set(actor.state_dict())  # the frozen layers do not travel
    with torch.no_grad():
        for p in actor.params:
            p.add_(0.1 * torch.randn_like(p))
    worker = RolloutWorker(worker_id=0, model="tiny-llama", slots=2)
    prompt = [5, 6, 7, 8]
    assert not torch.allclose(worker.logits(prompt), last_token_logits(model, prompt), atol=1e-4)
    worker.load_weights(actor.trained_state_dict(), partial=True)
    assert torch.allclose(worker.logits(prompt), last_token_logits(model, prompt), atol=1e-5)


def test_the_rollout_correction_weights_stale_tokens_by_their_truncated_ratio():
    """Fresh rollout log-probs give weights 1 (the same update as without the correction); log-probs
    of an older policy that made the tokens less likely give weights clamped at the threshold."""
    fresh = GRPOActor(tiny_policy("llama").model, train_layers=1, lr=1e-2)
    corrected = GRPOActor(tiny_policy("llama").model, train_layers=1, lr=1e-2, rollout_is_threshold=2.0)
    plain, weighted = fresh.update(rollout_batch()), corrected.update(rollout_batch())
    assert weighted["rollout_corr/rollout_is_mean"] == pytest.approx(1.0, abs=1e-3)
    assert weighted["actor/param_update_norm"] == pytest.approx(plain["actor/param_update_norm"], rel=1e-3)

    stale = rollout_batch()
    stale.batch["rollout_log_probs"] = stale.batch["rollout_log_probs"] - 5.0  # pi_train / pi_rollout = e^5
    clamped = GRPOActor(tiny_policy("llama").model, train_layers=1, lr=1e-2, rollout_is_threshold=2.0).update(stale)
    assert clamped["rollout_corr/rollout_is_mean"] == pytest.approx(2.0, abs=1e-3)
    with pytest.raises(ValueError, match="rollout_is_threshold must be None or a number > 0"):
        GRPOActor(tiny_policy("llama").model, train_layers=1, lr=1e-2, rollout_is_threshold=0.0)
    without = rollout_batch()
    without.batch.pop("rollout_log_probs")
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        corrected.update(without)
