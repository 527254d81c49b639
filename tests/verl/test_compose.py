"""The documented config lines and the recipe, checked with verl's own config, loader, plugin loader and registries."""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.utils.import_utils import load_class_from_fqn
from verl.workers.config import RolloutConfig as VerlRolloutConfig
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import RolloutMode, get_rollout_replica_class
from verl_setup import RECIPE_DIR, documented_overrides

from rollout_len.rollout.coordinator import RolloutConfig as CoordinatorConfig
from rollout_len.sched.policies import POLICIES
from rollout_len.verl import LengthAwareRollout
from rollout_len.verl.agent_loop import check_config
from rollout_len.verl.backend import LengthAwareReplica, WeightReceiver

RECIPE = "grpo_qwen2_5_gsm8k"


def assert_overrides_hold(config, overrides: list[str]) -> None:
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        assert OmegaConf.select(config, key) == yaml.safe_load(value), override


def test_documented_lines_compose_and_verl_loads_the_class(make_config):
    config = make_config()
    assert_overrides_hold(config, documented_overrides())
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)  # verl's own schema for the section
    assert isinstance(rollout, VerlRolloutConfig) and rollout.name == "length_aware"
    fqn = config.actor_rollout_ref.rollout.agent.agent_loop_manager_class
    assert load_class_from_fqn(fqn, "AgentLoopManager") is LengthAwareRollout  # what verl's trainer calls
    check_config(config, reward_loop_worker_handles=[])


def test_verl_plugin_loader_registers_the_backend():
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="verl.plugins")}
    assert entry_points.get("rollout_len") == "rollout_len.verl.plugin"
    assert get_rollout_class("length_aware", "async") is WeightReceiver
    assert get_rollout_replica_class("length_aware") is LengthAwareReplica
    # In a fresh interpreter, `import verl` alone (its entry-point loader) must register it.
    code = (
        "import verl\n"
        "from verl.workers.rollout.base import get_rollout_class\n"
        "from verl.workers.rollout.replica import get_rollout_replica_class\n"
        "print(get_rollout_class('length_aware').__name__, get_rollout_replica_class('length_aware').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["WeightReceiver", "LengthAwareReplica"]


def test_recipe_composes_and_passes_verl_validation():
    with initialize_config_dir(config_dir=str(RECIPE_DIR), version_base=None):
        config = compose(RECIPE)
    assert_overrides_hold(config, documented_overrides())
    assert config.algorithm.adv_estimator == "grpo"
    assert config.actor_rollout_ref.model.path.startswith("Qwen/Qwen2.5")
    assert config.data.train_files.endswith("gsm8k/train.parquet")
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    check_config(config, reward_loop_worker_handles=[])
    settings = dict(config.actor_rollout_ref.rollout.custom.rollout_len)
    assert settings.pop("policy") in POLICIES
    assert CoordinatorConfig(**settings).device == "cuda"  # the Coordinator takes the recipe's settings

    header = (RECIPE_DIR / f"{RECIPE}.yaml").read_text().split("\n\n")[0]
    assert "bash recipes/verl/run_grpo_qwen2_5_gsm8k.sh" in header
    assert f"python -m verl.trainer.main_ppo --config-path=$PWD/recipes/verl --config-name={RECIPE}" in header
    script = (RECIPE_DIR / "run_grpo_qwen2_5_gsm8k.sh").read_text()
    assert f"--config-name={RECIPE}" in script and "-m verl.trainer.main_ppo" in script
    assert "-m rollout_len.verl.gsm8k" in script
    done = subprocess.run(["bash", "-n", str(RECIPE_DIR / "run_grpo_qwen2_5_gsm8k.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


BAD_CONFIGS = {  # id: (overrides, create() arguments, expected message)
    "v1-async": (
        ["trainer.use_v1=true", "trainer.v1.trainer_mode=colocate_async"],
        {},
        r"trainer\.v1\.trainer_mode=colocate_async",
    ),
    "vllm-backend": (["actor_rollout_ref.rollout.name=vllm"], {}, r"actor_rollout_ref\.rollout\.name=vllm"),
    "tensor-parallel": (
        ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"],
        {},
        r"actor_rollout_ref\.rollout\.tensor_model_parallel_size=2",
    ),
    "multi-turn": (
        ["actor_rollout_ref.rollout.multi_turn.enable=true"],
        {},
        r"actor_rollout_ref\.rollout\.multi_turn\.enable",
    ),
    "distillation": ([], {"teacher_client": {"teacher": object()}}, r"distillation\.enabled=false"),
    "no-reward": ([], {"reward_loop_worker_handles": None}, r"no reward function.*reward\.reward_model\.enable"),
    "reward-file": (
        ["reward.custom_reward_function.path=/nonexistent/reward.py"],
        {},
        r"reward\.custom_reward_function\.path",
    ),
    "policy": (
        ["+actor_rollout_ref.rollout.custom.rollout_len.policy=shortest_first_maybe"],
        {},
        r"actor_rollout_ref\.rollout\.custom\.rollout_len\.policy=shortest_first_maybe",
    ),
    "context": (
        ["data.max_response_length=4096"],
        {},
        r"data\.max_prompt_length \+ data\.max_response_length.*context of 2048",
    ),
}


@pytest.mark.parametrize("overrides,arguments,message", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_configs_fail_naming_the_key(make_config, overrides, arguments, message):
    config = make_config(*overrides)
    manager_class = load_class_from_fqn(
        config.actor_rollout_ref.rollout.agent.agent_loop_manager_class, "AgentLoopManager"
    )
    call = {"config": config, "llm_client": None, "teacher_client": None, "reward_loop_worker_handles": [], **arguments}
    with pytest.raises(ValueError, match=message):
        manager_class.create(**call)


def test_weight_receiver_refuses_adapters_and_partial_weights(make_config):
    config = make_config()
    receiver = WeightReceiver(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, device_mesh=None)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.model\.lora\.merge=true"):
        asyncio.run(receiver.update_weights(iter([]), peft_config={"r": 8}))
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.checkpoint_engine\.backend=naive"):
        asyncio.run(receiver.update_weights(iter([]), wire_format="delta_flush"))


def test_replica_launches_nothing_and_needs_the_hybrid_engine(make_config):
    config = make_config()
    replica = LengthAwareReplica(0, config.actor_rollout_ref.rollout, config.actor_rollout_ref.model, gpus_per_node=1)
    replica.rollout_mode = RolloutMode.HYBRID
    asyncio.run(replica.launch_servers())
    assert replica.servers == [] and replica.server_address == "length_aware-replica-0"
    asyncio.run(replica.sleep())  # what verl's checkpoint manager calls around each rollout
    asyncio.run(replica.wake_up())
    replica.rollout_mode = RolloutMode.STANDALONE
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.hybrid_engine=true"):
        asyncio.run(replica.launch_servers())
