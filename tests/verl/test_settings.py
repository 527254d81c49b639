"""verl's rollout settings table (rollout_len.verl.settings) against verl 0.9.1's own config dataclasses, and
what LengthAwareRollout.create does with the keys: refused ones raise naming the key, bad values are refused
before any Ray actor starts, honoured ones reach the Coordinator's settings."""

from __future__ import annotations

import logging
import re
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
from verl.workers.config import (
    AgentLoopConfig,
    CheckpointEngineConfig,
    MultiTurnConfig,
    PrometheusConfig,
    SamplingConfig,
    TraceConfig,
)
from verl.workers.config import RolloutConfig as VerlRolloutConfig
from verl_setup import DOCS, rlhf_batch

from rollout_len.rollout.coordinator import Coordinator
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE
from rollout_len.verl import LengthAwareRollout, agent_loop
from rollout_len.verl.agent_loop import check_config
from rollout_len.verl.backend import COORDINATOR_ACTOR_NAME
from rollout_len.verl.settings import (
    HONOURED,
    IRRELEVANT,
    REFUSED,
    SECTIONS,
    VERL_ROLLOUT_SETTINGS,
    markdown_table,
    resolve_settings,
)

# The sections whose fields the table classifies one by one, with verl's dataclass for each.
SECTION_CLASSES = {
    "val_kwargs": SamplingConfig,
    "multi_turn": MultiTurnConfig,
    "agent": AgentLoopConfig,
    "trace": TraceConfig,
    "prometheus": PrometheusConfig,
    "checkpoint_engine": CheckpointEngineConfig,
}
LISTS = (HONOURED, REFUSED, IRRELEVANT)
NO_REWARD_WORKERS = "reward.reward_model.enable=true"  # create() then takes reward_loop_worker_handles=None


def verl_keys() -> list[str]:
    """Every field of verl's rollout config, and of the sections above (their `_target_` is Hydra's class path,
    classified once at the top)."""
    keys = [field.name for field in fields(VerlRolloutConfig)]
    for section, cls in SECTION_CLASSES.items():
        keys += [f"{section}.{field.name}" for field in fields(cls) if field.name != "_target_"]
    return keys


def leaves(status: str) -> list[str]:
    return [key for key, setting in VERL_ROLLOUT_SETTINGS.items() if setting.status == status and key not in SECTIONS]


# ------------------------------------------------------------------------------------------- (a) the table


def test_every_verl_rollout_field_is_in_exactly_one_list():
    assert len(fields(VerlRolloutConfig)) == 68  # verl 0.9.1; a new verl fails the loop below on its new keys
    lists = {status: {key for key, s in VERL_ROLLOUT_SETTINGS.items() if s.status == status} for status in LISTS}
    for key in verl_keys():
        homes = [status for status, keys in lists.items() if key in keys]
        assert len(homes) == 1, f"actor_rollout_ref.rollout.{key} is in {homes or 'none'} of {LISTS}"
    assert set().union(*lists.values()) == set(VERL_ROLLOUT_SETTINGS)  # no status outside the three lists
    assert sorted(VERL_ROLLOUT_SETTINGS) == sorted(verl_keys())  # no stale key that verl no longer has


def test_each_row_has_a_reason_and_refused_rows_say_what_is_accepted():
    for key, setting in VERL_ROLLOUT_SETTINGS.items():
        assert setting.why and "\n" not in setting.why, key
        if setting.status == REFUSED and key not in SECTIONS:
            assert setting.accepted or setting.accepts is not None, key
            assert setting.accepted_text, key


def test_sections_are_verls_dataclasses_and_summarize_their_fields():
    verl_fields = {field.name: field for field in fields(VerlRolloutConfig)}
    assert set(SECTIONS) == set(SECTION_CLASSES)
    for section, cls in SECTION_CLASSES.items():
        assert verl_fields[section].default_factory is cls
        statuses = {VERL_ROLLOUT_SETTINGS[key].status for key in VERL_ROLLOUT_SETTINGS if key.startswith(section + ".")}
        summary = HONOURED if HONOURED in statuses else REFUSED if REFUSED in statuses else IRRELEVANT
        assert VERL_ROLLOUT_SETTINGS[section].status == summary, section


def test_verl_defaults_are_accepted_except_the_documented_lines():
    """verl's own dataclass defaults pass every refused row, except the two keys the documented lines set."""
    documented = {"name": "length_aware", "tensor_model_parallel_size": 1}
    for key in leaves(REFUSED):
        section, _, name = key.rpartition(".")
        cls = SECTION_CLASSES[section] if section else VerlRolloutConfig
        field = next(f for f in fields(cls) if f.name == name)
        default = field.default_factory() if field.default is MISSING else field.default
        if key in documented:
            assert not VERL_ROLLOUT_SETTINGS[key].allows(default)
            assert VERL_ROLLOUT_SETTINGS[key].allows(documented[key])
            continue
        if hasattr(default, "__dataclass_fields__"):
            default = {f.name: getattr(default, f.name) for f in fields(default)}
        assert VERL_ROLLOUT_SETTINGS[key].allows(default), f"verl's default {key}={default!r} is refused"


def test_documented_config_has_no_unclassified_key(make_config, caplog):
    with caplog.at_level(logging.WARNING, logger="rollout_len.verl.settings"):
        resolve_settings(make_config().actor_rollout_ref.rollout)
    assert "not in rollout_len's table" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="rollout_len.verl.settings"):
        resolve_settings(make_config("+actor_rollout_ref.rollout.brand_new_key=1").actor_rollout_ref.rollout)
    assert "actor_rollout_ref.rollout.brand_new_key is not in rollout_len's table" in caplog.text


def test_docs_carry_the_table():
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- verl-settings-table.*?-->\n(.*?)<!-- /verl-settings-table -->", text, re.S)
    assert match, "docs/verl.md lost its marked settings table"
    assert match.group(1).strip() == markdown_table().strip(), "regenerate it: print(markdown_table())"


# ------------------------------------------------------------------------------- (b) refused keys, one by one

BAD_VALUES = {  # refused key: an override that sets it to a value LengthAwareRollout does not accept
    "name": "actor_rollout_ref.rollout.name=vllm",
    "repetition_penalty": "+actor_rollout_ref.rollout.repetition_penalty=1.1",
    "full_determinism": "actor_rollout_ref.rollout.full_determinism=true",
    "logprobs_mode": "actor_rollout_ref.rollout.logprobs_mode=raw_logprobs",
    "gpu_memory_utilization": "actor_rollout_ref.rollout.gpu_memory_utilization=0.8",
    "data_parallel_size": "actor_rollout_ref.rollout.data_parallel_size=2",
    "expert_parallel_size": "actor_rollout_ref.rollout.expert_parallel_size=2",
    "tensor_model_parallel_size": "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "pipeline_model_parallel_size": "actor_rollout_ref.rollout.pipeline_model_parallel_size=2",
    "moe_tensor_parallel_size": "+actor_rollout_ref.rollout.moe_tensor_parallel_size=2",
    "max_num_batched_tokens": "actor_rollout_ref.rollout.max_num_batched_tokens=4096",
    "scheduling_policy": "actor_rollout_ref.rollout.scheduling_policy=priority",
    "engine_kwargs": "+actor_rollout_ref.rollout.engine_kwargs.vllm.swap_space=4",
    "checkpoint_manager_class": "+actor_rollout_ref.rollout.checkpoint_manager_class=my.Manager",
    "quantization": "actor_rollout_ref.rollout.quantization=fp8",
    "quantization_config_file": "actor_rollout_ref.rollout.quantization_config_file=/tmp/torchao.json",
    "enable_rollout_routing_replay": "actor_rollout_ref.rollout.enable_rollout_routing_replay=true",
    "qat": "actor_rollout_ref.actor.fsdp_config.qat.enable=true",  # the rollout's qat follows the actor's
    "router_config_path": "actor_rollout_ref.rollout.router_config_path=router.yaml",
    "multi_turn.enable": "actor_rollout_ref.rollout.multi_turn.enable=true",
    "multi_turn.tool_config_path": "actor_rollout_ref.rollout.multi_turn.tool_config_path=tools.yaml",
    "multi_turn.function_tool_path": "actor_rollout_ref.rollout.multi_turn.function_tool_path=tools.py",
    "agent.default_agent_loop": "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
    "agent.agent_loop_config_path": "actor_rollout_ref.rollout.agent.agent_loop_config_path=loops.yaml",
    "agent.custom_async_server": "actor_rollout_ref.rollout.agent.custom_async_server.path=server.py",
    "trace.backend": "actor_rollout_ref.rollout.trace.backend=mlflow",
    "prometheus.enable": "actor_rollout_ref.rollout.prometheus.enable=true",
    "checkpoint_engine.backend": "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
}


def test_every_refused_key_has_a_bad_value_below():
    assert sorted(BAD_VALUES) == sorted(leaves(REFUSED))


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_refused_key_off_its_accepted_value_fails_naming_it(make_config, key):
    config = make_config(BAD_VALUES[key])
    with pytest.raises(ValueError, match=re.escape(f"actor_rollout_ref.rollout.{key}")):
        check_config(config, reward_loop_worker_handles=[])


# ---------------------------------------------------------------- (c) bad values refused before any Ray actor

CUSTOM = "+actor_rollout_ref.rollout.custom.rollout_len"
BAD_INPUTS = {  # id: (overrides, the key the error names)
    "top_p=0": (["actor_rollout_ref.rollout.top_p=0"], "actor_rollout_ref.rollout.top_p"),
    "response_length=0": (["data.max_response_length=0"], "actor_rollout_ref.rollout.response_length"),
    "temperature<0": (["actor_rollout_ref.rollout.temperature=-0.5"], "actor_rollout_ref.rollout.temperature"),
    "top_k<-1": (["actor_rollout_ref.rollout.top_k=-2"], "actor_rollout_ref.rollout.top_k"),
    "val top_p>1": (["actor_rollout_ref.rollout.val_kwargs.top_p=1.5"], "actor_rollout_ref.rollout.val_kwargs.top_p"),
    "val sampling without do_sample": (
        ["actor_rollout_ref.rollout.val_kwargs.temperature=0.6"],
        "actor_rollout_ref.rollout.val_kwargs.do_sample",
    ),
    "greedy training with a temperature": (
        ["actor_rollout_ref.rollout.do_sample=false"],
        "actor_rollout_ref.rollout.do_sample",
    ),
    "prompt_length=0": (["data.max_prompt_length=0"], "actor_rollout_ref.rollout.prompt_length"),
    "max_model_len": (["actor_rollout_ref.rollout.max_model_len=256"], "actor_rollout_ref.rollout.max_model_len"),
    "verl dtype": (["actor_rollout_ref.rollout.dtype=fp8"], "actor_rollout_ref.rollout.dtype"),
    "custom dtype": ([f"{CUSTOM}.dtype=float64"], "actor_rollout_ref.rollout.custom.rollout_len.dtype"),
    "dtypes disagree": (
        ["actor_rollout_ref.rollout.dtype=float16", f"{CUSTOM}.dtype=float32"],
        "actor_rollout_ref.rollout.dtype=float16 and actor_rollout_ref.rollout.custom.rollout_len.dtype=float32",
    ),
    "missing cost profile": (
        [f"{CUSTOM}.cost_profile=/nonexistent/profile.yaml"],
        "actor_rollout_ref.rollout.custom.rollout_len.cost_profile",
    ),
    "gpus_per_worker=-1": (
        [f"{CUSTOM}.gpus_per_worker=-1"],
        "actor_rollout_ref.rollout.custom.rollout_len.gpus_per_worker",
    ),
    "num_workers=True": ([f"{CUSTOM}.num_workers=true"], "actor_rollout_ref.rollout.custom.rollout_len.num_workers"),
    "predictions": ([f"{CUSTOM}.predictions=psychic"], "actor_rollout_ref.rollout.custom.rollout_len.predictions"),
    "unknown setting": (
        [f"{CUSTOM}.no_such_setting=1"],
        "actor_rollout_ref.rollout.custom.rollout_len.no_such_setting",
    ),
    "policy": ([f"{CUSTOM}.policy=shortest_first_maybe"], "actor_rollout_ref.rollout.custom.rollout_len.policy"),
    "slots disagree": (
        ["actor_rollout_ref.rollout.max_num_seqs=16", f"{CUSTOM}.slots_per_worker=4"],
        "actor_rollout_ref.rollout.max_num_seqs=16 and actor_rollout_ref.rollout.custom.rollout_len.slots_per_worker",
    ),
    "seed type": (["actor_rollout_ref.rollout.seed=abc"], "actor_rollout_ref.rollout.seed"),
}


@pytest.fixture
def no_actor(monkeypatch):
    """Fails the test if create() gets as far as starting the Coordinator's Ray actor."""

    def start(model, config):
        raise AssertionError(f"the Coordinator's Ray actor was started for {model} with {config}")

    monkeypatch.setattr(agent_loop, "_start_coordinator", start)


@pytest.mark.parametrize("overrides,key", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_create_refuses_bad_values_before_any_ray_actor(make_config, no_actor, overrides, key):
    ray_was_up = ray.is_initialized()
    with pytest.raises(ValueError, match=re.escape(key)):
        LengthAwareRollout.create(config=make_config(*overrides), reward_loop_worker_handles=[])
    assert ray.is_initialized() == ray_was_up  # create did not even start Ray
    if ray_was_up:
        with pytest.raises(ValueError):
            ray.get_actor(COORDINATOR_ACTOR_NAME)


def test_a_malformed_cost_profile_is_refused_at_create(make_config, no_actor, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("name: broken\nstep_base_s: [1, 2\n")
    config = make_config(f"{CUSTOM}.cost_profile={profile}")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.custom\.rollout_len\.cost_profile"):
        LengthAwareRollout.create(config=config, reward_loop_worker_handles=[])


# ------------------------------------------------------------------- (d) honoured keys reach the Coordinator


@pytest.fixture
def started(monkeypatch, make_config):
    """`started(*overrides)`: create() with the Coordinator's actor replaced by a record of what it would have
    started with; returns (the records, the manager)."""

    def create(*overrides):
        calls = []

        def start(model, config):
            calls.append(SimpleNamespace(model=model, config=config))
            return SimpleNamespace()

        monkeypatch.setattr(agent_loop, "_start_coordinator", start)
        return calls, LengthAwareRollout.create(config=make_config(*overrides), reward_loop_worker_handles=[])

    return create


DTYPES = {  # id: (overrides, the Coordinator's dtype, whether create warns that a verl default was replaced)
    "verl default on cpu": ([], "float32", True),
    "float16": (["actor_rollout_ref.rollout.dtype=float16"], "float16", False),
    "half (vLLM alias)": (["actor_rollout_ref.rollout.dtype=half"], "float16", False),
    "float32": (["actor_rollout_ref.rollout.dtype=float32"], "float32", False),
    "verl default on cuda": ([f"{CUSTOM}.device=cuda"], "bfloat16", False),
    "rollout_len's own key": ([f"{CUSTOM}.dtype=bfloat16"], "bfloat16", False),
}


@pytest.mark.parametrize("overrides,dtype,warns", list(DTYPES.values()), ids=list(DTYPES))
def test_verl_dtype_reaches_the_coordinator(started, caplog, overrides, dtype, warns):
    with caplog.at_level(logging.WARNING, logger="rollout_len.verl.agent_loop"):
        calls, _ = started(*overrides)
    (call,) = calls
    assert call.config.dtype == dtype
    replaced = "actor_rollout_ref.rollout.dtype=bfloat16 (verl's default) on device cpu" in caplog.text
    assert replaced == warns


def test_verl_seed_and_max_num_seqs_reach_the_coordinator(started):
    calls, _ = started()
    assert calls[0].config.seed == 42 and calls[0].config.slots_per_worker == 8  # verl's seed; max_num_seqs default
    calls, _ = started("actor_rollout_ref.rollout.seed=7", "actor_rollout_ref.rollout.max_num_seqs=3")
    assert calls[0].config.seed == 7 and calls[0].config.slots_per_worker == 3
    calls, _ = started(f"{CUSTOM}.seed=100", f"{CUSTOM}.slots_per_worker=5")  # rollout_len's own keys win
    assert calls[0].config.seed == 100 and calls[0].config.slots_per_worker == 5


def test_a_relative_cost_profile_reaches_the_coordinator_absolute(started, tmp_path, monkeypatch):
    (tmp_path / "cpu.yaml").write_text(Path(DEFAULT_COST_PROFILE).read_text())
    monkeypatch.chdir(tmp_path)
    calls, _ = started(f"{CUSTOM}.cost_profile=cpu.yaml")
    assert calls[0].config.cost_profile == str(tmp_path / "cpu.yaml")


class InProcess:
    """A Coordinator in this process behind a Ray actor handle's interface (`handle.method.remote(...)`)."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self._target, name))


@pytest.mark.parametrize("calculate", [True, False])
def test_calculate_log_probs_decides_whether_rollout_log_probs_are_returned(make_config, monkeypatch, calculate):
    monkeypatch.setattr(agent_loop, "_start_coordinator", lambda model, config: InProcess(Coordinator(model, config)))
    monkeypatch.setattr(ray, "get", lambda value: value)  # the handle above returns values, not object refs
    config = make_config(
        NO_REWARD_WORKERS,
        f"actor_rollout_ref.rollout.calculate_log_probs={str(calculate).lower()}",
        f"{CUSTOM}.use_ray=false",
        f"{CUSTOM}.num_workers=1",
    )
    manager = LengthAwareRollout.create(config=config, reward_loop_worker_handles=None)
    batch, _ = rlhf_batch(config, 1)
    out = manager.generate_sequences(batch)
    assert ("rollout_log_probs" in out.batch.keys()) == calculate
    assert len(out) == len(batch) and np.all(out.batch["response_mask"].sum(dim=1).numpy() >= 1)


@pytest.mark.parametrize(
    "arguments,key",
    [
        ({"response_length": 0}, "actor_rollout_ref.rollout.response_length"),
        ({"top_p": 0.0}, "actor_rollout_ref.rollout.top_p"),
        ({"settings": {"num_workers": True}}, "settings.num_workers"),
        ({"settings": {"gpus_per_worker": -1}}, "settings.gpus_per_worker"),
        ({"settings": {"no_such_setting": 1}}, "settings.no_such_setting"),
    ],
    ids=["response_length=0", "top_p=0", "num_workers=True", "gpus_per_worker=-1", "unknown setting"],
)
def test_start_refuses_bad_values_before_any_ray_actor(no_actor, model_dir, arguments, key):
    """LengthAwareRollout.start (outside verl's trainer) checks what create checks, as early."""
    from transformers import AutoTokenizer

    call = {"prompt_length": 64, "response_length": 8, **arguments}
    with pytest.raises(ValueError, match=re.escape(key)):
        LengthAwareRollout.start(str(model_dir), AutoTokenizer.from_pretrained(model_dir), **call)


def test_policies_that_need_true_lengths_are_refused_through_verl():
    """verl cannot pass a recorded run's lengths, so `oracle` is refused up front, naming the key."""
    from rollout_len.verl.settings import check_policy

    with pytest.raises(ValueError, match=r"meta_info\['rollout_len_policy'\]=oracle: .*true length.*valid here"):
        check_policy("oracle", "meta_info['rollout_len_policy']")
    with pytest.raises(ValueError, match="unknown scheduling policy; valid: .*length_aware") as err:
        check_policy("sjf", "x")
    assert "oracle" not in str(err.value)
    assert check_policy("fcfs", "x") == "fcfs"


def test_oracle_predictions_are_refused_through_verl():
    from rollout_len.verl.settings import coordinator_config

    with pytest.raises(ValueError, match=r"custom.rollout_len.predictions=oracle: true lengths"):
        coordinator_config({"predictions": "oracle"})
