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

import numpy as np
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.utils.model import compute_position_id_with_mask
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

__all__ = [
    "SUPPORTED_TRAINER_MODES",
    "check_v1_config",
    "expand_prompts",
    "weight_version",
    "trajectory_records",
    "generate_to_transfer_queue",
]

SUPPORTED_TRAINER_MODES = ("sync",)
# Keys of v1's prompt batch that steer generation; verl's agent-loop worker does not store them either.
_CONTROL_KEYS = ("validate", "agent_name", "__rollout_n__")


def check_v1_config(config) -> None:
    """Refuse v1 trainer settings LengthAwareRollout cannot serve (ValueError naming the key and value).

    Only `trainer.v1.trainer_mode=sync` is supported: `colocate_async` keeps prompts of several steps in flight
    and aborts and resumes requests around every weight sync, `separate_async` serves rollouts from standalone
    replicas with a non-naive weight transfer; a Coordinator step runs a whole batch to the end on one set of
    weights, and the `length_aware` backend launches no standalone replica and takes naive transfers only.
    """
    mode = config.trainer.get("v1", {}).get("trainer_mode", "sync")
    if mode not in SUPPORTED_TRAINER_MODES:
        raise ValueError(
            f"trainer.v1.trainer_mode={mode}: LengthAwareRollout supports verl's v1 trainer in sync mode only "
            "(a Coordinator step generates a whole batch on one set of weights; it cannot abort and resume requests "
            "around weight syncs, nor run as a standalone rollout pool): set trainer.v1.trainer_mode=sync, or "
            "trainer.use_v1=false"
        )


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
    validate = bool(_value(batch.get("validate"), 0)) if "validate" in batch.keys() else False
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
    rows: DataProto, output: DataProto, *, global_steps: int, version: int, timing: dict | None = None
) -> tuple[list[dict], list[dict]]:
    """verl's per-trajectory fields and tags, one of each per row of `output` (row r from `rows` row r).

    Fields, as verl's agent-loop writer stores them (1-D, unpadded): `prompts` (P,), `responses` (R,),
    `response_mask` and `loss_mask` (R,) int64, `input_ids` and `position_ids` (P + R,) int64,
    `rollout_log_probs` (R,) float32 (when `output` has them), `rm_scores` (R,) float32 with the reward on the
    last token (when scored), `num_turns` (2), `metrics` (verl's AgentLoopMetrics), `extra_fields`
    (`reward_extra_info`, `global_steps`, `min_global_steps`, `max_global_steps`), `multi_modal_inputs` ({}),
    and every column of `rows` (the prompt's dataset fields, `uid`, `global_steps`, `session_id`).
    Tags: `status` "success", `prompt_len`, `response_len`, `seq_len`, `global_steps`, `min_global_steps`
    and `max_global_steps` (= `version`).
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
                "global_steps": version,
                "min_global_steps": version,
                "max_global_steps": version,
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
                "min_global_steps": version,
                "max_global_steps": version,
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
        version = weight_version(global_steps, validate)
        fields, tags = trajectory_records(
            rows, output, global_steps=global_steps, version=version, timing=output.meta_info.get("timing")
        )
        tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields), tags=tags)
    except Exception:
        # verl's ReplayBuffer reads the group status; "running" would make it wait forever.
        tq.kv_batch_put(keys=uids, partition_id=partition, tags=[{"status": "failure"} for _ in uids])
        raise
    tq.kv_batch_put(keys=uids, partition_id=partition, tags=[{"status": "finished"} for _ in uids])
    return {key: value for key, value in output.meta_info.items() if key in ("timing", "rollout_len")}
