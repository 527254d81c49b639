"""Shared pieces of the verl tests: the documented overrides, verl config composition, verl batches."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "verl.md"
RECIPE_DIR = REPO / "recipes" / "verl"


def documented_overrides() -> list[str]:
    """The override lines docs/verl.md tells users to add (the block after its marker comment)."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- verl-overrides.*?-->\s*```text\n(.*?)```", text, re.S)
    assert match, "docs/verl.md lost its marked block of verl overrides"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def v1_overrides() -> list[str]:
    """The documented overrides without `trainer.use_v1=false`: verl's default v1 trainer (sync mode)."""
    return [line for line in documented_overrides() if line.split("=", 1)[0] != "trainer.use_v1"]


V1_GROUP_SIZE = 3  # rollout.n of the v1 tests
V1_PROMPTS_PER_STEP = 2  # data.train_batch_size of the v1 tests


def v1_test_config(model_dir, parquet, *extra: str):
    """verl's stock ppo_trainer (use_v1 left at its default, true) + the documented rollout lines + a tiny GRPO
    setup on the tiny model (one in-process rollout worker, 12-token responses) + `extra` overrides."""
    setup = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={parquet}",
        f"data.val_files={parquet}",
        "data.max_prompt_length=512",
        "data.max_response_length=12",
        f"actor_rollout_ref.rollout.n={V1_GROUP_SIZE}",
        "algorithm.adv_estimator=grpo",
        f"data.train_batch_size={V1_PROMPTS_PER_STEP}",
        "data.dataloader_num_workers=0",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "+actor_rollout_ref.rollout.custom.rollout_len.num_workers=1",
        "+actor_rollout_ref.rollout.custom.rollout_len.use_ray=false",
        "+actor_rollout_ref.rollout.custom.rollout_len.seed=100",
    ]
    return compose_ppo_config(v1_overrides() + setup + list(extra))


@contextlib.contextmanager
def v1_runtime(config):
    """Ray, verl's TransferQueue (from the config's transfer_queue section), verl's reward worker, and
    LengthAwareRollout created by verl's loader, as TaskRunnerV1 does; yields them as a namespace
    (config, manager, reward_workers, tq) and shuts them down after."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.utils.import_utils import load_class_from_fqn

    OmegaConf.resolve(config)
    ray.shutdown()  # a Ray left by another module may have too few CPUs
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        tq.init(config.transfer_queue)
        reward_workers = [ray.remote(RewardLoopWorker).remote(config)]
        manager = load_class_from_fqn(
            config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager"
        ).create(config=config, llm_client=None, teacher_client=None, reward_loop_worker_handles=reward_workers)
        yield SimpleNamespace(config=config, manager=manager, reward_workers=reward_workers, tq=tq)
        manager.shutdown()
    finally:
        tq.close()
        ray.shutdown()


def v1_trainer(runtime):
    """verl's PPOTrainerSync (its dataloader and the sampler its config names) wired to the runtime's
    LengthAwareRollout and reward worker, as TaskRunnerV1 wires them; no actor workers."""
    from verl.trainer.ppo.v1 import PPOTrainerSync

    trainer = PPOTrainerSync(runtime.config)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer.agent_loop_manager = runtime.manager
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=runtime.reward_workers)
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)
    return trainer


def compose_ppo_config(overrides: list[str]):
    """verl's own `ppo_trainer` config, composed by Hydra from verl's config folder."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def rlhf_batch(config, repeat: int):
    """A generation batch as verl's trainer builds it: RLHFDataset rows, a uid each, repeated n times in a row."""
    from verl import DataProto
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    tokenizer = hf_tokenizer(config.actor_rollout_ref.model.path)
    dataset = RLHFDataset(data_files=config.data.train_files, tokenizer=tokenizer, config=config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    batch.non_tensor_batch["uid"] = np.array([f"uid-{i}" for i in range(len(batch))], dtype=object)
    return batch.repeat(repeat_times=repeat, interleave=True), tokenizer
