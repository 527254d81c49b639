"""LengthAwareRollout under verl's v1 trainer (trainer.use_v1=true, trainer_mode=sync): config checks, and
what v1's own PPOTrainerSync reads back from a real TransferQueue after LengthAwareRollout generated a step.

The trainer object is verl's (dataloader, prompt submission, ReplayBuffer, rollout-correction bypass,
advantages, metrics, validation); what needs verl's FSDP actor workers (log-prob recomputation, the
actor update, the weight sync) does not run here.
"""

from __future__ import annotations

import time

import pytest
import torch
from tensordict import NonTensorData
from verl.utils import tensordict_utils as tu
from verl.utils.import_utils import load_class_from_fqn
from verl.utils.reward_score import gsm8k
from verl_setup import V1_GROUP_SIZE, V1_PROMPTS_PER_STEP, v1_runtime, v1_test_config, v1_trainer

from rollout_len.verl import RESULT_KEY, SEED_KEY
from rollout_len.verl.agent_loop import check_config
from rollout_len.verl.v1 import expand_prompts, weight_version

N, PROMPTS_PER_STEP = V1_GROUP_SIZE, V1_PROMPTS_PER_STEP


@pytest.fixture(scope="module")
def make_v1_config(model_dir, gsm8k_parquet):
    return lambda *extra: v1_test_config(model_dir, gsm8k_parquet, *extra)


def test_stock_v1_config_passes_the_checks(make_v1_config):
    config = make_v1_config()
    assert config.trainer.use_v1 is True and config.trainer.v1.trainer_mode == "sync"  # verl's defaults
    check_config(config, reward_loop_worker_handles=[])


@pytest.mark.parametrize("mode", ["colocate_async", "separate_async"])
def test_async_v1_modes_fail_naming_the_key(make_v1_config, mode):
    config = make_v1_config(f"trainer.v1.trainer_mode={mode}")
    manager_class = load_class_from_fqn(
        config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager"
    )
    with pytest.raises(ValueError, match=rf"trainer\.v1\.trainer_mode={mode}.*trainer\.v1\.trainer_mode=sync"):
        manager_class.create(config=config, llm_client=None, teacher_client=None, reward_loop_worker_handles=[])


def test_expand_prompts_repeats_each_prompt_into_keyed_sessions(make_v1_config):
    config = make_v1_config()
    rollout = config.actor_rollout_ref.rollout
    batch = tu.get_tensordict(
        {
            "uid": ["p-a", "p-b"],
            "raw_prompt": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
            "dummy_tensor": torch.tensor([[7], [8]]),
        }
    )
    tu.assign_non_tensor_data(batch, "global_steps", 4)
    tu.assign_non_tensor_data(batch, SEED_KEY, 11)
    rows, keys = expand_prompts(batch, rollout)
    assert keys == [f"p-{p}_{s}_0" for p in "ab" for s in range(N)]
    assert list(rows.non_tensor_batch["uid"]) == ["p-a"] * N + ["p-b"] * N
    assert list(rows.non_tensor_batch["session_id"]) == [0, 1, 2] * 2
    assert rows.non_tensor_batch["raw_prompt"][N] == [{"role": "user", "content": "b"}]
    assert rows.batch["dummy_tensor"][:, 0].tolist() == [7] * N + [8] * N
    assert rows.meta_info == {"global_steps": 4, SEED_KEY: 11, "validate": False}  # the DataProto path's meta_info

    batch["validate"] = NonTensorData(True)  # validation: val_kwargs.n (1) per prompt, greedy sampling
    rows, keys = expand_prompts(batch, rollout)
    assert keys == ["p-a_0_0", "p-b_0_0"] and rows.meta_info["validate"] is True

    batch = tu.get_tensordict({"uid": ["p-a", "p-b"], "__rollout_n__": [2, 1]})  # per-prompt n, as verl allows
    assert expand_prompts(batch, rollout)[1] == ["p-a_0_0", "p-a_1_0", "p-b_0_0"]
    with pytest.raises(ValueError, match="separates the parts of verl's keys"):
        expand_prompts(tu.get_tensordict({"uid": ["a_b"]}), rollout)
    agents = tu.get_tensordict({"uid": ["p-a", "p-b"], "agent_name": ["single_turn_agent", "tool_agent"]})
    with pytest.raises(ValueError, match=r"\['tool_agent'\].*single_turn_agent only"):
        expand_prompts(agents, rollout)


def test_weight_version_follows_the_sync_trainer():
    # after a checkpoint at step 3: update_weights(3), then training step 4 runs on them; validation at 3 too
    assert weight_version(4, validate=False) == 3 and weight_version(3, validate=True) == 3


# --- a real TransferQueue and verl's v1 trainer object -------------------------------------------------------


@pytest.fixture(scope="module")
def v1_session(make_v1_config):
    with v1_runtime(make_v1_config("algorithm.rollout_correction.bypass_mode=true")) as runtime:
        yield runtime


@pytest.fixture
def trainer(v1_session):
    trainer = v1_trainer(v1_session)
    trainer.global_steps = 1
    return trainer


def test_a_training_step_reaches_verl_v1_trainer(v1_session, trainer):
    tq = v1_session.tq
    response_length = v1_session.config.actor_rollout_ref.rollout.response_length
    trainer.prepare_step()  # verl: dataloader batch -> pending tags -> LengthAwareRollout.generate_sequences
    start = time.perf_counter()
    batch, eviction = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=PROMPTS_PER_STEP)
    assert time.perf_counter() - start < trainer.replay_buffer.poll_interval  # the groups were finished already
    assert eviction == {} and len(batch) == PROMPTS_PER_STEP * N

    uids = sorted({key.rsplit("_", 2)[0] for key in batch.keys})
    assert len(uids) == PROMPTS_PER_STEP
    assert sorted(batch.keys) == sorted(f"{uid}_{s}_0" for uid in uids for s in range(N))
    for tag in batch.tags:
        assert tag["status"] == "success" and tag["global_steps"] == 1
        assert tag["min_global_steps"] == tag["max_global_steps"] == 0  # step 1 runs on the weights synced at 0
        assert tag["seq_len"] == tag["prompt_len"] + tag["response_len"] and 1 <= tag["response_len"] <= response_length

    fields = [
        "prompts", "responses", "response_mask", "loss_mask", "input_ids", "position_ids", "rollout_log_probs",
        "rm_scores", "uid", "session_id", "global_steps", "num_turns", "extra_fields", "raw_prompt",
        "reward_model", "data_source", "metrics", "multi_modal_inputs",
    ]  # fmt: skip
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields)
    assert set(fields) <= set(data.keys())
    response_lengths = data["responses"].offsets().diff()
    assert response_lengths.tolist() == [tag["response_len"] for tag in batch.tags]
    assert data["prompts"].offsets().diff().tolist() == [tag["prompt_len"] for tag in batch.tags]
    tokenizer = trainer.tokenizer
    for row, key in enumerate(batch.keys):
        prompt, response = data["prompts"][row], data["responses"][row]
        assert torch.equal(data["input_ids"][row], torch.cat([prompt, response]))
        assert data["position_ids"][row].tolist() == list(range(len(prompt) + len(response)))
        assert data["response_mask"][row].tolist() == [1] * len(response)
        assert torch.equal(data["loss_mask"][row], data["response_mask"][row])
        log_probs = data["rollout_log_probs"][row]
        assert log_probs.dtype == torch.float32 and len(log_probs) == len(response) and (log_probs <= 0).all()
        uid, session, _ = key.rsplit("_", 2)
        assert data["uid"][row] == uid and data["session_id"][row] == int(session) and data["global_steps"][row] == 1
        assert data["num_turns"][row] == 2 and data["multi_modal_inputs"][row] == {}
        extra = data["extra_fields"][row]
        assert extra["min_global_steps"] == extra["max_global_steps"] == 0 and "reward_extra_info" in extra
        assert data["metrics"][row]["generate_sequences"] > 0
        # the reward is verl's GSM8K checker on this trajectory's own response, on its last token
        truth = data["reward_model"][row]["ground_truth"]
        expected = gsm8k.compute_score(tokenizer.decode(response.tolist(), skip_special_tokens=True), truth)
        assert data["rm_scores"][row].sum().item() == expected and not data["rm_scores"][row][:-1].any()
        assert tokenizer.decode(prompt.tolist()).count(data["raw_prompt"][row][0]["content"][:40]) == 1
    for uid in uids:  # a GRPO group: n different responses to one prompt
        rows = [row for row, key in enumerate(batch.keys) if key.startswith(uid)]
        assert len({tuple(data["responses"][row].tolist()) for row in rows}) > 1

    # verl's next stages on what was written: rollout-correction bypass (old_log_probs = rollout_log_probs),
    # GRPO advantages by uid, and the step's metrics, including off-policy staleness from the tags.
    metrics = {}
    trainer._compute_old_log_prob(batch, metrics)
    trainer._compute_advantage(batch, metrics)
    out = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages", "old_log_probs"])
    for row in range(len(batch)):
        assert torch.equal(out["old_log_probs"][row], data["rollout_log_probs"][row])
        advantage = out["advantages"][row]
        assert len(advantage) == response_lengths[row] and torch.isfinite(advantage).all()
    trainer._compute_metrics(batch, metrics, {"step": 1.0, "gen": 1.0}, global_steps=1, epoch=0)
    assert metrics["training/off_policy/trajectory_staleness/mean"] == 0
    assert metrics["training/off_policy/trajectory_spans/max"] == 1
    assert metrics["response_length/mean"] == pytest.approx(response_lengths.float().mean().item())
    assert metrics["training/num_turns/mean"] == 2

    step = v1_session.manager.last_v1_step
    assert step[RESULT_KEY]["policy"] == "length_aware" and step["timing"]["rollout_len/generate_s"] > 0
    tq.kv_clear(keys=batch.keys, partition_id="train")  # as verl's fit loop does after each step
    assert not any("_" in key for key in tq.kv_list("train").get("train", {}))


def test_verl_v1_validation_reads_the_greedy_rollouts(v1_session, trainer):
    metrics = trainer._validate()  # verl's own: val dataloader, TransferQueue "val" partition, ReplayBuffer
    core = {key: value for key, value in metrics.items() if key.startswith("val-core/")}  # e.g. .../acc/mean@1
    assert core and all(0.0 <= value <= 1.0 for value in core.values()), metrics
    assert metrics["val-aux/num_turns/mean"] == 2
    assert v1_session.manager.last_v1_step[RESULT_KEY]["seed"] > 0
    assert v1_session.tq.kv_list("val").get("val", {}) == {}  # verl cleared what it read


def test_a_failed_step_tags_its_prompts_failure_and_raises(v1_session, trainer):
    tq = v1_session.tq
    batch = trainer._next_train_batch()
    long_prompt = [{"role": "user", "content": "word " * 600}]  # over rollout.prompt_length (512 tokens)
    batch["raw_prompt"] = tu.get_tensordict({"raw_prompt": [long_prompt] * len(batch)})["raw_prompt"]
    uids = [str(uid) for uid in tu.get(batch, "uid")]
    tq.kv_batch_put(
        keys=uids, partition_id="train", tags=[{"is_prompt": True, "status": "pending", "global_steps": 1}] * 2
    )
    with pytest.raises(ValueError, match=r"prompt_length"):
        v1_session.manager.generate_sequences(batch)
    tags = tq.kv_list("train")["train"]
    assert [tags[uid]["status"] for uid in uids] == ["failure", "failure"]
    assert all(tags[uid]["is_prompt"] for uid in uids)  # merged into verl's tag, not replacing it
    tq.kv_clear(keys=uids, partition_id="train")


def test_v1_writes_what_the_dataproto_path_returns(v1_session, trainer):
    """Same rows, same seed: the trajectories in TransferQueue are the DataProto path's rows, un-padded."""
    tq, manager = v1_session.tq, v1_session.manager
    batch = trainer._next_train_batch()
    batch[SEED_KEY] = NonTensorData(11)
    rows, keys = expand_prompts(batch, v1_session.config.actor_rollout_ref.rollout)
    reference = manager.generate_sequences(rows)
    uids = [str(uid) for uid in tu.get(batch, "uid")]
    pending = {"is_prompt": True, "status": "pending", "global_steps": 1}
    tq.kv_batch_put(keys=uids, partition_id="train", tags=[pending] * len(uids))
    assert manager.generate_sequences(batch) is None
    assert manager.last_v1_step[RESULT_KEY]["seed"] == 11
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["responses", "rollout_log_probs"])
    lengths = reference.batch["response_mask"].sum(dim=1)
    for row, length in enumerate(lengths.tolist()):
        assert torch.equal(data["responses"][row], reference.batch["responses"][row, :length])
        assert torch.equal(data["rollout_log_probs"][row], reference.batch["rollout_log_probs"][row, :length])
    assert {tq.kv_list("train")["train"][uid]["status"] for uid in uids} == {"finished"}
    tq.kv_clear(keys=uids + keys, partition_id="train")
