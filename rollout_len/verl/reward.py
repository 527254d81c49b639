"""Answer rewards with verl's DAPO reward manager, in one process (recipes/grpo_demo).

    manager = answer_reward_manager(tokenizer, max_response_length=256, method="number")
    scores, details = score_batch(manager, data)   # data: verl rollout fields + data_source, reward_model

The reward is 1 for a right final answer (the row's `reward_model.ground_truth`), else 0 (or
`format_score`), read by one of ANSWER_METHODS: `number`, this project's reading of the last number
(`rollout_len.data.answer_correct`: "1,234" and "1234.0" both read as 1234), or verl's GSM8K checker
(`verl.utils.reward_score.gsm8k`, `flexible` or `strict`). On top, DAPO's overlong penalty: 0 up to
(max_response_length - overlong_buffer) response tokens, then falling linearly to -overlong_penalty
at max_response_length.
"""

from __future__ import annotations

import asyncio

import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.utils.reward_score import gsm8k

from rollout_len.data import answer_correct

__all__ = ["ANSWER_METHODS", "answer_reward_manager", "score_batch"]

# number: the last number, compared as a number; flexible: verl's GSM8K checker on the last number, compared
# as a string; strict: verl's GSM8K checker on the number after '####'.
ANSWER_METHODS = ("number", "flexible", "strict")


def answer_reward_manager(
    tokenizer,
    *,
    max_response_length: int,
    method: str = "number",
    format_score: float = 0.0,
    overlong_buffer: int = 0,
    overlong_penalty: float = 1.0,
) -> DAPORewardManager:
    """verl's DAPO reward manager with an answer checker and its overlong penalty.

    Args:
        tokenizer: decodes the responses.
        max_response_length: the response budget in tokens, where the penalty reaches -overlong_penalty.
        method: how the answer is read, one of ANSWER_METHODS.
        format_score: the reward of a wrong answer (`number`: any; verl's checker: one it could read);
            a right one scores 1.0.
        overlong_buffer: tokens before the budget over which the penalty grows, 0..max_response_length;
            0 turns the penalty off.
        overlong_penalty: the penalty at the budget (>= 0).

    Raises ValueError for an unknown method or a buffer outside 0..max_response_length.
    """
    if method not in ANSWER_METHODS:
        raise ValueError(f"method={method!r}: unknown answer reading; valid: {list(ANSWER_METHODS)}")
    if not 0 <= overlong_buffer <= max_response_length:
        raise ValueError(
            f"overlong_buffer must be in 0..max_response_length ({max_response_length}), got {overlong_buffer}"
        )

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        if method == "number":
            return 1.0 if answer_correct(solution_str, ground_truth) else format_score
        return gsm8k.compute_score(solution_str, ground_truth, method=method, format_score=format_score)

    overlong = {"enable": overlong_buffer > 0, "len": overlong_buffer, "penalty_factor": overlong_penalty, "log": True}
    config = OmegaConf.create(
        {"reward": {"reward_kwargs": {"max_resp_len": max_response_length, "overlong_buffer_cfg": overlong}}}
    )
    return DAPORewardManager(config, tokenizer, compute_score)


def score_batch(manager: DAPORewardManager, data: DataProto) -> tuple[torch.Tensor, list[dict]]:
    """Run a verl reward manager over every row of a batch, in this process.

    `data` holds verl's rollout fields (`responses`, `response_mask`, `attention_mask`, ...) and the
    dataset's `data_source` and `reward_model` per row. Returns the token-level scores (B,
    response_length) float32, each row's reward on its last response token as verl places it, and one
    dict per row: {"reward", "acc" (the checker's score), "overlong_reward" (0 without the penalty),
    "response" (the decoded text)}.
    """
    results = manager.loop.run_until_complete(
        asyncio.gather(*(manager.run_single(data[row : row + 1]) for row in range(len(data))))
    )
    rewards = [float(r["reward_score"]) for r in results]
    details = []
    for row, (reward, result) in enumerate(zip(rewards, results)):
        extra = result["reward_extra_info"]
        length = int(data.batch["response_mask"][row].sum())
        text = manager.tokenizer.decode(data.batch["responses"][row, :length].tolist(), skip_special_tokens=True)
        details.append(
            {
                "reward": reward,
                "acc": float(extra["acc"]),
                "overlong_reward": float(extra.get("overlong_reward", 0.0)),
                "response": text,
            }
        )
    return manager.assemble_rm_scores(data, rewards), details
