"""verl's rollout settings, one table: what LengthAwareRollout does with each `actor_rollout_ref.rollout` key.

Every field of verl 0.9.1's rollout config (`verl.workers.config.RolloutConfig`, 68 fields, and the fields
of the sections that matter: val_kwargs, multi_turn, agent, trace, prometheus, checkpoint_engine) is in
`VERL_ROLLOUT_SETTINGS` exactly once, as

- honoured:   it reaches rollout_len (the row says where: SamplingParams, the Coordinator's RolloutConfig,
              a check) or verl's trainer acts on it itself;
- refused:    a value other than the accepted one raises ValueError naming the key, at create();
- irrelevant: it configures something that does not run here (vLLM/SGLang servers, verl's actor), so
              any value is fine; the row says why.

    from rollout_len.verl.settings import resolve_settings
    settings = resolve_settings(config.actor_rollout_ref.rollout)  # ValueError naming the key
    settings.coordinator  # rollout_len.rollout.RolloutConfig: custom.rollout_len + the verl keys mapped onto it
    settings.train, settings.validate  # SamplingParams of training and validation batches

docs/verl.md shows the table (`markdown_table()` writes it); tests/verl/test_settings.py fails when a
field of verl's own dataclasses is missing from it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from rollout_len.rollout.coordinator import RolloutConfig
from rollout_len.sample import SamplingParams
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.policies import POLICIES

__all__ = [
    "HONOURED",
    "REFUSED",
    "IRRELEVANT",
    "ROLLOUT_KEY",
    "SETTINGS_KEY",
    "DEFAULT_POLICY",
    "Setting",
    "VERL_ROLLOUT_SETTINGS",
    "LengthAwareSettings",
    "check_policy",
    "check_refused",
    "sampling_params",
    "coordinator_settings",
    "coordinator_config",
    "resolve_settings",
    "unclassified_keys",
    "markdown_table",
]

logger = logging.getLogger(__name__)

HONOURED, REFUSED, IRRELEVANT = "honoured", "refused", "irrelevant"
ROLLOUT_KEY = "actor_rollout_ref.rollout"
SETTINGS_KEY = f"{ROLLOUT_KEY}.custom.rollout_len"  # `policy` + fields of coordinator.RolloutConfig
DEFAULT_POLICY = "length_aware"

# verl's default rollout dtype (its rollout.yaml and dataclass) and rollout_len's dtype on a CPU device.
VERL_DEFAULT_DTYPE = "bfloat16"
CPU_DTYPE = "float32"
# actor_rollout_ref.rollout.dtype values -> rollout_len dtypes (vLLM's aliases half/float included).
VERL_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
}
VERL_DEFAULT_SEED = 42
# max_num_seqs at either of verl's defaults (ppo_trainer's rollout.yaml: 256; the dataclass: 1024) says
# nothing about this machine, so slots_per_worker keeps rollout_len's default; any other value is honoured.
VERL_DEFAULT_MAX_NUM_SEQS = (256, 1024)

_ABSENT = object()


@dataclass(frozen=True)
class Setting:
    """One key of verl's rollout config and what LengthAwareRollout does with it."""

    key: str  # under actor_rollout_ref.rollout; dotted for a section's field ("val_kwargs.top_p")
    status: str  # HONOURED, REFUSED or IRRELEVANT
    why: str  # one line: where it goes (honoured) or why it is refused / does not apply
    accepted: tuple = ()  # REFUSED: the values accepted (verl's default, or what LengthAwareRollout needs)
    accepts: Callable[[Any], bool] | None = None  # REFUSED: a test of the value where a tuple cannot say it
    shown: str = ""  # REFUSED: the accepted values as errors and docs show them (default: `accepted`, joined)

    def allows(self, value: Any) -> bool:
        """Whether a refused key's value is accepted (always True for the other statuses; a section's row is
        not checked itself, its fields are)."""
        if self.status != REFUSED:
            return True
        if self.accepts is not None:
            return self.accepts(value)
        return any(_same(value, ok) for ok in self.accepted)

    @property
    def accepted_text(self) -> str:
        return self.shown or " or ".join(_yaml(value) for value in self.accepted)


def _same(value: Any, accepted: Any) -> bool:
    """Equal, with true/false and null told apart from numbers (False == 0 in Python)."""
    if isinstance(value, bool) or isinstance(accepted, bool) or value is None or accepted is None:
        return value is accepted
    return value == accepted


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _no_engine_kwargs(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(not sub for sub in value.values()))


def _no_custom_server(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and value.get("path") is None and value.get("name") is None)


def _qat_off(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and not value.get("enable", False))


_TOOL_LOOP = "read only by verl's tool agent loop; LengthAwareRollout is single-turn (multi_turn.enable=false)"
_ACTOR = "verl's actor worker reads it when it recomputes log-probs; generation does not"

_TABLE = [
    # --- identity, mode and placement
    Setting("_target_", IRRELEVANT, "Hydra's class path for this section (verl's omega_conf_to_dataclass reads it)"),
    Setting(
        "name",
        REFUSED,
        "the rollout backend: length_aware makes verl send weights to LengthAwareRollout and start no servers",
        accepted=("length_aware",),
    ),
    Setting("mode", IRRELEVANT, "verl itself refuses sync and supports only async"),
    Setting(
        "nnodes",
        IRRELEVANT,
        "nodes of verl's standalone rollout pool (v1 async trainers); the DataProto trainer is hybrid. The "
        "Coordinator's workers are placed by Ray: custom.rollout_len.num_workers / gpus_per_worker / ray_address",
    ),
    Setting(
        "n_gpus_per_node",
        IRRELEVANT,
        "from trainer.n_gpus_per_node: sizes verl's replicas, which launch nothing here; the Coordinator's "
        "device and GPUs are custom.rollout_len.device / gpus_per_worker",
    ),
    # --- sampling
    Setting("temperature", HONOURED, "SamplingParams.temperature of training batches (finite, >= 0; 0 = greedy)"),
    Setting("top_k", HONOURED, "SamplingParams.top_k; -1 (verl, vLLM) and 0 (HF) keep the whole vocabulary"),
    Setting("top_p", HONOURED, "SamplingParams.top_p, in (0, 1]"),
    Setting(
        "do_sample",
        HONOURED,
        "false = greedy, so it needs temperature=0; false with temperature > 0 is refused (verl's vLLM agent "
        "loop ignores do_sample and samples)",
    ),
    Setting(
        "n", HONOURED, "by verl's trainer: it repeats each prompt n times; every row is one sample, grouped by uid"
    ),
    Setting(
        "repetition_penalty",
        REFUSED,
        "verl 0.9.1's agent loop sends its engines 1.0 whatever this key says, so a trainer config's value "
        "has no meaning there; other values are refused rather than honoured differently from verl "
        "(rollout_len's own commands take SamplingParams.repetition_penalty)",
        accepted=(1.0,),
    ),
    Setting(
        "full_determinism",
        REFUSED,
        "asks for batch-invariant kernels (VLLM_BATCH_INVARIANT); rollout_len's samples draw from (seed, sample "
        "id), but its batched matmuls are not guaranteed bitwise batch-invariant",
        accepted=(False,),
    ),
    Setting(
        "seed",
        HONOURED,
        "the Coordinator's seed (RolloutConfig.seed; call i defaults to seed + i) unless custom.rollout_len.seed",
    ),
    Setting(
        "over_sample_rate",
        HONOURED,
        "0: every sample of a step finishes. In [0, 1) on verl's v1 sync trainer: partial steps, verl's meaning "
        "counted in GRPO groups: a step returns data.train_batch_size whole groups out of train_batch_size / "
        "(1 - rate) in flight and carries the rest, with their tokens, into the next step (staleness bound: "
        "custom.rollout_len.max_staleness and on_stale; it needs trainer.v1.sampler.custom_sampler = "
        "rollout_len's PartialReplayBuffer and data.gen_batch_size=1: docs/verl.md, Partial steps). The "
        "DataProto trainer (trainer.use_v1=false) refuses a rate > 0: it takes back what it sent, row for row",
    ),
    # --- lengths and precision
    Setting(
        "prompt_length",
        HONOURED,
        "from data.max_prompt_length: longer prompts are refused by generate_sequences; width of `prompts`",
    ),
    Setting(
        "response_length",
        HONOURED,
        "from data.max_response_length: SamplingParams.max_new_tokens (> 0) and the width of `responses`",
    ),
    Setting(
        "dtype",
        HONOURED,
        "RolloutConfig.dtype unless custom.rollout_len.dtype; verl's default bfloat16 becomes float32 on a CPU "
        "device, with a logged warning (float16 / half / float32 / float are honoured as given)",
    ),
    Setting(
        "max_model_len",
        HONOURED,
        "create refuses prompt_length + response_length above it (verl's vLLM server would cut responses there)",
    ),
    Setting("ignore_eos", HONOURED, "SamplingParams.ignore_stop (a bool)"),
    Setting(
        "calculate_log_probs",
        HONOURED,
        "true: `rollout_log_probs` in the output (the sampler's log-probs); false: left out, as verl's agent loop",
    ),
    Setting(
        "logprobs_mode",
        REFUSED,
        "rollout_log_probs are the temperature-scaled log-probs of the sampled token, before top-k/top-p "
        "filtering (vLLM's processed_logprobs renormalizes after it; equal at top_p=1, top_k=-1); no raw_* modes",
        accepted=("processed_logprobs",),
    ),
    # --- GPU memory, parallelism and concurrency
    Setting(
        "gpu_memory_utilization",
        REFUSED,
        "vLLM's GPU memory fraction for its KV cache; rollout_len's KV cache grows per slot on demand (size it "
        "with custom.rollout_len.slots_per_worker)",
        accepted=(0.5,),
    ),
    Setting(
        "standalone_gpu_memory_utilization",
        IRRELEVANT,
        "read only by verl's experimental fully-async rollouter, which this trainer path does not run",
    ),
    Setting("enforce_eager", IRRELEVANT, "vLLM's CUDA-graph switch; the length_aware engine always runs eagerly"),
    Setting("cudagraph_capture_sizes", IRRELEVANT, "vLLM's CUDA-graph batch sizes; the engine captures no graphs"),
    Setting(
        "free_cache_engine",
        IRRELEVANT,
        "verl frees/resumes the rollout's memory around weight sync through WeightReceiver, which holds none; "
        "the Coordinator keeps its weights and KV cache between steps either way (docs/verl.md, Limits)",
    ),
    Setting(
        "data_parallel_size",
        REFUSED,
        "the length_aware engine holds one whole model copy per worker; more workers: custom.rollout_len.num_workers",
        accepted=(1,),
    ),
    Setting("expert_parallel_size", REFUSED, "no expert parallelism: one whole model copy per worker", accepted=(1,)),
    Setting(
        "tensor_model_parallel_size",
        REFUSED,
        "one whole model copy per worker (verl's default is 2: the documented line sets 1)",
        accepted=(1,),
    ),
    Setting("pipeline_model_parallel_size", REFUSED, "one whole model copy per worker", accepted=(1,)),
    Setting("moe_tensor_parallel_size", REFUSED, "one whole model copy per worker (TRT-LLM only)", accepted=(1,)),
    Setting(
        "max_num_batched_tokens",
        REFUSED,
        "vLLM's token budget per scheduler step; the length_aware engine has none: concurrency is capped by slots "
        "(custom.rollout_len.slots_per_worker)",
        accepted=(8192,),
    ),
    Setting(
        "max_num_seqs",
        HONOURED,
        "RolloutConfig.slots_per_worker (concurrent sequences per worker, as per vLLM replica) unless "
        "custom.rollout_len.slots_per_worker; at verl's defaults (256, 1024) rollout_len's default stays",
    ),
    Setting(
        "scheduling_policy",
        REFUSED,
        "vLLM's queue order inside one server; LengthAwareRollout's order is custom.rollout_len.policy",
        accepted=("fcfs", None),
    ),
    Setting("val_kwargs", HONOURED, "sampling of validation batches (meta_info validate), as verl's agent loop"),
    # --- actor-side log-prob settings
    Setting("log_prob_micro_batch_size", IRRELEVANT, _ACTOR),
    Setting("log_prob_micro_batch_size_per_gpu", IRRELEVANT, _ACTOR),
    Setting("log_prob_use_dynamic_bsz", IRRELEVANT, _ACTOR),
    Setting("log_prob_max_token_len_per_gpu", IRRELEVANT, _ACTOR),
    # --- engine and server knobs
    Setting("disable_log_stats", IRRELEVANT, "vLLM's stats logging; rollout_len's metrics go to meta_info timing"),
    Setting("multi_stage_wake_up", IRRELEVANT, "SGLang's staged wake-up; nothing sleeps here"),
    Setting(
        "engine_kwargs",
        REFUSED,
        "arguments for the vLLM/SGLang/TRT-LLM engine, and none runs with length_aware",
        accepts=_no_engine_kwargs,
        shown="empty (`vllm/sglang/trtllm: {}`)",
    ),
    Setting("agent", HONOURED, "agent_loop_manager_class loads LengthAwareRollout; the other fields are below"),
    Setting("trace", REFUSED, "rollout tracing: trace.backend is refused, the other fields only serve it"),
    Setting("multi_turn", REFUSED, "multi-turn and tools: enable and the tool paths are refused, the rest serve them"),
    Setting("server", IRRELEVANT, "SGLang server-mode timeouts and retries; length_aware starts no server"),
    Setting("prometheus", REFUSED, "server metrics: prometheus.enable is refused (there are no servers to scrape)"),
    Setting(
        "custom",
        HONOURED,
        "custom.rollout_len: `policy` and RolloutConfig fields (unknown ones refused); other keys belong to others",
    ),
    Setting(
        "checkpoint_manager_class",
        REFUSED,
        "weights reach the Coordinator through verl's own CheckpointEngineManager and WeightReceiver",
        accepted=(None,),
    ),
    Setting("checkpoint_engine", REFUSED, "weight transfer: only the naive backend reaches WeightReceiver"),
    Setting(
        "profiler",
        IRRELEVANT,
        "profiles vLLM/SGLang servers (follows actor.profiler); the step's per-worker timeline is in meta_info",
    ),
    Setting("enable_chunked_prefill", IRRELEVANT, "vLLM's chunked prefill; the engine prefills each prompt whole"),
    Setting(
        "enable_prefix_caching",
        IRRELEVANT,
        "vLLM's prefix cache; the engine shares no prefixes (one KV slot per sample)",
    ),
    Setting(
        "load_format",
        IRRELEVANT,
        "how vLLM loads its first weights; the workers load actor_rollout_ref.model.path, then take verl's syncs",
    ),
    Setting("layered_summon", IRRELEVANT, "how verl's FSDP actor gathers weights for a sync (actor side)"),
    Setting(
        "layer_name_map",
        IRRELEVANT,
        "read nowhere in verl 0.9.1 (Megatron keeps its own mapping); weights arrive by HF name",
    ),
    Setting("sglang_engine_mode", IRRELEVANT, "SGLang only"),
    Setting("limit_images", IRRELEVANT, "vLLM's images per prompt; generate_sequences refuses multimodal prompts"),
    Setting("skip_tokenizer_init", IRRELEVANT, "server tokenizer; prompts are tokenized by verl's token builder here"),
    Setting("quantization", REFUSED, "the engine runs unquantized weights in `dtype`", accepted=(None,)),
    Setting("quantization_config_file", REFUSED, "the engine runs unquantized weights", accepted=(None,)),
    Setting(
        "enable_rollout_routing_replay",
        REFUSED,
        "MoE routing replay (R3) needs the rollout's expert choices, which the engine does not record",
        accepted=(False,),
    ),
    Setting(
        "moe_load_balance_metrics_interval",
        IRRELEVANT,
        "metrics of routing-replay data, which needs enable_rollout_routing_replay (refused)",
    ),
    Setting("enable_sleep_mode", IRRELEVANT, "vLLM's sleep mode; nothing sleeps here"),
    Setting("mtp", IRRELEVANT, "multi-token-prediction drafts for vLLM/SGLang speculative decoding (speed only)"),
    Setting(
        "qat",
        REFUSED,
        "quantization-aware training: the rollout would have to run the quantized weights",
        accepts=_qat_off,
        shown="`null` or `enable: false`",
    ),
    Setting(
        "disaggregation",
        IRRELEVANT,
        "prefill/decode disaggregation: verl refuses it for backends other than sglang/vllm",
    ),
    Setting(
        "router_config_path",
        REFUSED,
        "a router plugin for verl's servers; LengthAwareRollout places samples itself (custom.rollout_len.policy)",
        accepted=(None,),
    ),
    # --- val_kwargs (verl.workers.config.SamplingConfig)
    Setting("val_kwargs.temperature", HONOURED, "SamplingParams.temperature of validation batches"),
    Setting("val_kwargs.top_k", HONOURED, "SamplingParams.top_k of validation batches (-1 / 0: off)"),
    Setting("val_kwargs.top_p", HONOURED, "SamplingParams.top_p of validation batches"),
    Setting(
        "val_kwargs.do_sample",
        HONOURED,
        "false = greedy, so it needs val_kwargs.temperature=0; false with a temperature > 0 is refused",
    ),
    Setting("val_kwargs.n", HONOURED, "by verl's trainer: it repeats each validation prompt n times"),
    # --- multi_turn (MultiTurnConfig)
    Setting("multi_turn.enable", REFUSED, "LengthAwareRollout generates single-turn responses", accepted=(False,)),
    Setting("multi_turn.max_assistant_turns", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.tool_config_path", REFUSED, "LengthAwareRollout calls no tools", accepted=(None,)),
    Setting("multi_turn.function_tool_path", REFUSED, "LengthAwareRollout calls no tools", accepted=(None,)),
    Setting("multi_turn.max_user_turns", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.max_parallel_calls", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.max_tool_response_length", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.tool_response_truncate_side", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.use_inference_chat_template", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.tokenization_sanity_check_mode", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.format", IRRELEVANT, _TOOL_LOOP),
    Setting("multi_turn.num_repeat_rollouts", IRRELEVANT, _TOOL_LOOP),
    # --- agent (AgentLoopConfig)
    Setting(
        "agent.num_workers",
        IRRELEVANT,
        "verl's AgentLoopWorker count (none start); verl's trainer still pads validation batches to a multiple",
    ),
    Setting(
        "agent.default_agent_loop",
        REFUSED,
        "the only agent loop LengthAwareRollout runs",
        accepted=("single_turn_agent",),
    ),
    Setting(
        "agent.agent_loop_config_path",
        REFUSED,
        "custom agent loops (chosen by a row's agent_name); LengthAwareRollout runs single-turn generation only",
        accepted=(None,),
    ),
    Setting(
        "agent.custom_async_server",
        REFUSED,
        "a custom server class for verl's replicas; length_aware starts no server",
        accepts=_no_custom_server,
        shown="`path: null, name: null`",
    ),
    Setting("agent.agent_loop_manager_class", HONOURED, "verl's trainer loads LengthAwareRollout from it"),
    # --- trace (TraceConfig)
    Setting("trace.project_name", IRRELEVANT, "names traces of trace.backend (from trainer.project_name)"),
    Setting("trace.experiment_name", IRRELEVANT, "names traces of trace.backend (from trainer.experiment_name)"),
    Setting(
        "trace.backend",
        REFUSED,
        "verl's rollout tracing (mlflow, weave, ...) wraps its agent loop's LLM calls; LengthAwareRollout "
        "records no traces (the step's timeline is in meta_info)",
        accepted=(None,),
    ),
    Setting("trace.token2text", IRRELEVANT, "detail of trace.backend (refused)"),
    Setting("trace.max_samples_per_step_per_worker", IRRELEVANT, "detail of trace.backend (refused)"),
    # --- prometheus (PrometheusConfig)
    Setting("prometheus.enable", REFUSED, "there are no vLLM/SGLang servers to scrape", accepted=(False,)),
    Setting("prometheus.port", IRRELEVANT, "detail of prometheus.enable (refused)"),
    Setting("prometheus.file", IRRELEVANT, "detail of prometheus.enable (refused)"),
    Setting("prometheus.served_model_name", IRRELEVANT, "detail of prometheus.enable (refused)"),
    # --- checkpoint_engine (CheckpointEngineConfig)
    Setting(
        "checkpoint_engine.backend",
        REFUSED,
        "the naive backend calls WeightReceiver.update_weights with full tensors; the others bypass it",
        accepted=("naive",),
    ),
    Setting(
        "checkpoint_engine.update_weights_bucket_megabytes",
        IRRELEVANT,
        "bucket size of the non-naive backends (WeightReceiver takes the whole state dict)",
    ),
    Setting("checkpoint_engine.engine_kwargs", IRRELEVANT, "arguments of the non-naive backends"),
    Setting("checkpoint_engine.custom_backend_module", IRRELEVANT, "registers non-naive backends (refused)"),
]

VERL_ROLLOUT_SETTINGS: dict[str, Setting] = {setting.key: setting for setting in _TABLE}
assert len(VERL_ROLLOUT_SETTINGS) == len(_TABLE), "a key appears twice in the table"

# Sections whose fields have rows of their own: the section's row summarizes, its fields are checked.
SECTIONS = tuple(sorted({key.split(".")[0] for key in VERL_ROLLOUT_SETTINGS if "." in key}))


def _is_leaf(key: str) -> bool:
    return key not in SECTIONS


@dataclass(frozen=True)
class LengthAwareSettings:
    """What LengthAwareRollout runs with, resolved from verl's rollout section (every value validated)."""

    policy: str  # the default scheduling policy (custom.rollout_len.policy)
    coordinator: RolloutConfig  # custom.rollout_len + the verl keys mapped onto it (dtype, seed, max_num_seqs)
    train: SamplingParams  # training batches: temperature, top_p, top_k, response_length, ignore_eos
    validate: SamplingParams  # validation batches: val_kwargs
    notices: tuple[str, ...] = ()  # verl defaults replaced on this machine; create() logs them as warnings
    # partial steps (over_sample_rate > 0): PartialConfig's fields but the quota (data.train_batch_size)
    partial: dict | None = None


# ---------------------------------------------------------------------------------------------- reading


def _select(rollout, key: str, default: Any = _ABSENT) -> Any:
    """The plain value of `key` (dotted) in the rollout section, interpolations resolved; `default` if absent."""
    value = OmegaConf.select(rollout, key, default=_ABSENT) if OmegaConf.is_config(rollout) else _ABSENT
    if value is _ABSENT:
        return default
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(missing)"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- checks


def check_policy(policy: object, key: str) -> str:
    """`policy` if it names a scheduling policy; otherwise ValueError naming `key` and the valid names."""
    valid = sorted(name for name, cls in POLICIES.items() if cls.prediction_source != "oracle")
    if isinstance(policy, str) and policy in POLICIES and policy not in valid:
        raise ValueError(
            f"{key}={policy}: this policy needs every sample's true length from a recorded run, which verl "
            f"cannot pass (use it in `rollout-len bench rollout` or the simulator); valid here: {valid}"
        )
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"{key}={policy}: unknown scheduling policy; valid: {valid}")
    return str(policy)


def check_refused(rollout) -> None:
    """Raise ValueError naming the first refused key set to a value LengthAwareRollout does not accept.

    Keys absent from the section take verl's default, which is accepted.
    """
    for setting in _TABLE:
        if setting.status != REFUSED or not _is_leaf(setting.key):
            continue
        value = _select(rollout, setting.key)
        if value is _ABSENT or setting.allows(value):
            continue
        raise ValueError(
            f"{ROLLOUT_KEY}.{setting.key}={_show(value)}: {setting.why}; LengthAwareRollout accepts "
            f"{setting.accepted_text}"
        )


def unclassified_keys(rollout) -> list[str]:
    """Keys of the section (and of its tabled sections) that the table does not know: a newer verl's."""
    if not OmegaConf.is_dict(rollout):
        return []
    found = []
    for key in rollout.keys():
        if key not in VERL_ROLLOUT_SETTINGS:
            found.append(str(key))
        elif key in SECTIONS and OmegaConf.is_dict(rollout[key]):
            subkeys = [f"{key}.{sub}" for sub in rollout[key].keys() if sub != "_target_"]
            found += [sub for sub in subkeys if sub not in VERL_ROLLOUT_SETTINGS]
    return found


# ---------------------------------------------------------------------------------------------- sampling

_SAMPLING_KEYS = {  # SamplingParams field -> verl key (under the section, or under val_kwargs for sampling)
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_new_tokens": "response_length",
}


def sampling_params(rollout, validate: bool = False) -> SamplingParams:
    """SamplingParams from verl's rollout section (`val_kwargs` for validation batches, as verl's agent loop).

    temperature / top_p / top_k / do_sample come from the section (or `val_kwargs`), max_new_tokens from
    `response_length`, ignore_stop from `ignore_eos`. verl's top_k -1 (and HF's 0) mean the whole vocabulary.
    Raises ValueError naming the verl key (`actor_rollout_ref.rollout.top_p`, `...val_kwargs.temperature`,
    `...response_length`) for a value SamplingParams refuses or a value of the wrong type.
    """
    prefix = "val_kwargs." if validate else ""
    values: dict[str, Any] = {}
    for field in ("temperature", "top_p"):
        value = _select(rollout, prefix + field)
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"{ROLLOUT_KEY}.{prefix}{field}={_show(value)}: must be a finite number")
        values[field] = float(value)
    top_k = _select(rollout, prefix + "top_k")
    if not _is_int(top_k) or top_k < -1:
        raise ValueError(f"{ROLLOUT_KEY}.{prefix}top_k={_show(top_k)}: must be an int >= -1 (-1 or 0: off)")
    values["top_k"] = max(top_k, 0)  # verl/vLLM: -1 = whole vocabulary; here 0
    response_length = _select(rollout, "response_length")
    if not _is_int(response_length):
        raise ValueError(f"{ROLLOUT_KEY}.response_length={_show(response_length)}: must be an int")
    values["max_new_tokens"] = response_length
    for field, key in _SAMPLING_KEYS.items():  # one field at a time, so the error names its key
        try:
            SamplingParams(**{field: values[field]})
        except (TypeError, ValueError) as err:
            full = f"{ROLLOUT_KEY}.{key if field == 'max_new_tokens' else prefix + key}"
            source = " (set from data.max_response_length)" if field == "max_new_tokens" else ""
            raise ValueError(f"{full}={_show(values[field])}{source}: {err}") from err
    do_sample = _select(rollout, prefix + "do_sample", True)
    if not isinstance(do_sample, bool):
        raise ValueError(f"{ROLLOUT_KEY}.{prefix}do_sample={_show(do_sample)}: must be true or false")
    if not do_sample and values["temperature"] > 0:
        raise ValueError(
            f"{ROLLOUT_KEY}.{prefix}do_sample=false asks for greedy decoding but {ROLLOUT_KEY}.{prefix}temperature="
            f"{values['temperature']} samples (verl's vLLM agent loop ignores do_sample): set {prefix}temperature=0 "
            f"for greedy, or {prefix}do_sample=true"
        )
    ignore_eos = _select(rollout, "ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ValueError(f"{ROLLOUT_KEY}.ignore_eos={_show(ignore_eos)}: must be true or false")
    return SamplingParams(**values, ignore_stop=ignore_eos)


def _check_lengths(rollout) -> None:
    prompt_length = _select(rollout, "prompt_length")
    if not _is_int(prompt_length) or prompt_length < 1:
        raise ValueError(
            f"{ROLLOUT_KEY}.prompt_length={_show(prompt_length)} (set from data.max_prompt_length): must be an int >= 1"
        )
    max_model_len = _select(rollout, "max_model_len", None)
    if max_model_len is None:
        return
    response_length = _select(rollout, "response_length")
    if not _is_int(max_model_len) or max_model_len < 1:
        raise ValueError(f"{ROLLOUT_KEY}.max_model_len={_show(max_model_len)}: must be null or an int >= 1")
    if prompt_length + response_length > max_model_len:
        raise ValueError(
            f"{ROLLOUT_KEY}.max_model_len={max_model_len} is below prompt_length + response_length = "
            f"{prompt_length + response_length} (data.max_prompt_length + data.max_response_length): verl's vLLM "
            "server would cut responses short there; raise max_model_len or lower data.max_response_length"
        )


# ---------------------------------------------------------------------------------------------- the Coordinator

_COORDINATOR_FIELDS = {field.name for field in dataclasses.fields(RolloutConfig)}


def _verl_dtype(rollout) -> str | None:
    value = _select(rollout, "dtype", None)
    if value is None:
        return None
    if not isinstance(value, str) or value not in VERL_DTYPES:
        raise ValueError(f"{ROLLOUT_KEY}.dtype={_show(value)}: unknown dtype; valid: {sorted(VERL_DTYPES)}")
    return VERL_DTYPES[value]


def _verl_seed(rollout) -> int | None:
    value = _select(rollout, "seed", None)
    if value is not None and not _is_int(value):
        raise ValueError(f"{ROLLOUT_KEY}.seed={_show(value)}: must be an int")
    return value


def _verl_slots(rollout) -> int | None:
    value = _select(rollout, "max_num_seqs", None)
    if value is None or (_is_int(value) and value in VERL_DEFAULT_MAX_NUM_SEQS):
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{ROLLOUT_KEY}.max_num_seqs={_show(value)}: must be an int >= 1")
    return value


def _mapped(settings: dict, sources: dict, field: str, verl_key: str, value: Any, verl_default: Any) -> None:
    """Put verl's `value` for `field` into `settings` unless custom.rollout_len sets it; a non-default verl
    value that disagrees with custom.rollout_len's raises ValueError naming both keys."""
    if value is None:
        return
    if field not in settings:
        settings[field], sources[field] = value, f"{ROLLOUT_KEY}.{verl_key}"
    elif value != verl_default and value != settings[field]:
        raise ValueError(
            f"{ROLLOUT_KEY}.{verl_key}={value} and {SETTINGS_KEY}.{field}={settings[field]} disagree: set one of them"
        )


def coordinator_settings(rollout) -> tuple[str, RolloutConfig, tuple[str, ...]]:
    """(policy, the Coordinator's RolloutConfig, notices) from custom.rollout_len and the verl keys mapped onto it.

    custom.rollout_len sets `policy` and any RolloutConfig field; `dtype`, `seed` and `max_num_seqs`
    (-> slots_per_worker) fill the fields it leaves out. verl's default dtype bfloat16 on a CPU device
    becomes float32 (bfloat16 matmuls on CPUs without AVX512-BF16/AMX are many times slower), with a
    notice. Raises ValueError naming the key: `...custom.rollout_len.<field>` or the verl key the value
    came from.
    """
    custom = _select(rollout, "custom", None) or {}
    if not isinstance(custom, dict):
        raise ValueError(f"{ROLLOUT_KEY}.custom={_show(custom)}: must be a mapping")
    settings = custom.get("rollout_len") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{SETTINGS_KEY}={_show(settings)}: must be a mapping of `policy` and RolloutConfig fields")
    settings = dict(settings)
    policy = check_policy(settings.pop("policy", DEFAULT_POLICY), f"{SETTINGS_KEY}.policy")
    for key in PARTIAL_KEYS:  # partial steps' settings (partial_settings)
        settings.pop(key, None)
    _check_known(settings, SETTINGS_KEY, also_valid=("policy", *PARTIAL_KEYS))
    sources = {field: f"{SETTINGS_KEY}.{field}" for field in settings}
    notices = []
    dtype = _verl_dtype(rollout)
    device = settings.get("device", RolloutConfig.device)
    if "dtype" not in settings and dtype == VERL_DEFAULT_DTYPE and str(device).startswith("cpu"):
        dtype = CPU_DTYPE
        notices.append(
            f"{ROLLOUT_KEY}.dtype=bfloat16 (verl's default) on device {device}: the Coordinator runs float32, since "
            f"bfloat16 matmuls on CPUs without AVX512-BF16/AMX are many times slower; set "
            f"{SETTINGS_KEY}.dtype=bfloat16 to run bfloat16 anyway"
        )
    _mapped(settings, sources, "dtype", "dtype", dtype, VERL_DEFAULT_DTYPE)
    _mapped(settings, sources, "seed", "seed", _verl_seed(rollout), VERL_DEFAULT_SEED)
    _mapped(settings, sources, "slots_per_worker", "max_num_seqs", _verl_slots(rollout), None)
    return policy, coordinator_config(settings, SETTINGS_KEY, sources), tuple(notices)


def _check_known(settings: dict, prefix: str, also_valid: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(settings) - _COORDINATOR_FIELDS)
    if unknown:
        valid = ", ".join([*also_valid, *sorted(_COORDINATOR_FIELDS)])
        raise ValueError(f"{prefix}.{unknown[0]}: unknown setting; valid: {valid}")


def coordinator_config(settings: dict, prefix: str = SETTINGS_KEY, sources: dict | None = None) -> RolloutConfig:
    """`RolloutConfig(**settings)`, its cost profile loaded first; errors name `{prefix}.<field>`.

    `sources` (field -> full key) names the keys whose values came from elsewhere (verl's dtype, seed,
    max_num_seqs). A relative `cost_profile` or `head_path` is made absolute, so the Coordinator's Ray
    actor reads the file this process checked. Raises ValueError for unknown fields, a cost profile that does not load,
    and whatever RolloutConfig refuses.
    """
    _check_known(settings, prefix)
    sources = {field: f"{prefix}.{field}" for field in settings} | dict(sources or {})
    settings = dict(settings)
    if settings.get("cost_profile") is not None:
        settings["cost_profile"] = _load_cost_profile(settings["cost_profile"], sources["cost_profile"])
    if settings.get("head_path") is not None:  # RolloutConfig checks the head's card and tap layer
        if not isinstance(settings["head_path"], (str, Path)):
            raise ValueError(f"{sources['head_path']}={_show(settings['head_path'])}: must be a head folder")
        settings["head_path"] = str(Path(settings["head_path"]).expanduser().resolve())
    if settings.get("predictions") == "oracle":
        raise ValueError(
            f"{sources['predictions']}=oracle: true lengths come from a recorded run, which verl cannot pass; "
            "use 'model' (the PLP head) or 'noise' (the do-no-harm check)"
        )
    try:
        return RolloutConfig(**settings)
    except (TypeError, ValueError) as err:
        match = re.search(r"RolloutConfig\.(\w+)", str(err))
        key = sources.get(match.group(1), f"{prefix}.{match.group(1)}") if match else prefix
        raise ValueError(f"{key}: {err}") from err


def _load_cost_profile(path: object, key: str) -> str:
    if not isinstance(path, (str, Path)):
        raise ValueError(f"{key}={_show(path)}: must be the path of a cost-profile YAML")
    resolved = Path(path).expanduser().resolve()
    try:
        CostModel.from_yaml(resolved)
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as err:
        raise ValueError(f"{key}={path}: cannot load the cost profile: {err}") from err
    return str(resolved)


def resolve_settings(rollout) -> LengthAwareSettings:
    """Validate verl's rollout section against the table and resolve what LengthAwareRollout runs with.

    Refused keys (`check_refused`), lengths (prompt_length >= 1, max_model_len), sampling of training and
    validation batches (`sampling_params`) and the Coordinator's settings (`coordinator_settings`, cost
    profile included) are all checked here, so errors come before any Ray actor starts; each names its key.
    Keys the table does not know (a newer verl's) are logged as warnings.
    """
    check_refused(rollout)
    for key in unclassified_keys(rollout):
        logger.warning(
            "%s.%s is not in rollout_len's table of verl rollout settings (written for verl 0.9.1): "
            "LengthAwareRollout does not read it",
            ROLLOUT_KEY,
            key,
        )
    train = sampling_params(rollout, validate=False)
    validate = sampling_params(rollout, validate=True) if _select(rollout, "val_kwargs", None) is not None else train
    _check_lengths(rollout)
    policy, coordinator, notices = coordinator_settings(rollout)
    return LengthAwareSettings(policy, coordinator, train, validate, notices, partial_settings(rollout))


PARTIAL_KEYS = ("max_staleness", "on_stale")  # custom.rollout_len keys of partial steps (PartialConfig's)


def partial_settings(rollout) -> dict | None:
    """PartialConfig's fields but the quota from over_sample_rate and custom.rollout_len.max_staleness /
    on_stale; None when over_sample_rate is 0. Raises ValueError naming the key: a rate outside [0, 1),
    staleness settings without a rate, and what PartialConfig refuses."""
    from rollout_len.sched.partial import PartialConfig

    rate = _select(rollout, "over_sample_rate", 0.0)
    custom = (_select(rollout, "custom", None) or {}).get("rollout_len") or {}
    given = {key: custom[key] for key in PARTIAL_KEYS if key in custom}
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{ROLLOUT_KEY}.over_sample_rate={_show(rate)}: must be a number in [0, 1) (verl's meaning)")
    if rate == 0:
        if given:
            key = next(iter(given))
            raise ValueError(
                f"{SETTINGS_KEY}.{key}={_show(given[key])}: bounds the staleness of partial steps, which run only "
                f"with {ROLLOUT_KEY}.over_sample_rate > 0"
            )
        return None
    fields = {"over_sample_rate": float(rate), **given}
    try:
        PartialConfig(quota=1, **fields)
    except ValueError as err:
        key = next((k for k in PARTIAL_KEYS if k in str(err)), "over_sample_rate")
        where = f"{SETTINGS_KEY}.{key}" if key in given else f"{ROLLOUT_KEY}.over_sample_rate"
        raise ValueError(f"{where}: {err}") from None
    return fields


# ---------------------------------------------------------------------------------------------- docs


def markdown_table() -> str:
    """The table as docs/verl.md shows it: key | status | why / how it maps."""
    lines = ["| `actor_rollout_ref.rollout.` key | status | why / how it maps |", "| --- | --- | --- |"]
    for setting in _TABLE:
        status = setting.status
        if setting.status == REFUSED and _is_leaf(setting.key):
            values = setting.shown or " or ".join(f"`{_yaml(value)}`" for value in setting.accepted)
            status = f"refused unless {values}"
        why = setting.why.replace("|", "\\|")
        lines.append(f"| `{setting.key}` | {status} | {why} |")
    return "\n".join(lines) + "\n"
