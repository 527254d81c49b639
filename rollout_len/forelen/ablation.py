"""Why EGTP wins or loses, and what a cheaper EGTP costs: prompt-feature ablations on built datasets.

    rollout-len forelen ablate --data data/forelen/longseq --json ablate.json --md ablate.md

One prefill of every prompt of the dataset with the card's model (prompts encoded as the build encoded
them) keeps the per-position next-token entropies H and the hidden states at the card's layers. The
recomputed exact EGTP at the PLP layer must match the stored `prompt/{plp_layer}/egtp`; a mismatch
means the dataset was built with another model or code, and stops the run. Then, at every stored
layer, each feature variant is scored with the prompt-only protocol of `forelen eval`
(evaluate.prompt_only_scores: a SoftLabelHead fit on the train prompts' samples, the epoch picked on val,
test metrics at admission, FitConfig() and its seed):

    egtp                 the paper's EGTP: w = softmax(H), h = Σ_i w_i h_i
    egtp_t{τ}            tempered: w = softmax(H / τ), τ in TEMPERATURES (τ → ∞ is `mean`)
    mean, max, last      the entropy-free poolings
    egtp_last16          cheaper EGTP: entropy only at the last 16 prompt positions, pooled over those
    egtp_every4, _every8 entropy only at every 4th (8th) position, counted back from the last one
                         (which is always in), pooled over those

`entropy_frac` is the share of all prompt positions whose entropy the variant needs: the LM-head cost
relative to exact EGTP (1 for egtp and egtp_t{τ}, 0 for mean/max/last). At the PLP layer, `egtp` and
`mean` are fit again with other head settings (HEADS: hidden_dim 64; weight_decay 0.1 with dropout
0.3). The `constant` row (the train median) is the floor; `vs_const` = MAE / constant MAE.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path

import torch

from rollout_len.baselines import BASELINES, ForeLenData, evaluate_baseline
from rollout_len.data import encode_prompt
from rollout_len.forelen.dataset import load_dataset, load_prompts
from rollout_len.forelen.evaluate import prompt_only_scores
from rollout_len.model import Policy, load_policy
from rollout_len.predictor.features import prefill_batches
from rollout_len.predictor.pooling import pool_packed
from rollout_len.predictor.train import FitConfig

__all__ = [
    "PackedStates",
    "prefill_states",
    "tempered_egtp",
    "subset_mask",
    "subset_egtp",
    "variant_features",
    "check_stored_egtp",
    "ablate",
    "format_ablation",
    "format_markdown",
    "TEMPERATURES",
    "SUBSETS",
    "HEADS",
]

TEMPERATURES = (0.25, 0.5, 2.0, 4.0)  # EGTP with w = softmax(H / τ); τ = 1 is the paper's
SUBSETS = {"egtp_last16": ("last", 16), "egtp_every4": ("every", 4), "egtp_every8": ("every", 8)}
# head settings tried on egtp and mean at the PLP layer, beside FitConfig's defaults
HEADS = {"hidden_dim=64": {"hidden_dim": 64}, "wd=0.1,dropout=0.3": {"weight_decay": 0.1, "dropout": 0.3}}
CHECK_RTOL = 1e-3  # recomputed vs stored egtp: the largest per-prompt relative L2 error allowed
CARD_KEYS = ("scenario", "model", "layers", "plp_layer", "counts", "lengths", "sampling")


@dataclass
class PackedStates:
    """P prompts' prefill, packed (N = their total length): prompt p at rows cu_seqlens[p] ..
    cu_seqlens[p+1] - 1. hidden {layer: (N, d) float32}, entropy (N,) float32, cu_seqlens (P+1,)."""

    hidden: dict[int, torch.Tensor]
    entropy: torch.Tensor
    cu_seqlens: torch.Tensor


@torch.inference_mode()
def prefill_states(
    policy: Policy, prompts: list[list[int]], layers: tuple[int, ...], batch_size: int = 8
) -> PackedStates:
    """One forward per batch of prompts, as `predictor.features.prompt_features` does (same batches,
    padding and entropy call), keeping the packed per-position entropies and the states at `layers`
    (decoder layer outputs, 1..num_layers) on the CPU."""
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    entropy = []
    for _, hidden_states, valid, h in prefill_batches(policy, prompts, batch_size):
        entropy.append(h.float().cpu())
        for layer in layers:
            hidden[layer].append(hidden_states[layer][valid].float().cpu())  # (n, d)
    cu_seqlens = torch.tensor([0, *accumulate(len(p) for p in prompts)])  # (P+1,)
    return PackedStates({k: torch.cat(v) for k, v in hidden.items()}, torch.cat(entropy), cu_seqlens)


def tempered_egtp(hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor, tau: float) -> torch.Tensor:
    """EGTP with a temperature: w = softmax(H / τ) per sequence. (N, d), (N,), (B+1,) -> (B, d)."""
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"the EGTP temperature must be finite and > 0, got {tau}")
    return pool_packed(hidden, entropy / tau, cu_seqlens, "egtp")


def subset_mask(cu_seqlens: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """The positions whose entropy a cheaper EGTP computes, (N,) bool over the packed positions:
    kind "last": the last k positions of each sequence (all of a shorter one); "every": every k-th
    position counted back from the last (position i of a length-T sequence when (T - 1 - i) % k == 0).
    Each sequence keeps its last position, so none is empty; k = 1 keeps every position."""
    if k < 1:
        raise ValueError(f"a position subset needs k >= 1, got {k}")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # (B,)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N,)
    from_end = cu_seqlens[1:][seg] - 1 - torch.arange(int(cu_seqlens[-1]))  # (N,): 0 at each last position
    if kind == "last":
        return from_end < k
    if kind == "every":
        return from_end % k == 0
    raise ValueError(f"unknown position subset {kind!r}; valid: ['every', 'last']")


def subset_egtp(
    hidden: torch.Tensor, entropy: torch.Tensor, cu_seqlens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """EGTP over the masked positions only (their entropies, their states): (N, d), (N,), (B+1,),
    mask (N,) bool with >= 1 position per sequence -> (B, d)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    kept = torch.bincount(seg[mask], minlength=len(lengths))  # (B,)
    sub_cu = torch.cat([torch.zeros(1, dtype=torch.long), kept.cumsum(0)])  # (B+1,)
    return pool_packed(hidden[mask], entropy[mask], sub_cu, "egtp")


def variant_features(states: PackedStates) -> tuple[dict[tuple[int, str], torch.Tensor], dict[str, float]]:
    """{(layer, variant): (P, d)} for every stored layer and variant (module docstring), and
    {variant: entropy_frac}, the share of all prompt positions whose entropy it needs."""
    cu, entropy = states.cu_seqlens, states.entropy
    masks = {name: subset_mask(cu, kind, k) for name, (kind, k) in SUBSETS.items()}
    frac = {"egtp": 1.0, **{_tau_name(t): 1.0 for t in TEMPERATURES}, "mean": 0.0, "max": 0.0, "last": 0.0}
    frac.update({name: float(m.float().mean()) for name, m in masks.items()})
    feats: dict[tuple[int, str], torch.Tensor] = {}
    for layer, hidden in states.hidden.items():
        feats[(layer, "egtp")] = pool_packed(hidden, entropy, cu, "egtp")
        for tau in TEMPERATURES:
            feats[(layer, _tau_name(tau))] = tempered_egtp(hidden, entropy, cu, tau)
        for pooling in ("mean", "max", "last"):
            feats[(layer, pooling)] = pool_packed(hidden, entropy, cu, pooling)
        for name, mask in masks.items():
            feats[(layer, name)] = subset_egtp(hidden, entropy, cu, mask)
    return feats, frac


def _tau_name(tau: float) -> str:
    return f"egtp_t{tau:g}"


def check_stored_egtp(recomputed: torch.Tensor, stored: torch.Tensor, where: str) -> float:
    """The largest per-prompt relative L2 error of the recomputed exact EGTP against the stored one;
    ValueError above CHECK_RTOL (the dataset was built with another model or code)."""
    if recomputed.shape != stored.shape:
        raise ValueError(
            f"{where}: recomputed egtp is {tuple(recomputed.shape)} but the stored one {tuple(stored.shape)}; "
            "the dataset was built with another model or code"
        )
    err = (recomputed - stored.float()).norm(dim=1) / stored.float().norm(dim=1).clamp_min(1e-12)  # (P,)
    worst = float(err.max())
    if not worst <= CHECK_RTOL:
        raise ValueError(
            f"{where}: the recomputed exact egtp does not match the stored feature (prompt {int(err.argmax())}: "
            f"relative error {worst:.3g} > {CHECK_RTOL:g}); the dataset was built with another model or code"
        )
    return worst


def _row(method: str, layer: int | None, head: str, result: dict, frac: float | None, const_mae: float | None) -> dict:
    """One table row from a `prompt_only_scores` or baseline result ({"admission": ...} or {"skipped": ...})."""
    row = {"method": method, "layer": layer, "head": head, "entropy_frac": frac}
    if "skipped" in result:
        keys = ("mae", "rmse", "kendall_tau", "n", "capped_fraction", "mae_vs_constant")
        return {**row, **dict.fromkeys(keys), "skipped": result["skipped"]}
    a = result["admission"]
    tau = a["kendall_tau"]
    return {
        **row,
        "mae": a["mae"],
        "rmse": a["rmse"],
        "kendall_tau": tau if math.isfinite(tau) else None,  # a constant prediction has no ranking
        "n": a["n"],
        "capped_fraction": a["capped_fraction"],
        "mae_vs_constant": a["mae"] / const_mae if const_mae else None,
    }


def _score(data: ForeLenData, name: str, layer: int, config: FitConfig) -> dict:
    try:
        return prompt_only_scores(data, name, layer, config)
    except ValueError as err:  # e.g. a split without samples
        return {"skipped": f"cannot be fit on this dataset: {err}"}


def _scenario_rows(data: ForeLenData, frac: dict[str, float], layers: list[int], plp_layer: int) -> list[dict]:
    config = FitConfig()  # as `forelen eval` (prompt_only_scores) fits it
    const = evaluate_baseline(BASELINES["constant"](), data)
    const_mae = const["admission"]["mae"] if "admission" in const else None
    rows = [_row("constant", None, "-", const, None, const_mae)]
    for layer in layers:
        for name in frac:
            rows.append(_row(name, layer, "default", _score(data, name, layer, config), frac[name], const_mae))
    for name in ("egtp", "mean"):
        for head, fields in HEADS.items():
            result = _score(data, name, plp_layer, replace(config, **fields))
            rows.append(_row(name, plp_layer, head, result, frac[name], const_mae))
    return rows


def ablate(folders: list[str], device: str = "cpu", batch_size: int = 8) -> dict:
    """{scenario: {"card": abridged card, "egtp_check": worst relative error, "rows": [row, ...]}} for
    each dataset folder (module docstring). Every dataset, its prompts and its model are loaded before
    the first prefill, so a missing folder or an unknown model fails at once."""
    loaded = []
    for folder in folders:
        card, tensors = load_dataset(folder)
        prompts = load_prompts(folder, tensors["prompt/split"])
        layers, plp = [int(x) for x in card["layers"]], int(card["plp_layer"])
        missing = [f"prompt/{x}/egtp" for x in layers if f"prompt/{x}/egtp" not in tensors]
        if missing:
            raise ValueError(f"{folder}: the dataset lacks {missing}")
        loaded.append((folder, card, tensors, prompts, layers, plp))
    policies: dict[str, Policy] = {}
    for _, card, *_ in loaded:
        if card["model"] not in policies:
            policies[card["model"]] = load_policy(card["model"], device=device)
    results: dict = {}
    for folder, card, tensors, prompts, layers, plp in loaded:
        policy = policies[card["model"]]
        ids = [encode_prompt(policy.tokenizer, p) for p in prompts]  # as build.py encodes them
        states = prefill_states(policy, ids, tuple(layers), batch_size)
        feats, frac = variant_features(states)
        del states
        worst = check_stored_egtp(feats[(plp, "egtp")], tensors[f"prompt/{plp}/egtp"], f"{folder} (layer {plp})")
        extended = {**tensors, **{f"prompt/{layer}/{name}": x for (layer, name), x in feats.items()}}
        data = ForeLenData(card, extended, folder)
        results[card["scenario"]] = {
            "card": {k: card[k] for k in CARD_KEYS if k in card},
            "egtp_check": worst,
            "rows": _scenario_rows(data, frac, layers, plp),
        }
    return results


def _cell(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


COLUMNS = ("method", "layer", "head", "MAE", "RMSE", "tau", "n", "capped", "MAE/const", "entropy")


def _cells(row: dict) -> list[str]:
    if "skipped" in row:
        return [row["method"], _cell(row["layer"], "d"), row["head"], f"skipped: {row['skipped']}"]
    return [
        row["method"],
        _cell(row["layer"], "d"),
        row["head"],
        _cell(row["mae"], ".1f"),
        _cell(row["rmse"], ".1f"),
        _cell(row["kendall_tau"], ".3f"),
        _cell(row["n"], "d"),
        _cell(row["capped_fraction"], ".0%"),
        _cell(row["mae_vs_constant"], ".3f"),
        _cell(row["entropy_frac"], ".0%"),
    ]


def _title(scenario: str, result: dict) -> str:
    card = result["card"]
    return (
        f"{scenario} ({card['model']}; layers {card['layers']}, PLP layer {card['plp_layer']}; "
        f"mean length {card['lengths']['mean']:.0f}, capped {card['lengths']['capped_fraction']:.0%} of all samples; "
        f"stored egtp matched, worst relative error {result['egtp_check']:.1e})"
    )


def format_ablation(results: dict) -> str:
    """The printed tables: one per scenario, a row per (variant, layer, head). `capped`: the share of
    the scored test samples that hit max_new_tokens; `entropy`: entropy_frac."""
    widths = (14, 5, 18, 7, 7, 6, 5, 6, 9, 7)
    lines = []
    for scenario, result in results.items():
        lines.append(_title(scenario, result))
        lines.append(
            "  " + " ".join(f"{c:{'<' if i < 3 else '>'}{w}s}" for i, (c, w) in enumerate(zip(COLUMNS, widths)))
        )
        for row in result["rows"]:
            cells = _cells(row)
            lines.append(
                "  " + " ".join(f"{c:{'<' if i < 3 else '>'}{w}s}" for i, (c, w) in enumerate(zip(cells, widths)))
            )
    return "\n".join(lines)


def format_markdown(results: dict, command: str) -> str:
    """The same tables in Markdown, the command line on top."""
    lines = [f"`{command}`", ""]
    for scenario, result in results.items():
        lines += [f"### {_title(scenario, result)}", "", "| " + " | ".join(COLUMNS) + " |"]
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|")
        for row in result["rows"]:
            cells = _cells(row)
            cells += [""] * (len(COLUMNS) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(results: dict, json_path: str | None, md_path: str | None, command: str) -> None:
    """The JSON ({scenario: {"card", "egtp_check", "rows"}}) and the Markdown, where asked for."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    if md_path:
        Path(md_path).write_text(format_markdown(results, command))
