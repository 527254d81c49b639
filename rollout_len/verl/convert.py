"""Conversion between verl's generation batch (DataProto) and rollout_len samples.

In: verl's trainer hands over a batch whose rows are chat prompts (`raw_prompt`, as verl's
RLHFDataset builds them) with a `uid` per row: verl's GRPO group (`DataProto.repeat(n)` copies a
prompt's uid to its n rows). Each row becomes one Sample, in row order: its id is the row
("0", "1", ...), its group its uid, its prompt its own `raw_prompt`, tokenized by verl's own
Continuous Token builder (the tokenizer path of verl's single-turn agent loop), so the token ids are
the ones verl would send to vLLM. Nothing is inferred from neighbouring rows.

Out: row r of verl's agent-loop fields comes from samples[r], with verl's layout and dtypes:
    prompts            (B, prompt_length)   int64, left-padded with the pad id
    responses          (B, response_length) int64, right-padded with the pad id
    response_mask      (B, response_length) int64, 1 on generated tokens
    input_ids          (B, prompt_length + response_length) = prompts ++ responses
    attention_mask     same shape, int64, 1 on real tokens
    position_ids       same shape, int64, 0.. from the first real token (padding 0)
    rollout_log_probs  (B, response_length) float32, the sampler's log-probs, 0 on padding
    rm_scores          (B, response_length) float32, the reward on the last response token
and non-tensor fields `__num_turns__` (2: one user turn, one assistant turn) and
`multi_modal_inputs` (empty per row; verl's trainer reads the key).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.utils.model import compute_position_id_with_mask

from rollout_len.sample import Sample
from rollout_len.verl.settings import sampling_params  # SamplingParams from verl's keys, errors naming them

__all__ = ["encode_prompts", "sampling_params", "to_samples", "to_data_proto", "attach_rewards"]

NUM_TURNS = 2  # single turn: the user's prompt and the assistant's response


def _text_messages(messages: object, row: int) -> list[dict]:
    messages = list(messages) if isinstance(messages, (list, tuple, np.ndarray)) else messages
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"row {row}: raw_prompt must be a non-empty list of chat messages, got {type(messages).__name__}"
        )
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(
                f"row {row}: LengthAwareRollout takes text chat messages only (string 'content'); "
                f"multimodal prompts are not supported, got {message!r:.120}"
            )
    return messages


def encode_prompts(raw_prompts: list, token_builder, prompt_length: int) -> list[list[int]]:
    """Token ids of each row's chat prompt, through verl's Continuous Token builder (assistant turn opened).

    Args:
        raw_prompts: one list of chat messages ({"role", "content": str}) per row.
        token_builder: verl's builder (`create_continuous_token_builder`); identical messages are
            tokenized once.
        prompt_length: the most tokens a prompt may have (`actor_rollout_ref.rollout.prompt_length`).

    Returns one list of token ids per row, in row order. Raises ValueError for a row that is not a
    list of text messages, and for a prompt over `prompt_length` tokens (verl's agent loop would
    silently cut its beginning off).
    """
    encoded, cache = [], {}
    for row, messages in enumerate(raw_prompts):
        messages = _text_messages(messages, row)
        key = json.dumps(messages, sort_keys=True, default=repr)
        if key not in cache:
            cache[key] = list(token_builder.build_initial_tokens(messages))
        ids = cache[key]
        if len(ids) > prompt_length:
            raise ValueError(
                f"prompt of row {row} has {len(ids)} tokens, more than actor_rollout_ref.rollout.prompt_length="
                f"{prompt_length} (set from data.max_prompt_length): raise data.max_prompt_length or set "
                "data.filter_overlong_prompts=true so verl's dataset drops such prompts"
            )
        encoded.append(list(ids))
    return encoded


def to_samples(batch: DataProto, token_builder, rollout, seed: int) -> list[Sample]:
    """One fresh Sample per row of a verl generation batch, in row order.

    Args:
        batch: verl's generation batch; reads `raw_prompt` (chat messages per row), `uid` (optional:
            without it every row is its own group) and meta_info["validate"] (True: `rollout.val_kwargs`).
        token_builder: verl's Continuous Token builder for the policy's tokenizer.
        rollout: verl's `actor_rollout_ref.rollout` config (prompt_length, response_length, sampling).
        seed: the call's seed; a sample's random numbers come from (seed, sample id).

    Returns samples with `sample_id` = the row index as a string, `group_id` = the row's uid (None
    without a uid column). Raises ValueError for a batch without `raw_prompt`, REMAX batches, and
    what `encode_prompts` refuses.
    """
    if "raw_prompt" not in batch.non_tensor_batch:
        raise ValueError(
            "the batch has no 'raw_prompt': LengthAwareRollout reads chat prompts as verl's RLHFDataset makes them"
        )
    if "__do_sample__" in batch.non_tensor_batch:
        raise ValueError(
            "algorithm.adv_estimator=remax mixes sampled and greedy rows in one batch, which LengthAwareRollout "
            "does not support; use grpo (or another estimator without a greedy baseline)"
        )
    prompts = encode_prompts(list(batch.non_tensor_batch["raw_prompt"]), token_builder, int(rollout.prompt_length))
    uids = batch.non_tensor_batch.get("uid")
    params = sampling_params(rollout, bool(batch.meta_info.get("validate", False)))
    return [
        Sample(str(row), prompt, params, seed=seed, group_id=None if uids is None else str(uids[row]))
        for row, prompt in enumerate(prompts)
    ]


def to_data_proto(samples: list[Sample], prompt_length: int, response_length: int, pad_token_id: int) -> DataProto:
    """verl's rollout fields from finished samples: row r from samples[r] (its own prompt and response).

    Raises ValueError for no samples, an unfinished sample, a response of 0 or more than
    `response_length` tokens (or log-probs that do not match it), and a prompt over `prompt_length`.
    """
    if not samples:
        raise ValueError("to_data_proto needs at least one sample")
    rows = len(samples)
    prompts = torch.full((rows, prompt_length), pad_token_id, dtype=torch.int64)
    prompt_mask = torch.zeros((rows, prompt_length), dtype=torch.int64)
    responses = torch.full((rows, response_length), pad_token_id, dtype=torch.int64)
    response_mask = torch.zeros((rows, response_length), dtype=torch.int64)
    log_probs = torch.zeros((rows, response_length), dtype=torch.float32)
    for row, sample in enumerate(samples):
        prompt = sample.prompt_ids
        if not sample.status.is_finished:
            raise ValueError(f"sample {sample.sample_id!r} is not finished ({sample.status.name})")
        if not 0 < sample.num_output <= response_length or len(sample.logprobs) != sample.num_output:
            raise ValueError(
                f"sample {sample.sample_id!r} has {sample.num_output} tokens and {len(sample.logprobs)} log-probs; "
                f"expected 1..{response_length} of each (actor_rollout_ref.rollout.response_length)"
            )
        if len(prompt) > prompt_length:
            raise ValueError(f"prompt of row {row} has {len(prompt)} tokens, more than prompt_length={prompt_length}")
        prompts[row, prompt_length - len(prompt) :] = torch.tensor(prompt, dtype=torch.int64)
        prompt_mask[row, prompt_length - len(prompt) :] = 1
        responses[row, : sample.num_output] = torch.tensor(sample.output_ids, dtype=torch.int64)
        response_mask[row, : sample.num_output] = 1
        log_probs[row, : sample.num_output] = torch.tensor(sample.logprobs, dtype=torch.float32)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    batch = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "response_mask": response_mask,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": compute_position_id_with_mask(attention_mask),
            "rollout_log_probs": log_probs,
        },
        batch_size=rows,
    )
    multi_modal_inputs = np.empty(rows, dtype=object)
    multi_modal_inputs[:] = [{} for _ in range(rows)]
    non_tensor = {"__num_turns__": np.full(rows, NUM_TURNS, dtype=np.int32), "multi_modal_inputs": multi_modal_inputs}
    return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info={})


def attach_rewards(output: DataProto, results: list[dict]) -> None:
    """Put verl reward-loop results ({"reward_score", "reward_extra_info"} per row) into `output`.

    As verl's agent loop does: `rm_scores` holds each reward on the row's last response token,
    each extra-info key becomes a non-tensor field, and meta_info["reward_extra_keys"] lists them.
    """
    if len(results) != len(output):
        raise ValueError(f"{len(results)} reward results for {len(output)} rows")
    response_mask = output.batch["response_mask"]
    last = response_mask.sum(dim=1) - 1
    rm_scores = torch.zeros_like(response_mask, dtype=torch.float32)
    rm_scores[torch.arange(len(results)), last] = torch.tensor(
        [float(r["reward_score"]) for r in results], dtype=torch.float32
    )
    output.batch["rm_scores"] = rm_scores
    keys = list(results[0].get("reward_extra_info", {}).keys())
    for key in keys:
        output.non_tensor_batch[key] = np.array([r["reward_extra_info"][key] for r in results])
    output.meta_info["reward_extra_keys"] = keys
