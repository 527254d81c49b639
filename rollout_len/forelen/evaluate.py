"""Evaluate length predictors on ForeLen-lite datasets.

    rollout-len forelen eval --data data/forelen/rl --data data/forelen/reasoning --methods all --json out.json
    rollout-len forelen plp-curve --data data/forelen/rl --json curve.json --png curve.png

Prompt-only methods (`egtp`, `mean`, `max`, `last`: the pooling of the prompt's states at one layer)
fit a SoftLabelHead on the train prompts' samples, pick the epoch on val, and report test metrics.
`plp` fits one head on PLP checkpoints (t = 0, k, 2k, ...) to the remaining length; its table row is
at t = 0 (prompt only); the curve gives MAE by t. The baselines (`constant`, `ssjf_reg`, `ssjf_mc`,
`s3`, `ltr_c`, `trail`, `pia`, `tpv`, `history`, `siblings`) are in rollout_len/baselines/. Progressive
methods (`plp`, `constant`, `trail`, `tpv`, `siblings`) also report the remaining-length error at
each checkpoint t of the test samples (`by_t`) and over all of them (`checkpoints`).
"""

from __future__ import annotations

import torch

from rollout_len.baselines import BASELINES, ForeLenData, evaluate_baseline
from rollout_len.baselines.encoder import ENCODERS
from rollout_len.forelen.dataset import TEST, TRAIN, VAL, load_dataset
from rollout_len.predictor.plp import clamp_to_budget, plp_features
from rollout_len.predictor.pooling import POOLINGS
from rollout_len.predictor.train import FitConfig, evaluate, fit_head

__all__ = ["evaluate_methods", "plp_curve", "format_table", "METHODS"]

METHODS = ("constant", *POOLINGS, "plp", *(m for m in BASELINES if m != "constant"))  # constant: the floor to beat


def _sample_split(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return t["prompt/split"][t["sample/prompt"]]  # (S,)


def _fit_and_test(x, y, split, config: FitConfig):
    train, val, test = (split == i for i in (TRAIN, VAL, TEST))
    if any(int(m.sum()) == 0 for m in (train, val, test)):
        raise ValueError("every split needs examples; the dataset is too small")
    head = fit_head(x[train], y[train], x[val], y[val], config)
    return head, head.predict(x[test])[0], y[test]


def _prompt_only(card, t, method: str, layer: int, config: FitConfig) -> dict:
    key = f"prompt/{layer}/{method}"
    if key not in t:
        raise ValueError(f"dataset has no {key}; layers built: {card['layers']}")
    x = t[key][t["sample/prompt"]]
    _, pred, true = _fit_and_test(x, t["sample/length"].float(), _sample_split(t), config)
    return evaluate(pred, true)


def _plp_examples(card, t) -> tuple[torch.Tensor, ...]:
    s = t["ckpt/sample"]
    prompt = t[f"prompt/{card['plp_layer']}/egtp"][t["sample/prompt"][s]]
    steps = t["ckpt/t"]
    budget_left = card["sampling"]["max_new_tokens"] - steps
    x = plp_features(prompt, t["ckpt/pool"].float(), steps, budget_left)
    y = (t["sample/length"][s] - steps).float()
    return x, y, _sample_split(t)[s], steps, budget_left


def _plp(card, t, config: FitConfig) -> tuple[dict, dict[int, dict], dict]:
    x, y, split, steps, budget_left = _plp_examples(card, t)
    head, _, _ = _fit_and_test(x, y, split, config)
    test = split == TEST
    mean, quantiles = head.predict(x[test])
    pred, _ = clamp_to_budget(mean, quantiles, budget_left[test])
    by_t = {
        int(step): evaluate(pred[steps[test] == step], y[test][steps[test] == step])
        for step in torch.unique(steps[test]).tolist()
    }
    return by_t[0], by_t, evaluate(pred, y[test])


def evaluate_methods(
    folders: list[str],
    methods: list[str],
    layer: int | None = None,
    config: FitConfig | None = None,
    encoder: str = "all-minilm-l6-v2",
) -> dict:
    """{scenario: {method: metrics}} plus {scenario: {"_card": ...}}; `encoder`: the baselines' proxy encoder."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {list(METHODS)} or 'all'")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown proxy encoder {encoder!r}; valid: {list(ENCODERS)}")
    config = config or FitConfig()
    results: dict = {}
    for folder in folders:
        card, t = load_dataset(folder)
        chosen = layer if layer is not None else card["plp_layer"]
        scenario = {"_card": {k: card[k] for k in ("model", "counts", "lengths", "sampling")}, "_layer": chosen}
        data = ForeLenData(card, t, folder, encoder)
        for method in methods:
            if method == "plp":
                at_start, by_t, checkpoints = _plp(card, t, config)
                scenario["plp"] = {**at_start, "by_t": by_t, "checkpoints": checkpoints}
            elif method in BASELINES:
                scenario[method] = evaluate_baseline(BASELINES[method](), data)
            else:
                scenario[method] = _prompt_only(card, t, method, chosen, config)
        results[card["scenario"]] = scenario
    return results


def plp_curve(folder: str, config: FitConfig | None = None) -> dict[int, dict]:
    card, t = load_dataset(folder)
    _, by_t, _ = _plp(card, t, config or FitConfig())
    return by_t


CURVE_STEPS = (0, 32, 64, 128, 256, 384, 512, 768)  # decode steps shown in the printed by-t table


def format_table(results: dict) -> str:
    lines = []
    for scenario, rows in results.items():
        lengths = rows["_card"]["lengths"]
        measured = {k: v for k, v in rows.items() if not k.startswith("_") and "skipped" not in v}
        test_n = next(iter(measured.values()))["n"] if measured else 0
        lines.append(
            f"{scenario} (layer {rows['_layer']}; test n={test_n}, "
            f"mean length {lengths['mean']:.0f}, capped {lengths['capped_fraction']:.0%})"
        )
        lines.append(f"  {'method':9s} {'MAE':>7s} {'RMSE':>7s} {'±50':>6s} {'±100':>6s} {'tau':>6s}")
        for method, m in rows.items():
            if method.startswith("_"):
                continue
            if "skipped" in m:
                lines.append(f"  {method:9s} n/a: {m['skipped']}")
            else:
                lines.append(
                    f"  {method:9s} {m['mae']:7.1f} {m['rmse']:7.1f} {m['acc50']:6.2f} {m['acc100']:6.2f} "
                    f"{m['kendall_tau']:6.2f}"
                )
        curves = {k: v for k, v in measured.items() if "by_t" in v}
        if curves:
            steps = [s for s in CURVE_STEPS if any(s in v["by_t"] for v in curves.values())]
            lines.append("  remaining-length MAE at decode step t (test checkpoints; 'all': every checkpoint)")
            lines.append(f"  {'method':9s} " + " ".join(f"{f't={s}':>7s}" for s in steps) + f" {'all':>7s}")
            for method, m in curves.items():
                cells = [f"{m['by_t'][s]['mae']:7.1f}" if s in m["by_t"] else f"{'-':>7s}" for s in steps]
                lines.append(f"  {method:9s} " + " ".join(cells) + f" {m['checkpoints']['mae']:7.1f}")
    return "\n".join(lines)
