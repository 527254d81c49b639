"""LengthAwareRollout: a verl agent-loop manager that generates each step's batch with rollout_len.

verl's DataProto trainer (`trainer.use_v1=false`) loads the class named by
`actor_rollout_ref.rollout.agent.agent_loop_manager_class`, calls
`create(config, llm_client, teacher_client, reward_loop_worker_handles)` once, then
`generate_sequences(batch)` every step and for validation. See docs/verl.md for the config lines;
settings for the Coordinator go under `actor_rollout_ref.rollout.custom.rollout_len`.

Each call turns the batch into prompt token ids and n (rollout_len.verl.convert), runs one
Coordinator step over the whole batch (the Coordinator is a Ray actor, so verl's actor workers can
send it the trainer's weights: rollout_len.verl.backend), packs the samples into verl's fields and
scores them with verl's reward-loop workers.
"""

from __future__ import annotations

import time

import numpy as np
import ray
from verl import DataProto
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.rollout.policies import POLICIES
from rollout_len.verl.backend import COORDINATOR_ACTOR_NAME, ROLLOUT_NAME, is_registered
from rollout_len.verl.convert import attach_rewards, rollout_request, to_data_proto

__all__ = ["LengthAwareRollout", "check_config", "DEFAULT_POLICY", "SETTINGS_KEY"]

DEFAULT_POLICY = "length_aware"
SETTINGS_KEY = "actor_rollout_ref.rollout.custom.rollout_len"  # `policy` + fields of coordinator.RolloutConfig


def check_config(config, teacher_client=None, reward_loop_worker_handles=None) -> None:
    """Refuse verl settings LengthAwareRollout cannot honour; each error names the config key."""
    rollout = config.actor_rollout_ref.rollout
    if config.trainer.get("use_v1", False):
        raise ValueError(
            "LengthAwareRollout runs on verl's DataProto trainer: set trainer.use_v1=false (the v1 trainer "
            "expects each trajectory written to TransferQueue, which LengthAwareRollout does not do)"
        )
    if rollout.name != ROLLOUT_NAME:
        raise ValueError(
            f"actor_rollout_ref.rollout.name={rollout.name}: set it to {ROLLOUT_NAME}, so verl sends the trainer's "
            f"weights to LengthAwareRollout and starts no {rollout.name} servers"
        )
    if not is_registered():
        raise ValueError(
            f"verl does not know actor_rollout_ref.rollout.name={ROLLOUT_NAME}: the rollout_len plugin did not load "
            "(reinstall rollout_len with pip so its verl.plugins entry point exists, and do not set "
            "VERL_USE_EXTERNAL_PLUGINS=none)"
        )
    for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
        if rollout.get(key, 1) != 1:
            raise ValueError(
                f"actor_rollout_ref.rollout.{key}={rollout.get(key)}: the length_aware engine holds one whole "
                "model copy per worker; set it to 1"
            )
    if rollout.multi_turn.enable or rollout.agent.default_agent_loop != "single_turn_agent":
        raise ValueError(
            "LengthAwareRollout generates single-turn responses: set actor_rollout_ref.rollout.multi_turn.enable=false "
            "and actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent"
        )
    if teacher_client is not None:
        raise ValueError("LengthAwareRollout does not compute teacher log-probs: set distillation.enabled=false")
    if reward_loop_worker_handles is None and not config.reward.reward_model.enable:
        raise ValueError(
            "no reward function: LengthAwareRollout scores responses with verl's reward-loop workers, and none were "
            "given; with reward.reward_model.enable=false verl's trainer passes them (rule rewards by data_source, "
            "or reward.custom_reward_function.path)"
        )
    try:
        get_custom_reward_fn(config)
    except (FileNotFoundError, AttributeError, RuntimeError, ImportError) as err:
        raise ValueError(f"reward.custom_reward_function.path / .name cannot be loaded: {err}") from err


def _check_context(rollout, hf_config) -> None:
    context = getattr(hf_config, "max_position_embeddings", None)
    needed = int(rollout.prompt_length) + int(rollout.response_length)
    if context is not None and needed > context:
        raise ValueError(
            f"actor_rollout_ref.rollout.prompt_length + response_length = {needed} tokens (data.max_prompt_length + "
            f"data.max_response_length) exceed the model's context of {context}"
        )


def _coordinator_settings(rollout) -> tuple[str, dict]:
    custom = rollout.get("custom") or {}
    settings = dict(custom.get("rollout_len") or {})
    policy = str(settings.pop("policy", DEFAULT_POLICY))
    if policy not in POLICIES:
        raise ValueError(f"{SETTINGS_KEY}.policy={policy}: unknown scheduling policy; valid: {sorted(POLICIES)}")
    return policy, settings


def start_coordinator(model_path: str, settings: dict):
    """The Coordinator as a named Ray actor (verl's actor workers find it by name to send weights)."""
    try:
        coordinator_config = RolloutConfig(**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{SETTINGS_KEY}: {err}") from err
    actor_class = ray.remote(Coordinator).options(name=COORDINATOR_ACTOR_NAME, num_cpus=1)
    return actor_class.remote(model=model_path, config=coordinator_config)


class LengthAwareRollout:
    """verl agent-loop manager backed by rollout_len's length-aware Coordinator."""

    def __init__(self, config, coordinator, model_config, policy: str, reward_loop_worker_handles=None):
        self.config = config
        self.rollout = config.actor_rollout_ref.rollout
        self.coordinator = coordinator  # Ray actor handle of rollout_len.rollout.coordinator.Coordinator
        self.policy = policy
        self.reward_workers = reward_loop_worker_handles
        tokenizer = model_config.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        hf_model_type = getattr(model_config.hf_config, "model_type", None)
        self.token_builder = create_continuous_token_builder(
            tokenizer,
            hf_model_type=hf_model_type if isinstance(hf_model_type, str) else None,
            chat_template_kwargs=dict(config.data.get("apply_chat_template_kwargs") or {}),
        )

    @classmethod
    def create(
        cls, config, llm_client=None, teacher_client=None, reward_loop_worker_handles=None
    ) -> LengthAwareRollout:
        """What verl's trainer calls. `llm_client` (verl's server client) is not used: nothing runs there."""
        check_config(config, teacher_client, reward_loop_worker_handles)
        model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        _check_context(config.actor_rollout_ref.rollout, model_config.hf_config)
        policy, settings = _coordinator_settings(config.actor_rollout_ref.rollout)
        coordinator = start_coordinator(model_config.local_path, settings)
        return cls(config, coordinator, model_config, policy, reward_loop_worker_handles)

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """n responses per prompt for a verl generation batch, in verl's agent-loop output format.

        meta_info["timing"] holds the phases in seconds and the Coordinator's step metrics, all
        under `rollout_len/`; verl's trainer logs them as `timing_s/rollout_len/...`.
        """
        start = time.perf_counter()
        request = rollout_request(prompts, self.token_builder, self.rollout)
        tokenized = time.perf_counter()
        result = ray.get(self.coordinator.run_step.remote(request.prompts, request.n, request.params, self.policy))
        generated = time.perf_counter()
        prompt_length, response_length = int(self.rollout.prompt_length), int(self.rollout.response_length)
        output = to_data_proto(request, result.groups, prompt_length, response_length, self.pad_token_id)
        packed = time.perf_counter()
        if self.reward_workers is not None:
            self._score(output, prompts)
        scored = time.perf_counter()
        output.meta_info["timing"] = {
            "rollout_len/tokenize_s": tokenized - start,
            "rollout_len/generate_s": generated - tokenized,
            "rollout_len/pack_s": packed - generated,
            "rollout_len/compute_score_s": scored - packed,
            **{f"rollout_len/{key}": float(value) for key, value in result.metrics.items()},
        }
        return output

    def _score(self, output: DataProto, inputs: DataProto) -> None:
        """Rewards from verl's reward-loop workers (rule checkers by data_source, or the custom function)."""
        scoring = DataProto(
            batch=output.batch, non_tensor_batch={**inputs.non_tensor_batch, **output.non_tensor_batch}, meta_info={}
        )
        bounds = np.linspace(0, len(scoring), len(self.reward_workers) + 1).astype(int)
        refs = [
            worker.compute_score_batch.remote(scoring[int(lo) : int(hi)])
            for worker, lo, hi in zip(self.reward_workers, bounds[:-1], bounds[1:])
            if hi > lo
        ]
        try:
            results = [result for chunk in ray.get(refs) for result in chunk]
        except NotImplementedError as err:
            raise ValueError(
                "no reward function for this data: verl's rule rewards do not know its data_source; set "
                f"reward.custom_reward_function.path ({err})"
            ) from err
        attach_rewards(output, results)

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights (Hugging Face names) into the Coordinator's workers."""
        ray.get(self.coordinator.update_weights.remote(state_dict))

    def shutdown(self) -> None:
        ray.get(self.coordinator.shutdown.remote())
        ray.kill(self.coordinator)
