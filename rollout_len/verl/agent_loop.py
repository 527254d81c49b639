"""LengthAwareRollout: a verl agent-loop manager that generates each step's batch with rollout_len.

verl's trainers (the DataProto one, `trainer.use_v1=false`, and v1 in sync mode: rollout_len.verl.v1)
load the class named by `actor_rollout_ref.rollout.agent.agent_loop_manager_class`, call
`create(config, llm_client, teacher_client, reward_loop_worker_handles)` once, then
`generate_sequences(batch)` every step and for validation. See docs/verl.md for the config lines;
settings for the Coordinator go under `actor_rollout_ref.rollout.custom.rollout_len`.

Each call turns the batch into one sample per row (rollout_len.verl.convert), runs one Coordinator
step over the whole batch (the Coordinator is a Ray actor, so verl's actor workers can send it the
trainer's weights: rollout_len.verl.backend), packs the samples into verl's fields, row for row, and
scores them with verl's reward-loop workers. Outside verl's trainer (recipes/grpo_demo),
`LengthAwareRollout.start(model, tokenizer, ...)` starts the same thing from a model name.
"""

from __future__ import annotations

import logging
import numbers
import time

import numpy as np
import ray
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sched.partial import PARTIAL_ROWS, PartialConfig, PartialRun
from rollout_len.verl.backend import COORDINATOR_ACTOR_NAME, ROLLOUT_NAME, is_registered, take_pending_weights
from rollout_len.verl.convert import attach_rewards, to_data_proto, to_samples
from rollout_len.verl.settings import (
    DEFAULT_POLICY,
    SETTINGS_KEY,
    LengthAwareSettings,
    check_policy,
    coordinator_config,
    partial_settings,
    resolve_settings,
)

__all__ = [
    "LengthAwareRollout",
    "check_config",
    "DEFAULT_POLICY",
    "SETTINGS_KEY",
    "SEED_KEY",
    "POLICY_KEY",
    "RESULT_KEY",
]

logger = logging.getLogger(__name__)

SEED_KEY = "rollout_len_seed"  # input meta_info: this call's seed (int)
POLICY_KEY = "rollout_len_policy"  # input meta_info: this call's scheduling policy (a name in POLICIES)
RESULT_KEY = "rollout_len"  # output meta_info: {"policy", "seed", "metrics", "timeline"}
PARTIAL_POLICIES = {policy for policy, partial in PARTIAL_ROWS.values() if partial}  # april, length_aware_partial


def check_config(config, teacher_client=None, reward_loop_worker_handles=None) -> LengthAwareSettings:
    """Refuse verl settings LengthAwareRollout cannot honour; each error names the config key.

    Beyond the trainer-level checks below, every key of `actor_rollout_ref.rollout` is checked against
    rollout_len.verl.settings (refused keys, sampling, lengths, custom.rollout_len, the cost profile).
    Returns the resolved settings; starts nothing (no Ray).
    """
    rollout = config.actor_rollout_ref.rollout
    partial = partial_settings(rollout) is not None
    if config.trainer.get("use_v1", False):  # verl's v1 trainer: trajectories go to TransferQueue (verl/v1.py)
        from rollout_len.verl.v1 import check_v1_config

        check_v1_config(config, partial=partial)
    elif partial:
        raise ValueError(
            f"actor_rollout_ref.rollout.over_sample_rate={rollout.over_sample_rate}: partial steps carry unfinished "
            "groups into later steps, and verl's DataProto trainer (trainer.use_v1=false) takes back exactly the "
            "rows it sent; use verl's v1 trainer (trainer.use_v1=true, the default) or over_sample_rate=0"
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
    return resolve_settings(rollout)


def _check_context(rollout, hf_config) -> None:
    context = getattr(hf_config, "max_position_embeddings", None)
    needed = int(rollout.prompt_length) + int(rollout.response_length)
    if context is not None and needed > context:
        raise ValueError(
            f"actor_rollout_ref.rollout.prompt_length + response_length = {needed} tokens (data.max_prompt_length + "
            f"data.max_response_length) exceed the model's context of {context}"
        )


def _start_coordinator(model: str, config: RolloutConfig):
    """The Coordinator as a named Ray actor (verl's actor workers find it by name to send weights)."""
    actor_class = ray.remote(Coordinator).options(name=COORDINATOR_ACTOR_NAME, num_cpus=1)
    return actor_class.remote(model=model, config=config)


def _attach_step(output: DataProto, result, times: tuple[float, ...], **info) -> None:
    """A step's meta_info: `timing` (the phases between the five `times`, then the Coordinator's
    metrics, all under `rollout_len/`) and RESULT_KEY (`info`, the metrics and the timeline)."""
    start, tokenized, generated, packed, scored = times
    metrics = {key: float(value) for key, value in result.metrics.items()}
    output.meta_info["timing"] = {
        "rollout_len/tokenize_s": tokenized - start,
        "rollout_len/generate_s": generated - tokenized,
        "rollout_len/pack_s": packed - generated,
        "rollout_len/compute_score_s": scored - packed,
        **{f"rollout_len/{key}": value for key, value in metrics.items()},
    }
    output.meta_info[RESULT_KEY] = {**info, "metrics": metrics, "timeline": result.timeline.to_dict()}


class LengthAwareRollout:
    """verl agent-loop manager backed by rollout_len's length-aware Coordinator.

    Made by `create` (verl's trainer) or `start` (anything else); then `generate_sequences` per
    batch, `update_weights` after each optimizer step, `worker_logits` to check a weight sync, and
    `shutdown` at the end.
    """

    def __init__(
        self,
        rollout,
        coordinator,
        tokenizer,
        *,
        policy: str = DEFAULT_POLICY,
        seed: int = 0,
        hf_model_type: str | None = None,
        chat_template_kwargs: dict | None = None,
        reward_loop_worker_handles: list | None = None,
        partial: PartialConfig | None = None,
    ):
        """Use `create` or `start`. `rollout`: verl's `actor_rollout_ref.rollout` section (prompt_length,
        response_length, temperature, top_p, top_k, do_sample, ignore_eos, val_kwargs, calculate_log_probs;
        rollout_len.verl.settings says what happens to every other key); `coordinator`: the Ray
        handle of a Coordinator; `seed`: the Coordinator config's seed (default seeds derive from it);
        `partial`: v1 training batches run as partial steps of this config (rollout_len.verl.v1.PartialSteps)."""
        self._rollout = rollout
        self._coordinator = coordinator  # Ray actor handle of rollout_len.rollout.coordinator.Coordinator
        self._policy = check_policy(policy, "policy")
        self._seed = seed
        self._calls = 0
        self.last_v1_step: dict | None = None  # meta_info of the last v1 call (v1's trainer takes no return value)
        self._reward_workers = reward_loop_worker_handles
        self._partial_rows: dict[str, dict] = {}  # sample id -> its row's input fields, while carried
        self.partial_steps = None  # v1 partial steps (over_sample_rate > 0)
        if partial is not None:
            from rollout_len.verl.v1 import PartialSteps

            self.partial_steps = PartialSteps(partial)
        self._pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._token_builder = create_continuous_token_builder(
            tokenizer, hf_model_type=hf_model_type, chat_template_kwargs=dict(chat_template_kwargs or {})
        )

    @classmethod
    def create(
        cls, config, llm_client=None, teacher_client=None, reward_loop_worker_handles=None
    ) -> LengthAwareRollout:
        """What verl's trainer calls. `llm_client` (verl's server client) is not used: nothing runs there.

        Every check (check_config: the trainer, the rollout section key by key, custom.rollout_len, the cost
        profile; then the model's context) runs before the Coordinator's Ray actor starts. verl defaults
        that this machine replaces (bfloat16 on a CPU device) are logged as warnings.
        """
        settings = check_config(config, teacher_client, reward_loop_worker_handles)
        model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        _check_context(config.actor_rollout_ref.rollout, model_config.hf_config)
        for notice in settings.notices:
            logger.warning(notice)
        gpus = config.trainer.get("n_gpus_per_node", 0) or 0
        if gpus > 0 and settings.coordinator.device == "cpu":
            logger.warning(
                "trainer.n_gpus_per_node=%s but the rollout workers run on the CPU: set "
                "actor_rollout_ref.rollout.custom.rollout_len.device=cuda (and gpus_per_worker) to generate on GPUs",
                gpus,
            )
        coordinator = _start_coordinator(model_config.local_path, settings.coordinator)
        pending = take_pending_weights()  # synced before this Coordinator existed (verl's v1 trainer.init)
        if pending is not None:
            ray.get(coordinator.update_weights.remote(pending))
        hf_model_type = getattr(model_config.hf_config, "model_type", None)
        return cls(
            config.actor_rollout_ref.rollout,
            coordinator,
            model_config.tokenizer,
            policy=settings.policy,
            seed=settings.coordinator.seed,
            hf_model_type=hf_model_type if isinstance(hf_model_type, str) else None,
            chat_template_kwargs=config.data.get("apply_chat_template_kwargs"),
            reward_loop_worker_handles=reward_loop_worker_handles,
            partial=None
            if settings.partial is None
            else PartialConfig(config.data.train_batch_size, **settings.partial),
        )

    @classmethod
    def start(
        cls,
        model: str,
        tokenizer,
        *,
        prompt_length: int,
        response_length: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        policy: str = DEFAULT_POLICY,
        hf_model_type: str | None = None,
        settings: dict | None = None,
    ) -> LengthAwareRollout:
        """Outside verl's trainer: start a Coordinator for `model` and wrap it; no rewards are computed.

        Args:
            model: what `rollout_len.model.load_policy` takes (embedded name, folder, Hugging Face id).
            tokenizer: the policy's tokenizer (its chat template builds the prompts).
            prompt_length / response_length: the most prompt tokens (longer prompts raise ValueError) and
                the response budget (max_new_tokens), in tokens.
            temperature / top_p / top_k: sampling, as verl's rollout config takes them (top_k=-1: off);
                batches with meta_info["validate"] are greedy.
            policy: the default scheduling policy (a name in rollout_len.sched.policies.POLICIES).
            hf_model_type: the model's `config.model_type`, which picks verl's token builder.
            settings: fields of `rollout_len.rollout.coordinator.RolloutConfig` (unknown ones raise ValueError),
                e.g. {"head_path": "heads/rl"} to start the length predictor from a head saved by
                `rollout-len forelen train` (made absolute here) and keep re-fitting it online.

        The Coordinator runs as the named Ray actor that verl's weight receivers look for (one at a time;
        Ray starts locally if it is not running). Raises ValueError for an unknown policy or setting.
        """
        check_policy(policy, "policy")
        config = coordinator_config(dict(settings or {}), "settings")
        rollout = OmegaConf.create(
            {
                "prompt_length": prompt_length,
                "response_length": response_length,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "ignore_eos": False,
                "calculate_log_probs": True,
                "val_kwargs": {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "do_sample": False},
            }
        )
        resolve_settings(rollout)  # sampling and lengths, as create checks them (ValueError naming the key)
        return cls(
            rollout,
            _start_coordinator(model, config),
            tokenizer,
            policy=policy,
            seed=config.seed,
            hf_model_type=hf_model_type,
        )

    def generate_sequences(self, prompts: DataProto | TensorDict) -> DataProto | None:
        """One response per row of a verl generation batch, in verl's agent-loop output format, row for row.

        A TensorDict is verl's v1 trainer (`trainer.use_v1=true`): its rows are prompts, each gets
        `rollout.n` responses, and they are written to TransferQueue instead of returned
        (rollout_len.verl.v1.generate_to_transfer_queue; the step's meta_info is kept in `last_v1_step`).
        With over_sample_rate > 0 its training batches go to partial steps instead
        (rollout_len.verl.v1.PartialSteps.submit; `last_v1_step` is None until a step runs).

        Each row is generated from its own `raw_prompt`, in the GRPO group of its `uid`. Optional input
        meta_info: `rollout_len_seed` (int; default: the Coordinator config's seed + the number of
        earlier calls) and `rollout_len_policy` (a scheduling policy name; default: the configured one).
        The same seed gives the same tokens under every policy. Unknown policies raise ValueError,
        non-integer seeds TypeError.

        Output meta_info:
            timing: the phases in seconds (`rollout_len/tokenize_s`, `generate_s`, `pack_s`,
                `compute_score_s`) and the Coordinator's step metrics, all under `rollout_len/`; verl's
                trainer logs them as `timing_s/rollout_len/...`.
            rollout_len: {"policy": str, "seed": int, "metrics": {name: float} (the Coordinator's step
                metrics: step_time_s, padded_fraction, migrations, worker_idle_fraction, predictor_mae,
                tokens_per_s, ...), "timeline": Timeline.to_dict() (per-worker chunks, migrations)}.
            reward_extra_keys: with reward workers, the extra reward fields (see convert.attach_rewards).
        """
        if isinstance(prompts, TensorDict):
            from rollout_len.verl.v1 import generate_to_transfer_queue, is_validation

            if self.partial_steps is not None and not is_validation(prompts):
                self.last_v1_step = self.partial_steps.submit(prompts, self.generate_partial, self._rollout)
            else:
                self.last_v1_step = generate_to_transfer_queue(prompts, self.generate_sequences, self._rollout)
            return None
        start = time.perf_counter()
        policy, seed = self._call_settings(prompts.meta_info)
        samples = to_samples(prompts, self._token_builder, self._rollout, seed)
        tokenized = time.perf_counter()
        result = ray.get(self._coordinator.run_step.remote(samples, policy))
        generated = time.perf_counter()
        prompt_length, response_length = int(self._rollout.prompt_length), int(self._rollout.response_length)
        output = to_data_proto(result.samples, prompt_length, response_length, self._pad_token_id)
        if not self._rollout.get("calculate_log_probs", True):  # as verl's agent loop: no log-probs asked for
            output.batch.pop("rollout_log_probs")
        packed = time.perf_counter()
        if self._reward_workers is not None:
            self._score(output, prompts)
        _attach_step(
            output, result, (start, tokenized, generated, packed, time.perf_counter()), policy=policy, seed=seed
        )
        return output

    def generate_partial(self, prompts: DataProto | None, run: PartialRun) -> tuple[DataProto, PartialRun]:
        """A partial (stall-free) step (Coordinator.run_partial_step): the rows of `run.config.quota`
        complete GRPO groups, launched in this call or earlier ones, and the run's next state.

        Args:
            prompts: the new groups' rows (verl's generation batch: `raw_prompt` and `uid` per row, n rows
                per uid, uids not used before), e.g. `run.groups_to_launch()` prompts; None when the
                carried groups fill the step. meta_info as `generate_sequences` (policy default:
                `length_aware_partial` unless the configured policy is a partial one).
            run: the run's state (`rollout_len.sched.partial.PartialRun(PartialConfig(...))` at first, then
                what the previous call returned).

        Returns the rows of the returned groups, group by group: verl's rollout fields, each row's own
        input fields (the non-tensor fields of the batch it came in), `min_global_steps` /
        `max_global_steps` (int64 per row: the oldest and newest policy version among its tokens, as
        verl's v1 trainer names them; a version is the number of partial steps before the one that made
        the token) and meta_info as `generate_sequences` (its `rollout_len` entry adds `version`). Rows
        of groups still in flight are kept here until a later call returns them. Raises ValueError for a
        batch without `uid` or one reusing a uid in flight, and what `generate_sequences` raises.
        """
        start = time.perf_counter()
        meta = dict(prompts.meta_info) if prompts is not None else {}
        if POLICY_KEY not in meta and self._policy not in PARTIAL_POLICIES:
            meta[POLICY_KEY] = "length_aware_partial"
        policy, seed = self._call_settings(meta)
        samples, fields = [], {}
        if prompts is not None and len(prompts):
            if "uid" not in prompts.non_tensor_batch:
                raise ValueError("generate_partial needs a 'uid' per row: a partial step returns whole GRPO groups")
            samples = to_samples(prompts, self._token_builder, self._rollout, seed)
            for row, sample in enumerate(samples):  # ids unique over calls: rows are carried between them
                sample.sample_id = f"c{self._calls}-r{row}"
                fields[sample.sample_id] = {k: v[row] for k, v in prompts.non_tensor_batch.items()}
        mine = {t.sample.sample_id for t in run.carried} | set(fields)
        self._partial_rows.update(fields)
        tokenized = time.perf_counter()
        try:
            result = ray.get(self._coordinator.run_partial_step.remote(samples, run, policy))
        except BaseException:
            for sid in fields:  # the caller resubmits them
                self._partial_rows.pop(sid, None)
            raise
        generated = time.perf_counter()
        tagged = [t for group in result.groups.values() for t in group]
        output = to_data_proto(
            [t.sample for t in tagged],
            int(self._rollout.prompt_length),
            int(self._rollout.response_length),
            self._pad_token_id,
        )
        if not self._rollout.get("calculate_log_probs", True):
            output.batch.pop("rollout_log_probs")
        rows = [self._partial_rows[t.sample.sample_id] for t in tagged]
        inputs = {key: np.array([r[key] for r in rows], dtype=object) for key in rows[0]} if rows else {}
        output.non_tensor_batch.update(inputs)
        output.non_tensor_batch["min_global_steps"] = np.array([t.min_version for t in tagged], dtype=np.int64)
        output.non_tensor_batch["max_global_steps"] = np.array([t.max_version for t in tagged], dtype=np.int64)
        still = {t.sample.sample_id for t in result.run.carried}
        for sid in mine - still:  # returned, or dropped by the staleness bound
            self._partial_rows.pop(sid, None)
        packed = time.perf_counter()
        if self._reward_workers is not None:
            self._score(output, DataProto(non_tensor_batch=inputs, meta_info={}))
        times = (start, tokenized, generated, packed, time.perf_counter())
        _attach_step(output, result, times, policy=policy, seed=seed, version=result.version)
        return output, result.run

    def _call_settings(self, meta_info: dict) -> tuple[str, int]:
        """(policy, seed) of one call; every call, with or without a seed, advances the default seed."""
        default_seed = self._seed + self._calls
        self._calls += 1
        policy = check_policy(meta_info.get(POLICY_KEY, self._policy), f"meta_info[{POLICY_KEY!r}]")
        seed = meta_info.get(SEED_KEY, default_seed)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"meta_info[{SEED_KEY!r}] must be an int, got {seed!r}")
        return policy, int(seed)

    def _score(self, output: DataProto, inputs: DataProto) -> None:
        """Rewards from verl's reward-loop workers (rule checkers by data_source, or the custom function)."""
        scoring = DataProto(
            batch=output.batch, non_tensor_batch={**inputs.non_tensor_batch, **output.non_tensor_batch}, meta_info={}
        )
        bounds = np.linspace(0, len(scoring), len(self._reward_workers) + 1).astype(int)
        refs = [
            worker.compute_score_batch.remote(scoring[int(lo) : int(hi)])
            for worker, lo, hi in zip(self._reward_workers, bounds[:-1], bounds[1:])
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

    def update_weights(self, state_dict: dict, partial: bool = False) -> None:
        """Load new policy weights (Hugging Face names -> CPU tensors) into the Coordinator's workers.
        Strict unless `partial=True` (only the given tensors change): see Coordinator.update_weights."""
        ray.get(self._coordinator.update_weights.remote(state_dict, partial=partial))

    def worker_logits(self, prompt_ids: list[int]) -> list[torch.Tensor]:
        """Each rollout worker's next-token logits after `prompt_ids`: one float32 CPU tensor (vocab,) per
        worker, to compare with the trainer's after `update_weights`."""
        return [logits.float().cpu() for logits in ray.get(self._coordinator.worker_logits.remote(prompt_ids))]

    def shutdown(self) -> None:
        """Stop the Coordinator and its workers."""
        ray.get(self._coordinator.shutdown.remote())
        ray.kill(self._coordinator)
