"""LengthAwareRollout.generate_partial: stall-free steps in verl's batch format, on a LengthAwareRollout made
by verl's loader from verl's default trainer configuration (the v1 trainer, trainer.use_v1 left at true),
with verl's rollout correction on what it returns. No verl trainer path carries groups between steps
(docs/verl.md, *Trainer paths*); these are the pieces a trainer that did would use."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights
from verl.utils.import_utils import load_class_from_fqn
from verl_setup import compose_ppo_config, rlhf_batch, v1_overrides

from rollout_len.model import tiny_policy
from rollout_len.sched.partial import PartialConfig, PartialRun
from rollout_len.verl.actor import response_log_probs

N = 3
RESPONSE = 16


@pytest.fixture(scope="module")
def config(model_dir, gsm8k_parquet):
    return compose_ppo_config(
        v1_overrides()
        + [
            f"actor_rollout_ref.model.path={model_dir}",
            f"data.train_files={gsm8k_parquet}",
            f"data.val_files={gsm8k_parquet}",
            "data.max_prompt_length=512",
            f"data.max_response_length={RESPONSE}",
            f"actor_rollout_ref.rollout.n={N}",
            "+actor_rollout_ref.rollout.custom.rollout_len.num_workers=1",
            "+actor_rollout_ref.rollout.custom.rollout_len.slots_per_worker=2",
            "+actor_rollout_ref.rollout.custom.rollout_len.every=4",
            "+actor_rollout_ref.rollout.custom.rollout_len.use_ray=false",
        ]
    )


@pytest.fixture(scope="module")
def rollout(config):
    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    assert config.trainer.use_v1, "verl's default trainer"
    reward_workers = [ray.remote(RewardLoopWorker).remote(config)]
    manager = load_class_from_fqn(config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "").create(
        config=config, reward_loop_worker_handles=reward_workers
    )
    yield manager
    manager.shutdown()
    ray.shutdown()


def batch(config, prompts: list[int], step: int):
    """verl's RLHFDataset rows of some prompts, n rows each, with uids not used before."""
    rows, _ = rlhf_batch(config, N)
    keep = [r for r, uid in enumerate(rows.non_tensor_batch["uid"]) if int(str(uid).split("-")[1]) in prompts]
    out = rows[keep]
    out.non_tensor_batch["uid"] = np.array([f"s{step}-{u}" for u in out.non_tensor_batch["uid"]], dtype=object)
    return out


def test_rows_come_back_whole_with_their_own_fields_and_versions(rollout, config):
    truth = {}  # uid -> the ground truth its rows were sent with
    run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=3))
    seen, cursor = [], 0
    for step in range(4):
        launch = run.groups_to_launch()
        new = batch(config, list(range(cursor, cursor + launch)), step) if launch else None
        cursor += launch
        if new is not None:
            for uid, rm in zip(new.non_tensor_batch["uid"], new.non_tensor_batch["reward_model"]):
                truth[str(uid)] = rm["ground_truth"]
        out, run = rollout.generate_partial(new, run)
        uids = [str(u) for u in out.non_tensor_batch["uid"]]
        assert len(set(uids)) == 1 and len(uids) == N, "one whole group (the quota)"
        assert [rm["ground_truth"] for rm in out.non_tensor_batch["reward_model"]] == [truth[u] for u in uids]
        assert out.batch["responses"].shape == (N, RESPONSE) and out.batch["rollout_log_probs"].shape == (N, RESPONSE)
        lo, hi = out.non_tensor_batch["min_global_steps"], out.non_tensor_batch["max_global_steps"]
        assert lo.dtype == np.int64 and (lo <= hi).all() and (hi <= step).all()
        assert out.meta_info["rollout_len"]["version"] == step
        assert out.meta_info["rollout_len"]["policy"] == "length_aware_partial"
        scores = out.batch["rm_scores"].sum(dim=1)  # verl's GSM8K checker on each row's own response
        assert scores.shape == (N,) and set(scores.tolist()) <= {0.0, 1.0}
        seen.append((uids[0], int(lo.min()), step))
    assert len({u for u, _, _ in seen}) == 4, "a group is returned once"
    assert any(lo < step for _, lo, step in seen), "no returned group carried tokens of an earlier step"
    assert run.version == 4


def test_a_weight_update_reaches_carried_groups_and_verl_weights_their_old_tokens(rollout, config):
    """A group carried over a weight update: its rows decoded after the update carry the new policy's
    log-probs (verl's truncated IS weight 1), rows decoded before it the old policy's (weights != 1),
    and `min_global_steps` / `max_global_steps` say which is which."""
    run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=3))
    _, run = rollout.generate_partial(batch(config, [0, 1], 10), run)
    assert run.carried, "nothing carried"
    new_policy = tiny_policy("llama", seed=5)
    rollout.update_weights(new_policy.model.state_dict())
    try:
        out, run = rollout.generate_partial(None, run)  # the carried group only
        versions = list(zip(out.non_tensor_batch["min_global_steps"], out.non_tensor_batch["max_global_steps"]))
        assert set(versions) >= {(0, 0), (1, 1)}, f"the group should span the update: {versions}"
        mask = out.batch["response_mask"].bool()
        with torch.no_grad():
            current = response_log_probs(new_policy.model, out.batch, slice(0, len(out)), temperature=1.0)
        log_ratio = (current - out.batch["rollout_log_probs"]) * mask
        weights, metrics = compute_rollout_correction_weights(log_ratio, out.batch["response_mask"], "token", 2.0)
        for row, (low, high) in enumerate(versions):
            off = log_ratio[row][mask[row]].abs()
            if low == high == 1:
                assert off.max() < 1e-3 and torch.allclose(weights[row][mask[row]], torch.ones(int(mask[row].sum())))
            elif high == 0:
                assert off.max() > 1e-2, "tokens of the old weights differ from the new policy's"
        assert metrics["rollout_is_mean"] != 1.0
    finally:
        rollout.update_weights(tiny_policy("llama").model.state_dict())


def test_a_uid_in_flight_cannot_come_again(rollout, config):
    run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5))
    _, run = rollout.generate_partial(batch(config, [0, 1], 20), run)
    carried = {t.group for t in run.carried}
    assert carried
    again = batch(config, [0, 1], 20)  # the same uids as the first call
    keep = [i for i, u in enumerate(again.non_tensor_batch["uid"]) if str(u) in carried]
    with pytest.raises(ValueError, match="carried from the previous partial step"):
        rollout.generate_partial(again[keep], run)
    without_uid = batch(config, [2], 21)
    without_uid.non_tensor_batch.pop("uid")
    with pytest.raises(ValueError, match="needs a 'uid' per row"):
        rollout.generate_partial(without_uid, run)
