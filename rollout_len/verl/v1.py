"""LengthAwareRollout on verl's v1 trainer (`trainer.use_v1=true`, verl 0.9.1's default), synchronous mode.

verl's `TaskRunnerV1` loads the class named by `actor_rollout_ref.rollout.agent.agent_loop_manager_class`,
calls `create(...)` as the DataProto trainer does, and then hands `generate_sequences` a TensorDict of
*unrepeated* prompts (one row per prompt, a `uid` each, `global_steps`, and `validate` for validation
batches). It expects nothing back: every trajectory must be in TransferQueue, where verl's ReplayBuffer
finds it (`verl/trainer/ppo/v1/replay_buffer.py`), and the prompt's status tag must say when its group is
done (`verl/trainer/ppo/v1/agent_loop_tq.py` is verl's own writer; docs/verl.md, *Trainer paths*).

`generate_to_transfer_queue` does that with the same Coordinator step as the DataProto path:

1. `expand_prompts`: each prompt row becomes n rows (`rollout.n`, `rollout.val_kwargs.n` for validation,
   or the row's `__rollout_n__`), adjacent, sharing the prompt's uid, so one Coordinator step sees the
   whole batch and its GRPO groups;
2. `LengthAwareRollout.generate_sequences(DataProto)` generates and scores them (rollout_len.verl.convert
   turns rows into samples and samples into verl's padded fields);
3. `trajectory_records` un-pads each row into verl's per-trajectory fields and tags, and they are written
   under `{uid}_{session}_0` (partition `train` or `val`); the prompt's tag goes `running` -> `finished`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.utils.model import compute_position_id_with_mask
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from rollout_len.sched.partial import PartialConfig, PartialRun

__all__ = [
    "SUPPORTED_TRAINER_MODES",
    "PARTIAL_SAMPLER_PATH",
    "PartialReplayBuffer",
    "PartialSteps",
    "check_v1_config",
    "is_validation",
    "expand_prompts",
    "weight_version",
    "trajectory_records",
    "generate_to_transfer_queue",
]

logger = logging.getLogger(__name__)

SUPPORTED_TRAINER_MODES = ("sync",)
PARTIAL_SAMPLER_PATH = "pkg://rollout_len.verl.v1"  # trainer.v1.sampler.custom_sampler.path of PartialReplayBuffer
# Keys of v1's prompt batch that steer generation; verl's agent-loop worker does not store them either.
_CONTROL_KEYS = ("validate", "agent_name", "__rollout_n__")


def check_v1_config(config, partial: bool = False) -> None:
    """Refuse v1 trainer settings LengthAwareRollout cannot serve (ValueError naming the key and value).

    Only `trainer.v1.trainer_mode=sync` is supported: `colocate_async` keeps prompts of several steps in flight
    and aborts and resumes requests around every weight sync, `separate_async` serves rollouts from standalone
    replicas with a non-naive weight transfer; a Coordinator step runs a whole batch to the end on one set of
    weights, and the `length_aware` backend launches no standalone replica and takes naive transfers only.

    With `partial` (over_sample_rate > 0: `PartialSteps`), the sampler must be `PartialReplayBuffer` (it submits
    the prompts a step holds beyond train_batch_size), `data.gen_batch_size` 1 (it submits any number of
    prompts, as verl's async modes do), `trainer.v1.sync.parameter_sync_step` 1 (one partial step, one
    weight update) and the rollout's log-probs on; DAPO's group filtering and `sync_refill_failed_groups`,
    which verl gives only to its own sampler, must be off. Without it, `PartialReplayBuffer` is refused.
    Partial steps without `algorithm.rollout_correction.rollout_is` are allowed, with a logged warning:
    tokens of older weights are then trained uncorrected.
    """
    v1 = config.trainer.get("v1", {})
    mode = v1.get("trainer_mode", "sync")
    if mode not in SUPPORTED_TRAINER_MODES:
        raise ValueError(
            f"trainer.v1.trainer_mode={mode}: LengthAwareRollout supports verl's v1 trainer in sync mode only "
            "(a Coordinator step generates a whole batch on one set of weights; it cannot abort and resume requests "
            "around weight syncs, nor run as a standalone rollout pool): set trainer.v1.trainer_mode=sync, or "
            "trainer.use_v1=false"
        )
    sampler_config = v1.get("sampler", {}) or {}
    sampler = sampler_config.get("custom_sampler", {}) or {}
    path, name = sampler.get("path"), sampler.get("name")
    ours = (path, name) == (PARTIAL_SAMPLER_PATH, "PartialReplayBuffer")
    if not partial:
        if ours:
            raise ValueError(
                "trainer.v1.sampler.custom_sampler names PartialReplayBuffer, which samples for partial steps, but "
                "actor_rollout_ref.rollout.over_sample_rate is 0 (synchronous steps): set over_sample_rate > 0, or "
                "drop the custom_sampler lines"
            )
        return
    if not ours:
        raise ValueError(
            f"trainer.v1.sampler.custom_sampler (path={path}, name={name}): partial steps "
            "(actor_rollout_ref.rollout.over_sample_rate > 0) need rollout_len's sampler, which submits the prompts "
            f"a step holds beyond data.train_batch_size: set path={PARTIAL_SAMPLER_PATH} and name=PartialReplayBuffer"
        )
    gen_batch_size = config.data.get("gen_batch_size", None)
    if not (isinstance(gen_batch_size, int) and not isinstance(gen_batch_size, bool) and gen_batch_size == 1):
        raise ValueError(
            f"data.gen_batch_size={gen_batch_size!r}: partial steps submit the exact number "
            "of prompts a step lacks (after a dropped group, one), in fetches of gen_batch_size: set it to 1, as "
            "verl's async trainer modes do"
        )
    # verl hands group filtering and failed-group refills to its own sampler only, never to a custom one
    filter_groups = config.algorithm.get("filter_groups", None) or {}
    if filter_groups.get("enable", False):
        raise ValueError(
            "algorithm.filter_groups.enable=true: verl's v1 trainer gives DAPO's group filtering to its own sampler "
            "only, and partial steps use PartialReplayBuffer, so the filter would not run; set it to false"
        )
    if sampler_config.get("sync_refill_failed_groups", False):
        raise ValueError(
            "trainer.v1.sampler.sync_refill_failed_groups=true: verl gives it to its own sampler only, and partial "
            "steps use PartialReplayBuffer, which would ignore it; set it to false"
        )
    if not config.actor_rollout_ref.rollout.get("calculate_log_probs", True):
        raise ValueError(
            "actor_rollout_ref.rollout.calculate_log_probs=false: partial steps train tokens of older weights, and "
            "correcting them (algorithm.rollout_correction) needs the rollout's log-probs; set it to true"
        )
    sync_step = (v1.get("sync", {}) or {}).get("parameter_sync_step", 1)
    if sync_step != 1:
        raise ValueError(
            f"trainer.v1.sync.parameter_sync_step={sync_step}: a partial step returns data.train_batch_size groups "
            "for one weight update; set it to 1"
        )
    if (config.algorithm.get("rollout_correction", None) or {}).get("rollout_is", None) is None:
        logger.warning(
            "partial steps without algorithm.rollout_correction.rollout_is: tokens generated by older weights "
            "(staleness up to custom.rollout_len.max_staleness) are trained without importance weights; set "
            "rollout_is=token to weight them by verl's truncated ratio"
        )


def is_validation(batch: TensorDict) -> bool:
    """Whether a v1 prompt batch is a validation batch (its NonTensorData `validate`)."""
    return bool(_value(batch.get("validate"), 0)) if "validate" in batch.keys() else False


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of `values` (numpy would turn equal-length lists into a 2-D array)."""
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


def _value(column, row: int):
    if isinstance(column, NonTensorStack):
        return column[row].data
    if isinstance(column, NonTensorData):
        return column.data
    return column[row]


def expand_prompts(batch: TensorDict, rollout) -> tuple[DataProto, list[str]]:
    """v1's prompt batch as a DataProto with one row per trajectory, and each row's TransferQueue key.

    Args:
        batch: one row per prompt; reads `uid` (required; must not contain `_`, which separates the parts of
            verl's keys), `validate` (optional NonTensorData), `__rollout_n__` and `agent_name` (optional, per
            row); the other per-row entries are copied into every row of their prompt.
        rollout: verl's `actor_rollout_ref.rollout` config (`n`, `val_kwargs.n`).

    Returns (rows, keys): prompt i's rows are adjacent, session s of it has key `{uid}_{s}_0` and a
    `session_id` column; the batch's NonTensorData values (`global_steps`, `validate`, and the optional
    `rollout_len_seed` / `rollout_len_policy`) become `meta_info`, as in the DataProto path. Raises
    ValueError for a batch without uids, an uid with `_`, a group size below 1, or an agent loop other than
    `single_turn_agent`.
    """
    if "uid" not in batch.keys():
        raise ValueError("verl's v1 batch has no 'uid': every prompt needs one (verl's trainer assigns it)")
    validate = is_validation(batch)
    default_n = int(rollout.val_kwargs.n if validate else rollout.n)
    prompts = len(batch)
    counts = [
        int(_value(batch.get("__rollout_n__"), i)) if "__rollout_n__" in batch.keys() else default_n
        for i in range(prompts)
    ]
    uids = [str(_value(batch.get("uid"), i)) for i in range(prompts)]
    if "agent_name" in batch.keys():  # verl's per-row agent loop choice; the batch-wide default is checked in create
        names = {str(_value(batch.get("agent_name"), i)) for i in range(prompts)} - {"single_turn_agent"}
        if names:
            raise ValueError(
                f"rows ask for agent loops {sorted(names)} (the data's agent_name): LengthAwareRollout runs "
                "single_turn_agent only"
            )
    for uid, count in zip(uids, counts):
        if "_" in uid:
            raise ValueError(
                f"uid {uid!r} contains '_', which separates the parts of verl's keys {{uid}}_{{session}}_0"
            )
        if count < 1:
            raise ValueError(f"prompt {uid!r} asks for {count} responses (actor_rollout_ref.rollout.n): at least 1")
    source = np.repeat(np.arange(prompts), counts)
    # Batch-wide values (NonTensorData: global_steps, validate, rollout_len_seed, ...) are what the DataProto
    # path's meta_info holds; like verl's writer, each trajectory also stores them (but not the control keys).
    meta_info = {key: batch.get(key).data for key in batch.keys() if isinstance(batch.get(key), NonTensorData)}
    meta_info["validate"] = validate
    non_tensor, tensors = {}, {}
    for key in batch.keys():
        if key in _CONTROL_KEYS:
            continue
        column = batch.get(key)
        if isinstance(column, NonTensorData):  # one value for the batch (global_steps)
            non_tensor[key] = _objects([column.data] * len(source))
        elif isinstance(column, NonTensorStack):
            values = column.tolist()
            non_tensor[key] = _objects([values[i] for i in source])
        elif isinstance(column, torch.Tensor) and not column.is_nested:
            tensors[key] = column[torch.as_tensor(source)]
    non_tensor["session_id"] = np.array([s for count in counts for s in range(count)], dtype=np.int64)
    keys = [f"{uids[i]}_{s}_0" for i, count in enumerate(counts) for s in range(count)]
    rows = DataProto(
        batch=TensorDict(tensors, batch_size=len(source)) if tensors else None,
        non_tensor_batch=non_tensor,
        meta_info=meta_info,
    )
    return rows, keys


def weight_version(global_steps: int, validate: bool) -> int:
    """The trainer step whose weights a synchronous v1 rollout runs on (what verl's servers report as
    `min_global_steps` / `max_global_steps`).

    verl's sync trainer syncs weights with `update_weights(global_steps)` after loading a checkpoint and at the
    end of every step, before that step's validation and before `global_steps` advances: a training batch of
    step s runs on the weights of step s - 1, a validation batch tagged s on those of step s.
    """
    return int(global_steps) if validate else int(global_steps) - 1


def trajectory_records(
    rows: DataProto,
    output: DataProto,
    *,
    global_steps: int,
    versions: list[tuple[int, int]],
    timing: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """verl's per-trajectory fields and tags, one of each per row of `output` (row r from `rows` row r).

    Fields, as verl's agent-loop writer stores them (1-D, unpadded): `prompts` (P,), `responses` (R,),
    `response_mask` and `loss_mask` (R,) int64, `input_ids` and `position_ids` (P + R,) int64,
    `rollout_log_probs` (R,) float32 (when `output` has them), `rm_scores` (R,) float32 with the reward on the
    last token (when scored), `num_turns` (2), `metrics` (verl's AgentLoopMetrics), `extra_fields`
    (`reward_extra_info`, `global_steps`, `min_global_steps`, `max_global_steps`), `multi_modal_inputs` ({}),
    and every column of `rows` (the prompt's dataset fields, `uid`, `global_steps`, `session_id`).
    Tags: `status` "success", `prompt_len`, `response_len`, `seq_len`, `global_steps`, `min_global_steps`
    and `max_global_steps`: row r's (min, max) in `versions` (the weight versions of its oldest and newest
    token; one version for a synchronous step).
    """
    prompt_width = output.batch["prompts"].shape[1]
    attention = output.batch["attention_mask"].bool()
    reward_keys = output.meta_info.get("reward_extra_keys", [])
    timing = timing or {}
    metrics = AgentLoopMetrics(
        generate_sequences=float(timing.get("rollout_len/generate_s", 0.0)),
        compute_score=float(timing.get("rollout_len/compute_score_s", 0.0)),
    ).model_dump()
    fields, tags = [], []
    for row in range(len(output)):
        low, high = (int(v) for v in versions[row])
        prompt = output.batch["prompts"][row][attention[row, :prompt_width]]
        length = int(output.batch["response_mask"][row].sum())
        response = output.batch["responses"][row, :length]
        response_mask = output.batch["response_mask"][row, :length]
        input_ids = torch.cat([prompt, response])
        record = {key: _row_value(column, row) for key, column in rows.non_tensor_batch.items()}
        if rows.batch is not None:
            record.update({key: rows.batch[key][row] for key in rows.batch.keys()})
        record.update(
            prompts=prompt,
            responses=response,
            response_mask=response_mask,
            loss_mask=response_mask,
            input_ids=input_ids,
            position_ids=compute_position_id_with_mask(torch.ones(1, len(input_ids), dtype=torch.int64))[0],
            num_turns=int(output.non_tensor_batch["__num_turns__"][row]),
            metrics=dict(metrics),
            extra_fields={
                "reward_extra_info": {key: _row_value(output.non_tensor_batch[key], row) for key in reward_keys},
                "global_steps": high,
                "min_global_steps": low,
                "max_global_steps": high,
            },
            multi_modal_inputs={},
        )
        if "rollout_log_probs" in output.batch.keys():
            record["rollout_log_probs"] = output.batch["rollout_log_probs"][row, :length]
        if "rm_scores" in output.batch.keys():
            record["rm_scores"] = output.batch["rm_scores"][row, :length]
        fields.append(record)
        tags.append(
            {
                "status": "success",
                "prompt_len": len(prompt),
                "response_len": length,
                "seq_len": len(input_ids),
                "global_steps": int(global_steps),
                "min_global_steps": low,
                "max_global_steps": high,
            }
        )
    return fields, tags


def _row_value(column: np.ndarray, row: int):
    value = column[row]
    return value.item() if isinstance(value, np.generic) else value


def generate_to_transfer_queue(batch: TensorDict, generate, rollout) -> dict:
    """One synchronous v1 rollout: generate every trajectory of `batch` and write it to TransferQueue.

    Args:
        batch: verl's v1 prompt batch (see `expand_prompts`); `global_steps` (NonTensorData) is required.
            Optional NonTensorData `rollout_len_seed` / `rollout_len_policy` act as the DataProto path's meta_info.
        generate: DataProto -> DataProto, LengthAwareRollout's `generate_sequences` (the Coordinator step,
            verl's fields row for row, rewards).
        rollout: verl's `actor_rollout_ref.rollout` config (`n`, `val_kwargs.n`).

    Each prompt uid's tag becomes `running` before generation and `finished` after all its trajectories are
    written; when generation fails the uids are tagged `failure` and the error is raised. Returns the step's
    meta_info (`timing`, `rollout_len`: policy, seed, metrics, timeline), which v1's trainer has no way to take.
    """
    import transfer_queue as tq  # verl's v1 trainer has initialised it in this process (TaskRunnerV1)

    if "global_steps" not in batch.keys():
        raise ValueError("verl's v1 batch has no 'global_steps': the trainer assigns it to every batch")
    global_steps = int(_value(batch.get("global_steps"), 0))
    rows, keys = expand_prompts(batch, rollout)
    validate = rows.meta_info["validate"]
    partition = "val" if validate else "train"
    uids = list(dict.fromkeys(str(uid) for uid in rows.non_tensor_batch["uid"]))
    tq.kv_batch_put(keys=uids, partition_id=partition, tags=[{"status": "running"} for _ in uids])
    try:
        output = generate(rows)
        versions = [(weight_version(global_steps, validate),) * 2] * len(output)
        fields, tags = trajectory_records(
            rows, output, global_steps=global_steps, versions=versions, timing=output.meta_info.get("timing")
        )
        tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields), tags=tags)
    except Exception:
        # verl's ReplayBuffer reads the group status; "running" would make it wait forever.
        tq.kv_batch_put(keys=uids, partition_id=partition, tags=[{"status": "failure"} for _ in uids])
        raise
    tq.kv_batch_put(keys=uids, partition_id=partition, tags=[{"status": "finished"} for _ in uids])
    return {key: value for key, value in output.meta_info.items() if key in ("timing", "rollout_len")}


class PartialSteps:
    """Partial (stall-free) steps on verl's v1 sync trainer: LengthAwareRollout's state between its calls.

    verl's sync trainer submits `data.train_batch_size` prompts a step (`prepare_step`) and samples that many
    finished groups from TransferQueue. `submit` adds a call's prompts to the groups in flight; once they reach
    the config's `in_flight` (train_batch_size / (1 - over_sample_rate) groups) it runs one partial step
    (`LengthAwareRollout.generate_partial`), writes the `quota` whole groups it returns, each trajectory tagged
    with the weight versions of its oldest and newest token, tags those prompts `finished` and leaves the
    carried ones `running` for a later step. Below `in_flight` it only queues them; `PartialReplayBuffer`
    submits the rest (`groups_wanted`) before it samples: at the first step, and after a dropped group.
    """

    def __init__(self, config: PartialConfig):
        self.run = PartialRun(config)
        self.pending: list[DataProto] = []  # rows of groups submitted and not launched yet
        self.dropped = 0  # groups dropped by the staleness bound (on_stale="drop")

    def groups_wanted(self) -> int:
        """Groups a queued step lacks: its in-flight count less the groups carried and the groups queued;
        0 when no prompts are queued (the last call ran its step, or none came yet)."""
        if not self.pending:
            return 0
        queued = sum(len(set(rows.non_tensor_batch["uid"])) for rows in self.pending)
        return max(0, self.run.groups_to_launch() - queued)

    def submit(self, batch: TensorDict, generate_partial, rollout) -> dict | None:
        """Queue a v1 training batch (see `expand_prompts`); run a partial step once the groups in flight reach
        the config's. `generate_partial`: LengthAwareRollout's; `rollout`: verl's rollout config (`n`).

        Returns the step's meta_info (as `generate_to_transfer_queue`, with `version`), or None when the prompts
        were only queued. Prompts are tagged `running` when queued; a step tags the uids it returns `finished`
        and clears the prompts of groups the staleness bound dropped (the sampler submits replacements). When
        the step fails, the uids of this call and of the queued ones are tagged `failure` and the error raised.
        """
        import transfer_queue as tq

        if "global_steps" not in batch.keys():
            raise ValueError("verl's v1 batch has no 'global_steps': the trainer assigns it to every batch")
        global_steps = int(_value(batch.get("global_steps"), 0))
        rows, _ = expand_prompts(batch, rollout)
        if rows.batch is not None:  # a carried row keeps its fields across calls, as objects
            for key in rows.batch.keys():
                rows.non_tensor_batch[key] = _objects(list(rows.batch[key]))
            rows.batch = None
        uids = list(dict.fromkeys(str(uid) for uid in rows.non_tensor_batch["uid"]))
        tq.kv_batch_put(keys=uids, partition_id="train", tags=[{"status": "running"} for _ in uids])
        self.pending.append(rows)
        if self.groups_wanted() > 0:  # PartialReplayBuffer submits the rest
            return None
        launched = DataProto.concat(self.pending)
        meta = {key: value for key, value in rows.meta_info.items() if key != "validate"}
        launched.meta_info = meta
        before = {t.group for t in self.run.carried} | {str(uid) for uid in launched.non_tensor_batch["uid"]}
        # PartialRun counts versions from its first step, verl from the weights synced at step 0
        offset = weight_version(global_steps, False) - self.run.version
        try:
            output, run = generate_partial(launched, self.run)
        except Exception:
            queued = list(dict.fromkeys(str(uid) for uid in launched.non_tensor_batch["uid"]))
            tq.kv_batch_put(keys=queued, partition_id="train", tags=[{"status": "failure"} for _ in queued])
            self.pending = []
            raise
        self.pending, self.run = [], run
        lows, highs = output.non_tensor_batch["min_global_steps"], output.non_tensor_batch["max_global_steps"]
        versions = [(int(low) + offset, int(high) + offset) for low, high in zip(lows, highs)]
        inputs = [key for key in launched.non_tensor_batch if key in output.non_tensor_batch]
        returned_rows = DataProto(non_tensor_batch={key: output.non_tensor_batch[key] for key in inputs}, meta_info={})
        fields, tags = trajectory_records(
            returned_rows, output, global_steps=global_steps, versions=versions, timing=output.meta_info.get("timing")
        )
        keys = [
            f"{uid}_{session}_0"
            for uid, session in zip(output.non_tensor_batch["uid"], output.non_tensor_batch["session_id"])
        ]
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)
        returned = list(dict.fromkeys(str(uid) for uid in output.non_tensor_batch["uid"]))
        tq.kv_batch_put(keys=returned, partition_id="train", tags=[{"status": "finished"} for _ in returned])
        dropped = sorted(before - set(returned) - {t.group for t in run.carried})
        if dropped:
            tq.kv_clear(keys=dropped, partition_id="train")
            self.dropped += len(dropped)
        return {key: value for key, value in output.meta_info.items() if key in ("timing", "rollout_len")}


class PartialReplayBuffer(ReplayBuffer):
    """verl's sync ReplayBuffer for partial steps (`PartialSteps`): before it samples training groups, it
    submits the prompts LengthAwareRollout's partial steps lack (`groups_wanted`) through the trainer's own
    `refill_fn` (its dataloader), so a step holds train_batch_size / (1 - over_sample_rate) groups in flight.

    Select it with `trainer.v1.sampler.custom_sampler.path=pkg://rollout_len.verl.v1` and
    `.name=PartialReplayBuffer`. It finds the rollout as the trainer's `agent_loop_manager` (the trainer whose
    `_add_prompts_to_generate` is `refill_fn`); anything but a LengthAwareRollout with partial steps there
    raises RuntimeError.
    """

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "train":
            trainer = getattr(self.refill_fn, "__self__", None)
            steps = getattr(getattr(trainer, "agent_loop_manager", None), "partial_steps", None)
            if not isinstance(steps, PartialSteps):
                raise RuntimeError(
                    "PartialReplayBuffer samples for LengthAwareRollout's partial steps, and the trainer's "
                    "agent_loop_manager has none: set actor_rollout_ref.rollout.agent.agent_loop_manager_class to "
                    "LengthAwareRollout and actor_rollout_ref.rollout.over_sample_rate > 0"
                )
            wanted = steps.groups_wanted()
            if wanted:
                self.refill_fn(wanted)
        return super().sample(global_steps, partition_id, batch_size)
