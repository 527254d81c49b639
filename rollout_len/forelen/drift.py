"""Drift: a PLP head fit at one sampling setting, scored on another, with and without the online re-fit.

    rollout-len forelen build --scenario rl --temperature 1.0 --limit 64 --out data/forelen/rl-t1.0
    rollout-len forelen drift --data data/forelen/rl --shifted data/forelen/rl-t1.0 --json drift.json

The head is fit on `--data`'s train split, as `forelen eval` fits `plp`. The shifted build's prompts
then arrive as a stream of steps (`prompts_per_step` prompts with all their samples, in prompt order),
as a rollout's would. Each step is scored before its lengths are known, by
  frozen          the head as fit, never updated;
  refit           the same head, re-fit after every step on the checkpoints of that step's finished
                  samples, with the Coordinator's online settings (OnlineTrainer: a ring buffer of 8,192
                  examples, AdamW at 1e-3, 64 batches of 64 per re-fit);
  survival        the survival baseline from `--data`'s train lengths;
  survival_refit  the survival baseline from the lengths of the stream's earlier steps (the live prior's
                  rule; `--data`'s train lengths at the first step).
The control runs the same protocol on `--data`'s own test prompts: no drift, so it shows what
re-fitting costs or gains when nothing changed. Errors are on the remaining length, at admission (t = 0)
and in flight (t > 0) apart; the pooled figures leave out the first step, where nothing has been re-fit
yet, and each ratio has a 95% interval from a paired bootstrap over the stream's prompts.
"""

from __future__ import annotations

import copy

import torch

from rollout_len.baselines import ForeLenData
from rollout_len.baselines.rl_native import survival_remaining
from rollout_len.forelen.dataset import TEST, TRAIN, load_dataset
from rollout_len.forelen.evaluate import fit_plp, paired_ratio_ci
from rollout_len.forelen.train import dataset_identity, plp_examples
from rollout_len.predictor.head import check_card
from rollout_len.predictor.train import FitConfig, OnlineTrainer

__all__ = ["DRIFT_METHODS", "drift", "format_drift"]

DRIFT_METHODS = ("frozen", "refit", "survival", "survival_refit")
RATIOS = (("refit", "frozen"), ("refit", "survival_refit"), ("frozen", "survival"))


def _stream(data: ForeLenData, prompts: torch.Tensor, prompts_per_step: int) -> list[torch.Tensor]:
    """The checkpoint rows of each step: `prompts_per_step` of `prompts` at a time, in order."""
    steps = []
    for start in range(0, len(prompts), prompts_per_step):
        chunk = prompts[start : start + prompts_per_step]
        steps.append(torch.nonzero(torch.isin(data.sample_prompt[data.ckpt_sample], chunk))[:, 0])
    return steps


def _run(head, source: ForeLenData, data: ForeLenData, prompts: torch.Tensor, prompts_per_step: int, rounds: int):
    frozen, online = head, copy.deepcopy(head)
    trainer = OnlineTrainer(online, buffer_size=8192, lr=1e-3, steps=64, seed=0)
    x = plp_examples(data)  # (C, 2d + 2)
    train_lengths = source.lengths[source.samples(TRAIN)]
    seen = train_lengths  # what survival_refit knows before the first step
    steps, errors = [], {m: [] for m in DRIFT_METHODS}
    rows_after_first = []
    for i, rows in enumerate(_stream(data, prompts, prompts_per_step)):
        t, left, true = data.ckpt_t[rows], data.ckpt_budget_left[rows], data.ckpt_remaining[rows]
        pred = {
            "frozen": torch.minimum(frozen.predict(x[rows])[0], left.float()),  # capped at the budget left
            "refit": torch.minimum(online.predict(x[rows])[0], left.float()),
            "survival": survival_remaining(train_lengths, t, left),
            "survival_refit": survival_remaining(seen, t, left),
        }
        err = {m: (p.float() - true).abs() for m, p in pred.items()}
        samples = data.ckpt_sample[rows].unique()
        row = {"step": i, "prompts": len(data.sample_prompt[samples].unique()), "samples": len(samples)}
        row["capped_fraction"] = float(data.capped[samples].float().mean())
        for name, at in (("admission", t == 0), ("in_flight", t > 0)):
            row[name] = {m: float(e[at].mean()) if at.any() else None for m, e in err.items()}
        steps.append(row)
        if i > 0:
            rows_after_first.append(rows)
            for m in DRIFT_METHODS:
                errors[m].append(err[m])
        trainer.add(x[rows], true)  # the step has finished: its checkpoints' remaining lengths are labels
        trainer.refit()
        seen = torch.cat([seen, data.lengths[samples]]) if i > 0 else data.lengths[samples]
    result = {"steps": steps}
    rows = torch.cat(rows_after_first)  # drift() made sure there are two steps or more
    prompt, t = data.sample_prompt[data.ckpt_sample[rows]], data.ckpt_t[rows]
    err = {m: torch.cat(e) for m, e in errors.items()}
    gen = torch.Generator().manual_seed(0)
    for name, at in (("admission", t == 0), ("in_flight", t > 0)):
        if not at.any():
            continue
        result[name] = {m: {"mae": float(e[at].mean()), "n": int(at.sum())} for m, e in err.items()}
        result[name]["ratios"] = {
            f"{a}/{b}": paired_ratio_ci(err[a][at], err[b][at], prompt[at], rounds, gen) for a, b in RATIOS
        }
    return result


def drift(
    source: str, shifted: str, prompts_per_step: int = 8, config: FitConfig | None = None, rounds: int = 2000
) -> dict:
    """{"source", "shifted": card summaries, "prompts_per_step", "shifted_run", "control"} (module
    docstring); each run: {"steps": per step, its prompts, samples, capped fraction and each method's MAE
    at admission and in flight; "admission" / "in_flight": pooled over the steps after the first, each
    method's {"mae", "n"} and "ratios" {"a/b": paired_ratio_ci}}.

    ValueError when the two builds differ in model, PLP layer or hidden size (the head could not read
    the shifted features), when `prompts_per_step` < 1 or leaves a stream a single step, or when
    `source` cannot be fit."""
    if not isinstance(prompts_per_step, int) or prompts_per_step < 1:
        raise ValueError(f"--prompts-per-step must be an int >= 1, got {prompts_per_step!r}")
    a = ForeLenData(*load_dataset(source), source)
    b = ForeLenData(*load_dataset(shifted), shifted)
    check_card(dataset_identity(a.card), dataset_identity(b.card), f"--shifted {shifted}")
    streams = {"shifted_run": torch.arange(len(b.prompt_split)), "control": torch.nonzero(a.prompt_split == TEST)[:, 0]}
    for run, prompts in streams.items():  # the pooled figures leave the first step out: two are needed
        if len(prompts) <= prompts_per_step:
            raise ValueError(
                f"--prompts-per-step {prompts_per_step} makes the {run} stream ({len(prompts)} prompts) a single "
                "step, and the first step is left out of the pooled figures: use at most "
                f"{max(len(prompts) - 1, 1)}"
                + (" (the control streams --data's test prompts)" if run == "control" else "")
            )
    head = fit_plp(a, config or FitConfig())

    def summary(d: ForeLenData) -> dict:
        return {"folder": str(d.folder), "sampling": d.card["sampling"], "lengths": d.card["lengths"]}

    return {
        "source": summary(a),
        "shifted": summary(b),
        "prompts_per_step": prompts_per_step,
        "shifted_run": _run(head, a, b, streams["shifted_run"], prompts_per_step, rounds),
        "control": _run(head, a, a, streams["control"], prompts_per_step, rounds),
    }


def format_drift(result: dict) -> str:
    """The pooled table of both runs: each method's MAE, then the ratios with their intervals."""
    lines = [
        "remaining-length MAE (tokens), pooled over the steps after the first; a/b below 1: a is better "
        "(95% interval over prompts); control: --data's own test prompts, no drift",
    ]
    lines += [f"{'run':<12} {'at':<10} " + " ".join(f"{m:>15}" for m in DRIFT_METHODS)]
    for run in ("shifted_run", "control"):
        for at in ("admission", "in_flight"):
            if at not in result[run]:
                continue
            cells = [f"{result[run][at][m]['mae']:15.1f}" for m in DRIFT_METHODS]
            lines.append(f"{run:<12} {at:<10} " + " ".join(cells))
            for name, r in result[run][at]["ratios"].items():
                ci = f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ci95"] else ""
                shown = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
                lines.append(f"{'':<23} {name:<24} {shown}{ci}")
    return "\n".join(lines)
