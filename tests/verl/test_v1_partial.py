"""Partial (stall-free) steps through verl's default trainer: the v1 PPOTrainerSync with rollout_len's
PartialReplayBuffer as its sampler (the lines of docs/verl.md, *Partial steps*), on a real TransferQueue.

verl's own trainer object submits each step's prompts (prepare_step), its sampler tops the partial run up
and samples whole groups, and verl's rollout-correction bypass, GRPO advantages and off-policy metrics run
on what LengthAwareRollout wrote; the FSDP actor workers (log-prob recomputation, update, weight sync) do not.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest
from verl_setup import DOCS, V1_GROUP_SIZE, V1_PROMPTS_PER_STEP, v1_runtime, v1_test_config, v1_trainer

from rollout_len.verl.agent_loop import check_config
from rollout_len.verl.v1 import PartialReplayBuffer

N, PROMPTS_PER_STEP = V1_GROUP_SIZE, V1_PROMPTS_PER_STEP


def partial_overrides() -> list[str]:
    """The lines docs/verl.md adds for partial steps (the block after its marker comment)."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- verl-partial-overrides.*?-->\s*```text\n(.*?)```", text, re.S)
    assert match, "docs/verl.md lost its marked block of partial-step overrides"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def make_partial_config(model_dir, gsm8k_parquet):
    bypass = "algorithm.rollout_correction.bypass_mode=true"  # no actor workers recompute log-probs here
    return lambda *extra: v1_test_config(model_dir, gsm8k_parquet, *partial_overrides(), bypass, *extra)


def test_the_documented_partial_lines_pass_the_checks(make_partial_config):
    config = make_partial_config()
    settings = check_config(config, reward_loop_worker_handles=[object()])
    assert settings.partial == {"over_sample_rate": 0.5, "max_staleness": 1}  # on_stale: PartialConfig's default


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.v1.sampler.custom_sampler.path=null", "trainer.v1.sampler.custom_sampler"),
        ("data.gen_batch_size=null", "data.gen_batch_size"),
        ("data.gen_batch_size=true", "data.gen_batch_size"),
        ("+trainer.v1.sync.parameter_sync_step=2", "trainer.v1.sync.parameter_sync_step"),
        ("trainer.use_v1=false", "actor_rollout_ref.rollout.over_sample_rate"),
        ("actor_rollout_ref.rollout.over_sample_rate=1.0", "actor_rollout_ref.rollout.over_sample_rate"),
        ("+actor_rollout_ref.rollout.custom.rollout_len.on_stale=ignore", "custom.rollout_len.on_stale"),
        ("algorithm.filter_groups.enable=true", "algorithm.filter_groups.enable"),
        ("trainer.v1.sampler.sync_refill_failed_groups=true", "trainer.v1.sampler.sync_refill_failed_groups"),
        ("actor_rollout_ref.rollout.calculate_log_probs=false", "actor_rollout_ref.rollout.calculate_log_probs"),
        ("actor_rollout_ref.rollout.custom.rollout_len.max_staleness=-1", "custom.rollout_len.max_staleness"),
    ],
)
def test_partial_settings_that_cannot_work_fail_naming_the_key(make_partial_config, override, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        check_config(make_partial_config(override), reward_loop_worker_handles=[object()])


def test_the_partial_sampler_without_partial_steps_fails(make_partial_config):
    config = make_partial_config("actor_rollout_ref.rollout.over_sample_rate=0", "~actor_rollout_ref.rollout.custom")
    with pytest.raises(ValueError, match=r"PartialReplayBuffer.*over_sample_rate is 0"):
        check_config(config, reward_loop_worker_handles=[object()])


def test_partial_steps_without_importance_weights_warn(make_partial_config, caplog):
    config = make_partial_config("algorithm.rollout_correction.rollout_is=null")
    with caplog.at_level(logging.WARNING, logger="rollout_len.verl.v1"):
        check_config(config, reward_loop_worker_handles=[object()])
    assert "without algorithm.rollout_correction.rollout_is" in caplog.text


def test_staleness_settings_without_partial_steps_fail(make_partial_config):
    config = make_partial_config("actor_rollout_ref.rollout.over_sample_rate=0")
    with pytest.raises(ValueError, match=r"custom\.rollout_len\.max_staleness=1: .*over_sample_rate > 0"):
        check_config(config, reward_loop_worker_handles=[object()])


@pytest.fixture(scope="module")
def v1_partial(make_partial_config):
    """LengthAwareRollout made by verl's loader and verl's PPOTrainerSync (its sampler built from the
    config), on Ray and a real TransferQueue, wired as TaskRunnerV1 wires them."""
    with v1_runtime(make_partial_config()) as runtime:
        runtime.trainer = v1_trainer(runtime)
        yield runtime


def test_verl_trains_on_whole_groups_carried_across_steps(v1_partial):
    tq, trainer, manager = v1_partial.tq, v1_partial.trainer, v1_partial.manager
    assert isinstance(trainer.replay_buffer, PartialReplayBuffer)  # verl built it from the config
    steps = manager.partial_steps
    in_flight = steps.run.config.in_flight
    assert in_flight == 2 * PROMPTS_PER_STEP  # over_sample_rate 0.5
    trained: set[str] = set()
    staleness_max = []
    for step in (1, 2, 3, 4):
        trainer.global_steps = step
        trainer.prepare_step()  # verl: train_batch_size prompts -> LengthAwareRollout.generate_sequences
        if step == 1:  # queued: the step holds twice as many groups, and the sampler submits the rest
            assert manager.last_v1_step is None and steps.groups_wanted() == PROMPTS_PER_STEP
        batch, eviction = trainer.replay_buffer.sample(
            global_steps=step, partition_id="train", batch_size=PROMPTS_PER_STEP
        )
        assert eviction == {} and steps.groups_wanted() == 0 and not steps.pending  # the step ran
        uids = {key.rsplit("_", 2)[0] for key in batch.keys}
        assert len(uids) == PROMPTS_PER_STEP and len(batch) == PROMPTS_PER_STEP * N  # whole groups only
        assert sorted(batch.keys) == sorted(f"{uid}_{s}_0" for uid in uids for s in range(N))
        assert not uids & trained, "a group was trained twice"
        trained |= uids
        for tag in batch.tags:
            assert tag["global_steps"] == step
            assert 0 <= tag["min_global_steps"] <= tag["max_global_steps"] <= step - 1  # weights synced up to step - 1
            assert step - 1 - tag["min_global_steps"] <= 1  # max_staleness 1
        data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["extra_fields", "rm_scores"])
        for extra, tag in zip(data["extra_fields"], batch.tags):
            assert (extra["min_global_steps"], extra["max_global_steps"]) == (
                tag["min_global_steps"],
                tag["max_global_steps"],
            )
        metrics = {}
        trainer._compute_old_log_prob(batch, metrics)  # verl's rollout-correction bypass
        trainer._compute_advantage(batch, metrics)  # GRPO by uid: needs whole groups
        trainer._compute_metrics(batch, metrics, {"step": 1.0, "gen": 1.0}, global_steps=step, epoch=0)
        staleness_max.append(metrics["training/off_policy/trajectory_staleness/max"])
        tq.kv_clear(keys=batch.keys, partition_id="train")  # verl's fit loop, after the step
        # the groups still in flight stay `running` in TransferQueue for a later step
        running = {uid for uid, tag in tq.kv_list("train").get("train", {}).items() if tag.get("status") == "running"}
        assert running == {t.group for t in steps.run.carried}
        assert len(running) == in_flight - PROMPTS_PER_STEP
    assert staleness_max[0] == 0 and max(staleness_max[1:]) >= 1, "no carried token was trained"
    assert manager.last_v1_step["rollout_len"]["policy"] == "length_aware_partial"


def test_validation_runs_synchronously_beside_the_partial_run(v1_partial):
    trainer, steps = v1_partial.trainer, v1_partial.manager.partial_steps
    carried = [t.sample.sample_id for t in steps.run.carried]
    metrics = trainer._validate()  # verl's own: val dataloader, TransferQueue "val" partition, greedy rollouts
    assert any(key.startswith("val-core/") for key in metrics)
    assert [t.sample.sample_id for t in steps.run.carried] == carried  # the run is left alone


def test_a_dropped_group_is_cleared_and_replaced_from_verl_dataloader(v1_partial):
    """on_stale=drop at bound 0: every carried group is dropped at the next step; its prompt leaves
    TransferQueue and the sampler submits as many fresh prompts in its place."""
    tq, trainer, steps = v1_partial.tq, v1_partial.trainer, v1_partial.manager.partial_steps
    carried = {t.group for t in steps.run.carried}
    assert carried, "the earlier steps left nothing in flight"
    steps.run = replace(steps.run, config=replace(steps.run.config, max_staleness=0, on_stale="drop"))
    step = trainer.global_steps = 5
    trainer.prepare_step()
    assert steps.groups_wanted() == len(carried)  # queued: the dropped groups' places are empty
    batch, _ = trainer.replay_buffer.sample(global_steps=step, partition_id="train", batch_size=PROMPTS_PER_STEP)
    assert steps.dropped == len(carried)
    assert len(batch) == PROMPTS_PER_STEP * N and not {key.rsplit("_", 2)[0] for key in batch.keys} & carried
    assert all(tag["min_global_steps"] == tag["max_global_steps"] == step - 1 for tag in batch.tags)
    assert not carried & set(tq.kv_list("train").get("train", {})), "a dropped prompt is still in TransferQueue"
    tq.kv_clear(keys=batch.keys, partition_id="train")
