"""Conversion between verl's generation batch (DataProto) and rollout_len samples.

In: verl's trainer hands over a batch whose rows are chat prompts (`raw_prompt`, as verl's
RLHFDataset builds them) with a `uid` per prompt, each prompt repeated n times in a row
(`DataProto.repeat(n, interleave=True)`). Prompts are tokenized by verl's own Continuous Token
builder, the tokenizer path of verl's single-turn agent loop, so the token ids are the ones verl
would send to vLLM.

Out: the fields of verl's agent loop output, with its layout and dtypes:
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

from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.utils.model import compute_position_id_with_mask

from rollout_len.sample import Sample, SamplingParams

__all__ = [
    "RolloutRequest",
    "group_size",
    "encode_prompts",
    "sampling_params",
    "rollout_request",
    "to_data_proto",
    "attach_rewards",
]

NUM_TURNS = 2  # single turn: the user's prompt and the assistant's response


@dataclass
class RolloutRequest:
    """What to generate for one verl batch. Rows are prompt-major: row r is sample r % n of prompt r // n."""

    prompts: list[list[int]]  # token ids, one per prompt
    n: int  # samples per prompt
    params: SamplingParams

    @property
    def num_rows(self) -> int:
        return len(self.prompts) * self.n

    def row_prompt(self, row: int) -> list[int]:
        return self.prompts[row // self.n]


def group_size(uids: np.ndarray | None) -> int:
    """n, the length of the runs of equal uid in a batch that verl repeated with interleave=True.

    Runs of unequal length (verl pads validation batches with copies of the first rows) give 1:
    every row is then its own prompt with one sample, which is correct, only less shared.
    """
    if uids is None or len(uids) == 0:
        return 1
    runs, start = [], 0
    for row in range(1, len(uids) + 1):
        if row == len(uids) or uids[row] != uids[start]:
            runs.append(row - start)
            start = row
    return runs[0] if len(set(runs)) == 1 else 1


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
    """Token ids of each chat prompt, through verl's Continuous Token builder (assistant turn opened).

    A prompt over `prompt_length` tokens raises ValueError (verl's agent loop would silently cut
    its beginning off).
    """
    encoded = []
    for row, messages in enumerate(raw_prompts):
        ids = list(token_builder.build_initial_tokens(_text_messages(messages, row)))
        if len(ids) > prompt_length:
            raise ValueError(
                f"prompt {row} has {len(ids)} tokens, more than actor_rollout_ref.rollout.prompt_length="
                f"{prompt_length} (set from data.max_prompt_length): raise data.max_prompt_length or set "
                "data.filter_overlong_prompts=true so verl's dataset drops such prompts"
            )
        encoded.append(ids)
    return encoded


def sampling_params(rollout, validate: bool = False) -> SamplingParams:
    """SamplingParams from verl's rollout config (`val_kwargs` for validation batches, as verl does)."""
    source = rollout.val_kwargs if validate else rollout
    top_k = int(source.top_k)
    return SamplingParams(
        temperature=float(source.temperature),
        top_p=float(source.top_p),
        top_k=0 if top_k < 0 else top_k,  # verl: -1 = whole vocabulary; here 0
        max_new_tokens=int(rollout.response_length),
        ignore_stop=bool(rollout.ignore_eos),
    )


def rollout_request(batch: DataProto, token_builder, rollout) -> RolloutRequest:
    """The prompts, n and sampling parameters of a verl generation batch."""
    if "raw_prompt" not in batch.non_tensor_batch:
        raise ValueError(
            "the batch has no 'raw_prompt': LengthAwareRollout reads chat prompts as verl's RLHFDataset makes them"
        )
    if "__do_sample__" in batch.non_tensor_batch:
        raise ValueError(
            "algorithm.adv_estimator=remax mixes sampled and greedy rows in one batch, which LengthAwareRollout "
            "does not support; use grpo (or another estimator without a greedy baseline)"
        )
    n = group_size(batch.non_tensor_batch.get("uid"))
    raw_prompts = batch.non_tensor_batch["raw_prompt"]
    prompts = encode_prompts(list(raw_prompts[::n]), token_builder, int(rollout.prompt_length))
    return RolloutRequest(prompts, n, sampling_params(rollout, bool(batch.meta_info.get("validate", False))))


def to_data_proto(
    request: RolloutRequest, groups: list[list[Sample]], prompt_length: int, response_length: int, pad_token_id: int
) -> DataProto:
    """verl's rollout fields from finished samples: `groups[i][j]` is sample j of `request.prompts[i]`."""
    if len(groups) != len(request.prompts) or any(len(group) != request.n for group in groups):
        raise ValueError(
            f"expected {len(request.prompts)} groups of {request.n} samples, got sizes {[len(g) for g in groups]}"
        )
    rows = request.num_rows
    prompts = torch.full((rows, prompt_length), pad_token_id, dtype=torch.int64)
    prompt_mask = torch.zeros((rows, prompt_length), dtype=torch.int64)
    responses = torch.full((rows, response_length), pad_token_id, dtype=torch.int64)
    response_mask = torch.zeros((rows, response_length), dtype=torch.int64)
    log_probs = torch.zeros((rows, response_length), dtype=torch.float32)
    for row in range(rows):
        sample = groups[row // request.n][row % request.n]
        prompt = request.row_prompt(row)
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
