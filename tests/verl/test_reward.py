"""Answer rewards through verl's DAPO reward manager, in one process (rollout_len.verl.reward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny
from tensordict import TensorDict
from verl import DataProto

from rollout_len.verl.reward import answer_reward_manager, score_batch


def byte_batch(texts: list[str], response_length: int, truth: str) -> DataProto:
    """Rows whose responses are `texts` as byte tokens (the tiny tokenizer: one token per character)."""
    rows, prompt_length = len(texts), 3
    responses = torch.zeros(rows, response_length, dtype=torch.int64)
    response_mask = torch.zeros(rows, response_length, dtype=torch.int64)
    for row, text in enumerate(texts):
        responses[row, : len(text)] = torch.tensor(list(text.encode()))
        response_mask[row, : len(text)] = 1
    prompt_mask = torch.ones(rows, prompt_length, dtype=torch.int64)
    tensors = {
        "prompts": torch.ones(rows, prompt_length, dtype=torch.int64),
        "responses": responses,
        "response_mask": response_mask,
        "attention_mask": torch.cat([prompt_mask, response_mask], 1),
    }
    return DataProto(
        batch=TensorDict(tensors, batch_size=rows),
        non_tensor_batch={
            "data_source": np.array(["openai/gsm8k"] * rows, dtype=object),
            "reward_model": np.array([{"ground_truth": truth}] * rows, dtype=object),
        },
    )


def test_reward_is_verls_gsm8k_checker_plus_the_overlong_penalty():
    manager = answer_reward_manager(
        tiny("llama").tokenizer, max_response_length=40, method="flexible", overlong_buffer=20, overlong_penalty=1.0
    )
    texts = ["So 9 * 2 = 18", "So it is 17", "x" * 30 + " 18", "y" * 40]
    # right, wrong, right but long, no answer at the budget
    expected = [1.0, 0.0, 1.0 - (33 - 20) / 20, 0.0 - (40 - 20) / 20]
    scores, details = score_batch(manager, byte_batch(texts, 40, "18"))
    assert scores.dtype == torch.float32 and scores.shape == (4, 40)
    assert scores.sum(dim=1).tolist() == pytest.approx(expected)
    for row, text in enumerate(texts):  # on the last response token only, as verl places it
        assert scores[row, len(text) - 1] == pytest.approx(expected[row])
        assert scores[row].abs().sum() == pytest.approx(abs(expected[row]))
        assert details[row]["response"] == text
        assert details[row]["reward"] == pytest.approx(expected[row])
    assert [d["acc"] for d in details] == [1.0, 0.0, 1.0, 0.0]
    assert [d["overlong_reward"] for d in details][2:] == pytest.approx([-13 / 20, -1.0])


def test_no_buffer_no_penalty_and_strict_reading():
    tokenizer = tiny("llama").tokenizer
    texts = ["y" * 40, "The answer is 18", "#### 18"]
    plain = score_batch(answer_reward_manager(tokenizer, max_response_length=40), byte_batch(texts, 40, "18"))[0]
    assert plain.sum(dim=1).tolist() == [0.0, 1.0, 1.0]  # number: the last number; no overlong penalty
    flexible = answer_reward_manager(tokenizer, max_response_length=40, method="flexible")
    assert score_batch(flexible, byte_batch(texts, 40, "18"))[0].sum(dim=1).tolist() == [0.0, 1.0, 1.0]
    strict = answer_reward_manager(tokenizer, max_response_length=40, method="strict", format_score=0.1)
    assert score_batch(strict, byte_batch(texts, 40, "18"))[0].sum(dim=1).tolist() == [0.0, 0.0, 1.0]


def test_number_reading_normalises_the_final_number():
    """Thousands separators and a trailing .0 or full stop do not matter; verl's string comparison rejects them."""
    tokenizer = tiny("llama").tokenizer
    texts = ["It is 1,234", "It is 1234.0", "It is 1234.", "1234 or 1235"]
    number = answer_reward_manager(tokenizer, max_response_length=40, method="number", format_score=0.1)
    assert score_batch(number, byte_batch(texts, 40, "1234"))[0].sum(dim=1).tolist() == pytest.approx([1, 1, 1, 0.1])
    flexible = answer_reward_manager(tokenizer, max_response_length=40, method="flexible")
    assert score_batch(flexible, byte_batch(texts, 40, "1234"))[0].sum(dim=1).tolist()[1:] == [0.0, 0.0, 0.0]


def test_bad_settings_are_refused():
    tokenizer = tiny("llama").tokenizer
    with pytest.raises(ValueError, match=r"method='loose'.*valid.*flexible"):
        answer_reward_manager(tokenizer, max_response_length=40, method="loose")
    with pytest.raises(ValueError, match=r"overlong_buffer must be in 0\.\.max_response_length \(40\), got 41"):
        answer_reward_manager(tokenizer, max_response_length=40, overlong_buffer=41)
