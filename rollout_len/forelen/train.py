"""The PLP head as an artifact: fit it on ForeLen-lite datasets, save it with a card, score it elsewhere.

    rollout-len forelen train --data data/forelen/rl [--data data/forelen/reasoning] --out heads/rl
    rollout-len forelen eval --head heads/rl --data data/forelen/longseq --methods plp,survival
    RolloutConfig(head_path="heads/rl")   # the Coordinator starts from it and keeps re-fitting online

The head folder holds head.safetensors and head.json (`SoftLabelHead.save`) and card.json:

    model, layer (1..num_layers), num_layers (null for datasets built without it), hidden_size,
    in_dim (2 * hidden_size + 2), every (the datasets' k, PLP checkpoint intervals), num_bins (K), bins (edges),
    fit (the FitConfig), data [{path, scenario, samples, checkpoints, train_checkpoints, val_checkpoints}],
    val {scenario: the head's remaining-length metrics on that dataset's val split: admission, in_flight, by_t}.

The head is fit as `forelen eval`'s `plp` row fits it (the same examples, FitConfig, seed): on the train
checkpoints of every dataset given, the epoch chosen on their val checkpoints. Datasets trained
together must share the model, the PLP layer and the hidden size.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from rollout_len.baselines.base import ForeLenData, remaining_metrics
from rollout_len.forelen.dataset import TEST, TRAIN, VAL, load_dataset
from rollout_len.predictor.head import SoftLabelHead, check_card, load_card
from rollout_len.predictor.plp import clamp_to_budget, plp_features
from rollout_len.predictor.train import FitConfig, fit_head

__all__ = ["plp_examples", "plp_predictions", "plp_scores", "train_head", "load_head", "dataset_identity"]


def plp_examples(data: ForeLenData) -> torch.Tensor:
    """A dataset's PLP checkpoints as head inputs z (C, 2d + 2), in checkpoint order; their targets
    are `data.ckpt_remaining`, their splits `data.ckpt_split`."""
    t = data.tensors
    prompt = t[f"prompt/{data.card['plp_layer']}/egtp"][data.sample_prompt[data.ckpt_sample]]
    return plp_features(prompt, t["ckpt/pool"].float(), data.ckpt_t, data.ckpt_budget_left)


def plp_predictions(
    head: SoftLabelHead, data: ForeLenData, split: int = TEST
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows (C,), point (C,), q90 (C,)) of a PLP head on one split's checkpoints `data.checkpoints(split)`:
    the head's point prediction of the remaining length (its `config.point`) and its 90% quantile,
    both capped at the budget left."""
    rows = data.checkpoints(split)
    point, quantiles = head.predict(plp_examples(data)[rows], quantiles=(0.9,))
    pred, q90 = clamp_to_budget(point, quantiles, data.ckpt_budget_left[rows])
    return rows, pred, q90[:, 0]


def plp_scores(head: SoftLabelHead, data: ForeLenData, split: int = TEST) -> dict:
    """{"admission": the t = 0 checkpoints' metrics, "in_flight", "by_t"} of a PLP head on one split's
    checkpoints: remaining lengths, the head's point prediction (its `config.point`) capped at the
    budget left, and `q90_coverage` of its predicted 90% quantile (`remaining_metrics`)."""
    rows, pred, q90 = plp_predictions(head, data, split)
    result = remaining_metrics(pred, data, rows, q90)
    return {"admission": result["by_t"][0], **result} if 0 in result["by_t"] else result


def dataset_identity(card: dict) -> dict:
    """What a PLP head must share with a dataset to read its features: model, layer, feature size."""
    return {"model": card["model"], "layer": card["plp_layer"], "in_dim": 2 * card["hidden_size"] + 2}


def train_head(folders: list[str], out: str | Path, config: FitConfig | None = None) -> dict:
    """Fit a PLP head on the datasets' train checkpoints (epoch chosen on val), save it to `out` with
    its card (module docstring) and return the card as saved. ValueError when the datasets differ in model,
    layer or hidden size, or a split has no checkpoints."""
    if not folders:
        raise ValueError("forelen train needs at least one dataset (--data)")
    config = config or FitConfig()
    datasets = [ForeLenData(*load_dataset(folder), folder) for folder in folders]
    first = dataset_identity(datasets[0].card)
    for folder, data in zip(folders[1:], datasets[1:]):
        check_card(first, dataset_identity(data.card), f"dataset {folder}")
    xs = [plp_examples(data) for data in datasets]
    parts = {}
    for name, split in (("train", TRAIN), ("val", VAL)):
        rows = [data.ckpt_split == split for data in datasets]
        if not any(r.any() for r in rows):
            raise ValueError(f"no {name} checkpoints in {folders}: the datasets are too small")
        x = torch.cat([x[r] for x, r in zip(xs, rows)])
        y = torch.cat([data.ckpt_remaining[r] for data, r in zip(datasets, rows)])
        parts[name] = (x, y)
    head = fit_head(*parts["train"], *parts["val"], config)
    card = {
        **first,
        "num_layers": datasets[0].card.get("num_layers"),
        "hidden_size": datasets[0].card["hidden_size"],
        "every": sorted({data.card["every"] for data in datasets}),
        "num_bins": head.bins.num_bins,
        "bins": list(head.bins.edges),
        "fit": asdict(config),
        "data": [_data_entry(folder, data) for folder, data in zip(folders, datasets)],
        "val": {data.card["scenario"]: plp_scores(head, data, VAL) for data in datasets},
    }
    head.save(out, card=card)
    return load_card(out)  # as written: JSON keys are strings (by_t)


def _data_entry(folder: str, data: ForeLenData) -> dict:
    return {
        "path": str(Path(folder).resolve()),
        "scenario": data.card["scenario"],
        "samples": len(data.lengths),
        "checkpoints": len(data.ckpt_t),
        "train_checkpoints": int((data.ckpt_split == TRAIN).sum()),
        "val_checkpoints": int((data.ckpt_split == VAL).sum()),
    }


def load_head(folder: str | Path) -> tuple[SoftLabelHead, dict]:
    """A head saved by `train_head` and its card (FileNotFoundError when either is missing)."""
    card = load_card(folder)
    return SoftLabelHead.load(folder, expect_in_dim=card.get("in_dim")), card
