"""The ForeLen-lite dataset format: what `forelen build` writes and everything else reads.

    rollout-len forelen build --scenario rl --out data/forelen/rl      # writes the folder (build.py)
    card, tensors = load_dataset("data/forelen/rl")                    # reads and checks it
    prompts = load_prompts("data/forelen/rl", tensors["prompt/split"]) # the prompt texts, split-checked

A dataset is one folder of three files. P prompts, S = P * n samples (prompt-major: sample p * n + j is
the j-th sample of prompt p), C PLP checkpoints, d the policy's hidden size.

card.json
    scenario, model, layers (the decoder layers of the prompt features), plp_layer, every (k, the PLP
    checkpoint interval in tokens), seed, quick,
    sampling {n, temperature, top_p, max_new_tokens[, repetition_penalty where not 1]},
    counts {prompts, samples, checkpoints, train_prompts, val_prompts, test_prompts},
    lengths {mean, median, max, capped_fraction}, hidden_size, num_layers (the model's decoder layers;
    absent from older builds), build_time_s (generation seconds, summed over the runs of a resumed
    build), generated_tokens_per_s, wall_time_last_run_s, shards [{prompts [start, stop), seconds since
    the previous shard was saved, generated_tokens}] and plan (the settings and the prompts' sha256 a
    resumed build must match); older builds lack the last four.

data.safetensors
    prompt/{L}/{pooling}   (P, d) float32   the prompt's states at the output of decoder layer L pooled
                                            by `egtp`, `mean`, `max` or `last` (predictor/pooling.py),
                                            one per layer of card["layers"] and pooling
    prompt/split           (P,) int64       TRAIN, VAL or TEST (0, 1, 2); samples follow their prompt
    sample/prompt          (S,) int64       the prompt index of each sample
    sample/length          (S,) int64       tokens generated (stop token included)
    sample/capped          (S,) uint8       1: stopped by max_new_tokens (or the context), not a stop token
    ckpt/sample            (C,) int64       the sample of each PLP checkpoint
    ckpt/t                 (C,) int64       t, tokens already generated: 0, k, 2k, ... < the sample's length
                                            (predictor.plp.is_checkpoint)
    ckpt/pool              (C, d) float16   the online entropy-softmax pool (PLPTracker) of the decode
                                            taps at card["plp_layer"] so far: zeros at t = 0; at t >= 1
                                            the states of generated tokens 1 .. t-1, each weighted by the
                                            entropy of the distribution it produced (token t is not fed yet)

prompts.jsonl
    one {"prompt": text or chat messages, "split": "train" | "val" | "test"} per prompt, in prompt order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rollout_len.data import strict_json

__all__ = ["TRAIN", "VAL", "TEST", "SPLITS", "save_dataset", "load_dataset", "load_prompts"]

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = ("train", "val", "test")  # the names of TRAIN, VAL, TEST in prompts.jsonl
CARD, DATA, PROMPTS = "card.json", "data.safetensors", "prompts.jsonl"
# what the readers of a dataset take from its card (evaluate, train, ablation, attribution, baselines)
CARD_KEYS = ("scenario", "model", "layers", "plp_layer", "every", "hidden_size", "sampling")
_REQUIRED = ("sample/prompt", "sample/length", "sample/capped", "prompt/split", "ckpt/sample", "ckpt/t", "ckpt/pool")


def save_dataset(
    folder: str | Path, card: dict, tensors: dict[str, torch.Tensor], prompts: list, split: np.ndarray
) -> Path:
    """Write the three files of a dataset into `folder` (created if needed); returns the folder.
    `prompts` in prompt order, `split` (P,) TRAIN / VAL / TEST per prompt."""
    missing = [k for k in _REQUIRED if k not in tensors]
    if missing:
        raise ValueError(f"a ForeLen-lite dataset needs the tensors {missing}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / DATA))
    with open(folder / PROMPTS, "w") as f:
        for prompt, s in zip(prompts, split):
            f.write(json.dumps({"prompt": prompt, "split": SPLITS[s]}) + "\n")
    (folder / CARD).write_text(strict_json(card, indent=2))  # a NaN score: null
    return folder


def load_dataset(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(card, tensors) of a built dataset; a missing or corrupt folder is a clear error."""
    folder = Path(folder)
    for name in (CARD, DATA):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing: not a ForeLen-lite dataset (run `rollout-len forelen build`)"
            )
    try:
        card = json.loads((folder / CARD).read_text())
        tensors = load_file(str(folder / DATA))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise ValueError(f"{folder}: corrupt dataset ({err})") from err
    if not isinstance(card, dict):
        raise ValueError(f"{folder}/{CARD}: not a JSON object")
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"{folder}/{CARD} lacks {missing}: not a card `rollout-len forelen build` wrote")
    missing = [k for k in _REQUIRED if k not in tensors]
    if missing:
        raise ValueError(f"{folder}/{DATA} lacks {missing}")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value.float()).all():
            raise ValueError(f"{folder}/{DATA}: {key} contains NaN/inf")
    return card, tensors


def load_prompts(folder: str | Path, prompt_split: torch.Tensor) -> list:
    """Prompt texts (or chat messages) in prompt-index order from prompts.jsonl, checked against the
    dataset's `prompt/split` (P,): same count, same split per prompt."""
    path = Path(folder) / PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the prompt-text baselines need the prompts of the build")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            rows.append((row["prompt"], row["split"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: not a {{'prompt', 'split'}} record ({err})") from None
    if len(rows) != len(prompt_split):
        raise ValueError(f"{path} has {len(rows)} prompts, {DATA} has {len(prompt_split)}")
    for i, (_, split) in enumerate(rows):
        expected = SPLITS[int(prompt_split[i])]
        if split != expected:
            raise ValueError(f"{path}: prompt {i} is in split {split!r} there but {expected!r} in {DATA}")
    return [prompt for prompt, _ in rows]
