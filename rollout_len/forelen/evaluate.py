"""Evaluate length predictors on ForeLen-lite datasets.

    rollout-len forelen eval --data data/forelen/rl --data data/forelen/reasoning --methods all --json out.json
    rollout-len forelen plp-curve --data data/forelen/rl --json curve.json --png curve.png
    rollout-len forelen eval --head heads/rl --data data/forelen/longseq --methods plp,survival  # a saved head

Two errors are kept apart. Admission time (t = 0, the prompt only): the total length of each test
sample. In flight (t > 0): the remaining length at every test checkpoint with t > 0 (sample s, t
tokens generated), pooled with each checkpoint once (`in_flight`), and per t over the test samples
still running at t (`by_t`). Every MAE carries `capped_fraction`, the share of the scored samples
whose length hit max_new_tokens (a capped length is easy to predict near the budget).

The floors to beat: `constant` (admission only: the train median length) and `survival` (in flight:
the train median of L - t over the samples that ran past t), `survival_group` (the same over the
prompt's other samples). Prompt-only methods (`egtp`, `mean`, `max`, `last`: the pooling of the
prompt's states at one layer) fit a SoftLabelHead on the train prompts' samples, pick the epoch on
val, and report test metrics at admission. `plp` fits one head on PLP checkpoints (t = 0, k, 2k, ...)
to the remaining length and reports both, with the median of the predicted distribution as its point
prediction (FitConfig.point) and `q90_coverage`, the share of true remaining lengths at most its
predicted 90% quantile (survival reports one too); the head's levels are recalibrated on the val
checkpoints (FitConfig.calibrate). Three ablations fit it again: `plp_raw` (not recalibrated),
`plp_mean` (the mean of the distribution as the point prediction) and `plp_pca` (the features
projected onto their top PCA_RANK principal components, FitConfig.project). The other baselines
(`ssjf_reg`, `ssjf_mc`, `s3`, `ltr_c`, `trail`, `pia`, `tpv`, `history`, `siblings`) are in
rollout_len/baselines/; the progressive ones
(`trail`, `tpv`, `siblings`) report in flight as well. A method that cannot be fit on the dataset
(e.g. too few samples) is reported as skipped, with the reason, instead of stopping the table.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rollout_len.baselines import BASELINES, ForeLenData, evaluate_baseline
from rollout_len.baselines.base import IN_FLIGHT, remaining_metrics
from rollout_len.baselines.encoder import ENCODERS
from rollout_len.forelen.dataset import TEST, TRAIN, VAL, load_dataset
from rollout_len.forelen.train import dataset_identity, load_head, plp_examples, plp_predictions, plp_scores
from rollout_len.predictor.head import check_card
from rollout_len.predictor.pooling import POOLINGS
from rollout_len.predictor.train import FitConfig, evaluate, fit_head

__all__ = ["evaluate_methods", "fit_plp", "plp_curve", "prompt_only_scores", "format_table", "METHODS", "CURVE_METHODS"]

FLOORS = ("constant", "survival", "survival_group")  # no model: what every predictor must beat
PLP_METHODS = ("plp", "plp_raw", "plp_mean", "plp_pca")  # the PLP head and its ablations
METHODS = (*FLOORS, *POOLINGS, *PLP_METHODS, *(m for m in BASELINES if m not in FLOORS))
CURVE_METHODS = (*PLP_METHODS, "survival", "survival_group")  # compared at the same t by `plp_curve`
PCA_RANK = 32  # plp_pca's principal components, unless the FitConfig sets `project`


def _fit(x, y, split, config: FitConfig):
    """A head fit on the train rows (epoch chosen on val); ValueError when a split has no rows."""
    train, val, test = (split == i for i in (TRAIN, VAL, TEST))
    if any(int(m.sum()) == 0 for m in (train, val, test)):
        raise ValueError("every split needs examples; the dataset is too small")
    return fit_head(x[train], y[train], x[val], y[val], config)


def _fit_and_test(x, y, split, config: FitConfig):
    head = _fit(x, y, split, config)
    test = split == TEST
    return head, head.predict(x[test])[0], y[test]  # the point prediction (config.point)


def fit_plp(data: ForeLenData, config: FitConfig):
    """A PLP head fit on the train checkpoints' remaining lengths (epoch chosen on val)."""
    return _fit(plp_examples(data), data.ckpt_remaining, data.ckpt_split, config)


def prompt_only_scores(data: ForeLenData, method: str, layer: int, config: FitConfig) -> dict:
    """{"admission": test metrics + capped_fraction} of a SoftLabelHead fit from the prompt feature
    `prompt/{layer}/{method}` (P, d) of each train sample to its total length (epoch chosen on val).
    ValueError when the dataset lacks that feature or a split has no samples."""
    key = f"prompt/{layer}/{method}"
    if key not in data.tensors:
        raise ValueError(f"dataset has no {key}; layers built: {data.card['layers']}")
    x = data.tensors[key][data.sample_prompt]
    _, pred, true = _fit_and_test(x, data.lengths, data.sample_split, config)
    capped = data.capped[data.samples(TEST)]
    return {"admission": {**evaluate(pred, true), "capped_fraction": float(capped.float().mean())}}


def _plp_config(method: str, config: FitConfig) -> FitConfig:
    """The FitConfig of one of PLP_METHODS: `plp` as given, `plp_raw` without recalibration on val,
    `plp_mean` with the mean point prediction, `plp_pca` projected onto config.project (PCA_RANK when
    unset) principal components."""
    if method == "plp_raw":
        return replace(config, calibrate=False)
    if method == "plp_mean":
        return replace(config, point="mean")
    if method == "plp_pca":
        return replace(config, project=config.project or PCA_RANK)
    return config


def _plp(data: ForeLenData, config: FitConfig) -> dict:
    """`plp_scores` on the test split of a PLP head fit on the train checkpoints (epoch chosen on val)."""
    return plp_scores(fit_plp(data, config), data, TEST)


def _method(data: ForeLenData, method: str, layer: int, config: FitConfig) -> dict:
    """One method's metrics, or {"skipped": reason} when it cannot be fit on this dataset."""
    try:
        if method in PLP_METHODS:
            return _plp(data, _plp_config(method, config))
        if method in BASELINES:
            return evaluate_baseline(BASELINES[method](), data)
        return prompt_only_scores(data, method, layer, config)
    except ValueError as err:  # e.g. too few samples for a split or for length bins
        return {"skipped": f"cannot be fit on this dataset: {err}"}


def evaluate_methods(
    folders: list[str],
    methods: list[str],
    layer: int | None = None,
    config: FitConfig | None = None,
    encoder: str = "all-minilm-l6-v2",
    head: str | None = None,
) -> dict:
    """{scenario: {method: row}} plus {scenario: {"_card": ..., "_layer": ...}}; `encoder`: the
    baselines' proxy encoder. A row has `admission` and/or `in_flight` and `by_t` (module docstring),
    `selected` where a method chose settings on val, or is {"skipped": reason}.

    `head`: a folder saved by `forelen train`; the `plp` row then scores that head on each dataset's
    test split, without fitting (its row names the folder under `head`). A dataset whose model, PLP
    layer or feature size differs from the head's card raises ValueError naming what differs."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {list(METHODS)} or 'all'")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown proxy encoder {encoder!r}; valid: {list(ENCODERS)}")
    if head is not None and "plp" not in methods:
        raise ValueError(f"a saved head (--head {head}) is scored as the plp row: include plp in the methods")
    saved = load_head(head) if head is not None else None
    config = config or FitConfig()
    datasets = []
    for folder in folders:
        card, t = load_dataset(folder)
        if saved is not None:  # every dataset checked before anything is scored
            check_card(saved[1], dataset_identity(card), f"dataset {folder}")
        if layer is not None and layer not in card["layers"]:
            raise ValueError(f"--layer {layer}: {folder} stores prompt features at layers {card['layers']} only")
        datasets.append((folder, card, t))
    results: dict = {}
    for folder, card, t in datasets:
        chosen = layer if layer is not None else card["plp_layer"]
        scenario = {"_card": {k: card[k] for k in ("model", "counts", "lengths", "sampling")}, "_layer": chosen}
        data = ForeLenData(card, t, folder, encoder)
        for method in methods:
            if method == "plp" and saved is not None:
                scenario[method] = {**plp_scores(saved[0], data, TEST), "head": str(head)}
            else:
                scenario[method] = _method(data, method, chosen, config)
        results[card["scenario"]] = scenario
    return results


def plp_curve(folder: str, config: FitConfig | None = None, rounds: int = 2000) -> dict[int, dict[str, dict]]:
    """{t: {method: metrics}} for each test checkpoint step t and each of CURVE_METHODS that applies
    (survival_group needs several samples per prompt): the remaining-length error over the test
    samples still running at t (`n` of them; `capped_fraction` of those hit max_new_tokens;
    `q90_coverage` for the methods that predict a 90% quantile: the PLP heads and survival).

    Every method but survival also gets `vs_survival` at each t: {"ratio": its MAE / survival's MAE
    on the same checkpoints, "ci95": [low, high], "prompts": G}, the interval from a paired bootstrap
    over the G test prompts running at t (`rounds` resamples; a prompt's checkpoints are resampled
    together, since samples of one prompt are not independent)."""
    card, t = load_dataset(folder)
    data = ForeLenData(card, t, folder)
    config = config or FitConfig()
    test = data.checkpoints(TEST)
    rows, errors = {}, {}
    for m in CURVE_METHODS:
        if m in PLP_METHODS:
            idx, pred, q90 = plp_predictions(fit_plp(data, _plp_config(m, config)), data, TEST)
            rows[m] = remaining_metrics(pred, data, idx, q90)
        else:
            baseline = BASELINES[m]()
            rows[m] = evaluate_baseline(baseline, data)  # fits it
            if "by_t" not in rows[m]:
                continue
            idx, pred = test, baseline.predict_remaining(data, TEST)
        errors[m] = (pred.float() - data.ckpt_remaining[idx].float()).abs()  # (C,) over the test checkpoints
    rows = {m: r for m, r in rows.items() if "by_t" in r}
    steps = sorted({step for r in rows.values() for step in r["by_t"]})
    curve = {step: {m: dict(r["by_t"][step]) for m, r in rows.items() if step in r["by_t"]} for step in steps}
    prompt = data.sample_prompt[data.ckpt_sample[test]]  # (C,)
    gen = torch.Generator().manual_seed(0)
    for step, row in curve.items():
        at = data.ckpt_t[test] == step
        for m in row:
            if m != "survival" and "survival" in errors and m in errors:
                row[m]["vs_survival"] = paired_ratio_ci(errors[m][at], errors["survival"][at], prompt[at], rounds, gen)
    return curve


def paired_ratio_ci(
    err_a: torch.Tensor, err_b: torch.Tensor, groups: torch.Tensor, rounds: int, gen: torch.Generator
) -> dict:
    """{"ratio": Σ err_a / Σ err_b, "ci95": [low, high], "prompts": G}: absolute errors (N,) of two
    predictors on the same rows, `groups` (N,) the prompt of each row; each bootstrap round draws G
    groups with replacement and takes every row of each; rounds whose Σ err_b is 0 have no ratio and are
    left out. ci95 is None when Σ err_b is 0 or G < 2."""
    ids, group = torch.unique(groups, return_inverse=True)
    a = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, group, err_a.double())  # (G,)
    b = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, group, err_b.double())
    total_b = float(b.sum())
    if total_b == 0:
        return {"ratio": None, "ci95": None, "prompts": len(ids)}
    ratio = float(a.sum()) / total_b
    if len(ids) < 2:
        return {"ratio": ratio, "ci95": None, "prompts": len(ids)}
    draws = torch.randint(len(ids), (rounds, len(ids)), generator=gen)  # (R, G)
    denominator = b[draws].sum(1)
    defined = denominator > 0  # a resample of prompts where b made no error has no ratio: left out
    ratios = a[draws].sum(1)[defined] / denominator[defined]
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"ratio": ratio, "ci95": [low, high], "prompts": len(ids)}


CURVE_STEPS = (0, 16, 32, 64, 128, 256, 384, 512, 768)  # decode steps shown in the printed by-t table
_W = 14  # method column width


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _row(method: str, m: dict) -> str:
    """One printed row: admission MAE, its capped fraction, RMSE, ±50, ±100, tau | in-flight MAE,
    its capped fraction, checkpoints, q90 coverage ("-" for a method without a q90)."""
    a, f = m.get("admission"), m.get("in_flight")
    left = (
        f"{a['mae']:7.1f} {_pct(a['capped_fraction']):>6s} {a['rmse']:7.1f} {a['acc50']:5.2f} {a['acc100']:5.2f} "
        f"{a['kendall_tau']:5.2f}"
        if a
        else f"{'-':>7s} {'-':>6s} {'-':>7s} {'-':>5s} {'-':>5s} {'-':>5s}"
    )
    if f:
        cover = _pct(f["q90_coverage"]) if "q90_coverage" in f else "-"
        right = f"{f['mae']:7.1f} {_pct(f['capped_fraction']):>6s} {f['n']:6d} {cover:>6s}"
    else:
        right = f"{'-':>7s} {'-':>6s} {'-':>6s} {'-':>6s}"
    return f"  {method:{_W}s} {left} | {right}"


def _by_t_table(curves: dict[str, dict]) -> list[str]:
    """Rows of the remaining-length MAE at each printed step t, with n and the capped fraction."""
    steps = [s for s in CURVE_STEPS if any(s in m["by_t"] for m in curves.values())]
    first = {s: next(m["by_t"][s] for m in curves.values() if s in m["by_t"]) for s in steps}
    lines = [
        "  remaining-length MAE at decode step t (test samples still running at t; n, capped: of those)",
        f"  {'t':{_W}s} " + " ".join(f"{s:>7d}" for s in steps),
        f"  {'n':{_W}s} " + " ".join(f"{first[s]['n']:>7d}" for s in steps),
        f"  {'capped':{_W}s} " + " ".join(f"{_pct(first[s]['capped_fraction']):>7s}" for s in steps),
    ]
    for method, m in curves.items():
        cells = [f"{m['by_t'][s]['mae']:7.1f}" if s in m["by_t"] else f"{'-':>7s}" for s in steps]
        lines.append(f"  {method:{_W}s} " + " ".join(cells))
    return lines


def format_table(results: dict) -> str:
    """The printed eval tables of `evaluate_methods` results: per scenario one row per method
    (admission | in flight, each MAE with its capped fraction; cov90: the in-flight q90 coverage) and
    the by-t table."""
    lines = []
    for scenario, rows in results.items():
        lengths = rows["_card"]["lengths"]
        measured = {k: v for k, v in rows.items() if not k.startswith("_") and "skipped" not in v}
        admitted = [v["admission"] for v in measured.values() if "admission" in v]
        test_n = admitted[0]["n"] if admitted else 0
        lines.append(
            f"{scenario} (layer {rows['_layer']}; test n={test_n}, "
            f"mean length {lengths['mean']:.0f}, capped {_pct(lengths['capped_fraction'])} of all samples)"
        )
        lines.append("  admission (t = 0): total length of each test sample")
        lines.append(f"  in flight (t > 0): remaining length, {IN_FLIGHT}")
        lines.append("  cov90: share of true remaining lengths at most the predicted 90% quantile (aim: ~0.9)")
        lines.append(
            f"  {'method':{_W}s} {'MAE@0':>7s} {'capped':>6s} {'RMSE@0':>7s} {'±50':>5s} {'±100':>5s} {'tau':>5s} | "
            f"{'MAE t>0':>7s} {'capped':>6s} {'ckpts':>6s} {'cov90':>6s}"
        )
        for method, m in rows.items():
            if method.startswith("_"):
                continue
            lines.append(f"  {method:{_W}s} n/a: {m['skipped']}" if "skipped" in m else _row(method, m))
        curves = {k: v for k, v in measured.items() if "by_t" in v}
        if curves:
            lines += _by_t_table(curves)
    return "\n".join(lines)
