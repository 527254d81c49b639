"""GSM8K records in verl's RL format, checked with verl's own GSM8K reward function."""

import pandas as pd
import pytest
from verl.utils.reward_score import default_compute_score, gsm8k

from rollout_len.data import gsm8k_prompts
from rollout_len.verl.gsm8k import DATA_SOURCE, final_answer, gsm8k_records, write_gsm8k_parquet


def test_final_answer():
    assert final_answer("48/2 = <<48/2=24>>24\n#### 1,234") == "1234"
    assert final_answer("#### -3.5") == "-3.5"
    with pytest.raises(ValueError, match="no final"):
        final_answer("the answer is 7")


def test_reference_answers_score_full_marks_with_verl(tmp_path):
    rows = gsm8k_prompts(50)
    path = write_gsm8k_parquet(rows, tmp_path / "test.parquet", "test")
    records = pd.read_parquet(path).to_dict("records")
    assert records[0]["data_source"] == DATA_SOURCE and records[0]["extra_info"]["index"] == 0
    assert records[0]["prompt"][0]["role"] == "user" and rows[0]["question"] in records[0]["prompt"][0]["content"]
    for row, record in zip(rows, records):
        truth = record["reward_model"]["ground_truth"]
        assert gsm8k.compute_score(row["answer"], truth) == 1.0
        assert default_compute_score(record["data_source"], row["answer"], truth) == 1.0
    assert gsm8k_records(rows[:1], "train")[0]["extra_info"]["split"] == "train"
