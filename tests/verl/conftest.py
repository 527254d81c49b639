"""Fixtures for the verl tests: a tiny model folder, a GSM8K parquet in verl's format, verl configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny
from verl_setup import compose_ppo_config, documented_overrides

from rollout_len.data import gsm8k_prompts
from rollout_len.verl.gsm8k import write_gsm8k_parquet

NUM_PROBLEMS = 4


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A Hugging Face folder with the tiny random llama policy and its ChatML byte tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    policy = tiny("llama")
    policy.model.save_pretrained(folder)
    policy.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gsm8k_parquet(tmp_path_factory) -> Path:
    return write_gsm8k_parquet(gsm8k_prompts(NUM_PROBLEMS), tmp_path_factory.mktemp("gsm8k") / "train.parquet", "train")


@pytest.fixture(scope="session")
def make_config(model_dir, gsm8k_parquet):
    """`make_config(*extra)`: ppo_trainer + the documented lines + a tiny GRPO setup + `extra` overrides."""

    def make(*extra: str):
        setup = [
            f"actor_rollout_ref.model.path={model_dir}",
            f"data.train_files={gsm8k_parquet}",
            f"data.val_files={gsm8k_parquet}",
            "data.max_prompt_length=512",
            "data.max_response_length=12",
            "actor_rollout_ref.rollout.n=3",
            "algorithm.adv_estimator=grpo",
        ]
        return compose_ppo_config(documented_overrides() + setup + list(extra))

    return make
