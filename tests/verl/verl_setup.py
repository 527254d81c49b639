"""Shared pieces of the verl tests: the documented overrides, verl config composition, verl batches."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "verl.md"
RECIPE_DIR = REPO / "recipes" / "verl"


def documented_overrides() -> list[str]:
    """The override lines docs/verl.md tells users to add (the block after its marker comment)."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- verl-overrides.*?-->\s*```text\n(.*?)```", text, re.S)
    assert match, "docs/verl.md lost its marked block of verl overrides"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def v1_overrides() -> list[str]:
    """The documented overrides without `trainer.use_v1=false`: verl's default v1 trainer (sync mode)."""
    return [line for line in documented_overrides() if line.split("=", 1)[0] != "trainer.use_v1"]


def compose_ppo_config(overrides: list[str]):
    """verl's own `ppo_trainer` config, composed by Hydra from verl's config folder."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def rlhf_batch(config, repeat: int):
    """A generation batch as verl's trainer builds it: RLHFDataset rows, a uid each, repeated n times in a row."""
    from verl import DataProto
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    tokenizer = hf_tokenizer(config.actor_rollout_ref.model.path)
    dataset = RLHFDataset(data_files=config.data.train_files, tokenizer=tokenizer, config=config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    batch.non_tensor_batch["uid"] = np.array([f"uid-{i}" for i in range(len(batch))], dtype=object)
    return batch.repeat(repeat_times=repeat, interleave=True), tokenizer
