"""LengthAwareRollout.generate_partial: stall-free steps in verl's batch format, tiny model on Ray."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from transformers import AutoTokenizer

from rollout_len.bench.lengths import task_prompts
from rollout_len.sched.partial import PartialConfig, PartialRun
from rollout_len.verl import LengthAwareRollout
from rollout_len.verl.gsm8k import records_batch, task_records


@pytest.fixture(scope="module")
def rollout(model_dir):
    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    r = LengthAwareRollout.start(
        str(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
        prompt_length=256,
        response_length=12,
        settings={"num_workers": 2, "slots_per_worker": 2, "every": 4},
    )
    yield r
    r.shutdown()
    ray.shutdown()


def batch(items, step):
    return records_batch(task_records(items, "rollout_len/arith"), 3, uid_prefix=f"step{step}-")


def test_rows_come_back_whole_with_their_own_fields_and_versions(rollout):
    items = task_prompts("arith", 8, seed=0)
    truth = {}  # uid -> the ground truth its rows were sent with
    run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=3))
    seen, cursor = [], 0
    for step in range(4):
        launch = run.groups_to_launch()
        new = batch(items[cursor : cursor + launch], step) if launch else None
        cursor += launch
        if new is not None:
            for uid, rm in zip(new.non_tensor_batch["uid"], new.non_tensor_batch["reward_model"]):
                truth[str(uid)] = rm["ground_truth"]
        out, run = rollout.generate_partial(new, run)
        uids = [str(u) for u in out.non_tensor_batch["uid"]]
        assert len(set(uids)) == 1 and len(uids) == 3, "one whole group of 3 rows (the quota)"
        assert [rm["ground_truth"] for rm in out.non_tensor_batch["reward_model"]] == [truth[u] for u in uids]
        assert out.batch["responses"].shape == (3, 12) and out.batch["rollout_log_probs"].shape == (3, 12)
        lo, hi = out.non_tensor_batch["min_global_steps"], out.non_tensor_batch["max_global_steps"]
        assert lo.dtype == np.int64 and (lo <= hi).all() and (hi <= step).all()
        assert out.meta_info["rollout_len"]["version"] == step
        assert out.meta_info["rollout_len"]["policy"] == "length_aware_partial"
        seen.append((uids[0], int(lo.min()), step))
    assert len({u for u, _, _ in seen}) == 4, "a group is returned once"
    assert any(lo < step for _, lo, step in seen), "no returned group carried tokens of an earlier step"
    assert run.version == 4


def test_a_uid_in_flight_cannot_come_again(rollout):
    items = task_prompts("arith", 4, seed=1)
    run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5))
    out, run = rollout.generate_partial(batch(items[:2], 0), run)
    carried = {t.group for t in run.carried}
    assert carried
    again = batch(items[:2], 0)  # the same uids as the first call
    keep = [i for i, u in enumerate(again.non_tensor_batch["uid"]) if str(u) in carried]
    with pytest.raises(ValueError, match="carried from the previous partial step"):
        rollout.generate_partial(again[keep], run)
    without_uid = batch(items[2:3], 1)
    without_uid.non_tensor_batch.pop("uid")
    with pytest.raises(ValueError, match="needs a 'uid' per row"):
        rollout.generate_partial(without_uid, run)
