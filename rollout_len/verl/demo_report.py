"""The GRPO demo's outputs (recipes/grpo_demo): summary rows and table, PNG charts, responses, wandb.

A step's result, as `GRPODemo.train_step` returns it: {"metrics": {verl's metric names and
rollout_len/*}, "timelines": {policy: Timeline}, "first": the policy that ran first,
"step_fcfs_s": the GRPO step time with the fcfs rollout, "responses": [{"uid", "response", "length",
"gsm8k", "reward"}]}.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from rollout_len.sched.timeline import Timeline, plot_timelines
from rollout_len.verl.agent_loop import RESULT_KEY

__all__ = [
    "comparison_metrics",
    "timelines",
    "response_records",
    "summary_row",
    "setup_line",
    "step_line",
    "format_table",
    "plot_savings",
    "write_step",
    "start_wandb",
    "log_step",
    "write_summary",
]


def comparison_metrics(aware, fcfs, timing: dict[str, float]) -> dict[str, float]:
    """The `rollout_len/*` metrics of a step that ran both policies on the same batch and seed.

    `aware` and `fcfs` are the two `LengthAwareRollout.generate_sequences` outputs (their
    meta_info["rollout_len"] holds each step's metrics); `timing` has the driver's wall times in seconds:
    `gen` (length-aware), `gen_fcfs` and `step` (the GRPO step with the length-aware rollout).
    `same_responses_fraction` is the share of rows whose responses are identical token for token.
    """
    la, ff = aware.meta_info[RESULT_KEY]["metrics"], fcfs.meta_info[RESULT_KEY]["metrics"]
    same = torch.ones(len(aware), dtype=torch.bool)
    for key in ("responses", "response_mask"):
        same &= (aware.batch[key] == fcfs.batch[key]).all(dim=1)
    step_fcfs = timing["step"] - timing["gen"] + timing["gen_fcfs"]
    return {
        "rollout_len/step_time_s": timing["gen"],
        "rollout_len/fcfs_step_time_s": timing["gen_fcfs"],
        "rollout_len/saving_vs_fcfs": 1.0 - timing["gen"] / timing["gen_fcfs"],
        "rollout_len/grpo_step_saving_vs_fcfs": 1.0 - timing["step"] / step_fcfs,
        "rollout_len/predictor_mae": la["predictor_mae"],
        "rollout_len/padding_fraction": la["padded_fraction"],
        "rollout_len/migrations": la["migrations"],
        "rollout_len/worker_idle_fraction": la["worker_idle_fraction"],
        "rollout_len/fcfs_worker_idle_fraction": ff["worker_idle_fraction"],
        "rollout_len/tokens_per_s": la["tokens_per_s"],
        "rollout_len/fcfs_tokens_per_s": ff["tokens_per_s"],
        "rollout_len/same_responses_fraction": float(same.float().mean()),
    }


def timelines(aware, fcfs) -> dict[str, Timeline]:
    """{"length_aware": Timeline, "fcfs": Timeline} from the two `generate_sequences` outputs of a step."""
    return {
        name: Timeline.from_dict(output.meta_info[RESULT_KEY]["timeline"])
        for name, output in (("length_aware", aware), ("fcfs", fcfs))
    }


def response_records(data, details: list[dict]) -> list[dict]:
    """One `responses.jsonl` record per row: {"uid", "response" (text), "length" (tokens), "gsm8k", "reward"};
    `details` as `rollout_len.verl.reward.score_batch` returns them."""
    lengths = data.batch["response_mask"].sum(dim=-1).tolist()
    return [
        {"uid": str(uid), "response": d["response"], "length": int(n), "gsm8k": d["acc"], "reward": d["reward"]}
        for uid, d, n in zip(data.non_tensor_batch["uid"], details, lengths)
    ]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def summary_row(step: int, result: dict) -> dict:
    """One `summary.json` row of a step: times in seconds, savings as fractions (1 - aware / fcfs)."""
    m = result["metrics"]
    return {
        "step": step,
        "step_time_s": m["timing_s/step"],
        "rollout_time_s": m["timing_s/gen"],
        "fcfs_rollout_time_s": m["timing_s/gen_fcfs"],
        "saving": m["rollout_len/saving_vs_fcfs"],
        "reward_mean": m["critic/score/mean"],
        "gsm8k_mean": m["reward/gsm8k_mean"],
        "predictor_mae": _finite(m["rollout_len/predictor_mae"]),  # None (JSON null) before the first re-fit
        "fcfs_step_time_s": result["step_fcfs_s"],
        "step_saving": m["rollout_len/grpo_step_saving_vs_fcfs"],
        "first_rollout": result["first"],
        "response_length_mean": m["response_length/mean"],
        "response_length_clip_ratio": m["response_length/clip_ratio"],
        "migrations": m["rollout_len/migrations"],
        "padding_fraction": m["rollout_len/padding_fraction"],
        "worker_idle_fraction": m["rollout_len/worker_idle_fraction"],
        "fcfs_worker_idle_fraction": m["rollout_len/fcfs_worker_idle_fraction"],
        "same_responses_fraction": m["rollout_len/same_responses_fraction"],
        "param_update_norm": m["actor/param_update_norm"],
        "sync_max_logit_diff": m["rollout_len/sync_max_logit_diff"],
        "load_average": m["system/load_average"],
    }


def setup_line(cfg: dict) -> str:
    """The console line before setup: model, workers, prompts and samples per step."""
    return (
        f"setting up: {cfg['model']}, {cfg['num_workers']} rollout workers x {cfg['slots_per_worker']} slots, "
        f"{cfg['prompts_per_step']} GSM8K prompts x {cfg['samples_per_prompt']} samples per step"
    )


def step_line(row: dict, metrics: dict) -> str:
    """The console line of a step, from its summary row and metrics."""
    return (
        f"step {row['step']}: rollout {row['rollout_time_s']:.1f} s vs fcfs {row['fcfs_rollout_time_s']:.1f} s "
        f"({row['saving']:+.1%}, {row['first_rollout']} first), "
        f"update_actor {metrics['timing_s/update_actor']:.1f} s, "
        f"update_weights {metrics['timing_s/update_weights']:.1f} s, step {row['step_time_s']:.1f} s, "
        f"reward {row['reward_mean']:.3f}, mean length {row['response_length_mean']:.0f}"
    )


def format_table(rows: list[dict]) -> str:
    """The console table of summary rows, with the median rollout saving."""
    header = (
        f"{'step':>4} {'step s':>8} {'rollout s':>10} {'fcfs rollout s':>15} {'saving':>7} {'reward':>7} "
        f"{'predictor MAE':>14}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        mae = "-" if r["predictor_mae"] is None else f"{r['predictor_mae']:.1f}"
        lines.append(
            f"{r['step']:>4} {r['step_time_s']:>8.1f} {r['rollout_time_s']:>10.1f} "
            f"{r['fcfs_rollout_time_s']:>15.1f} {r['saving']:>7.1%} {r['reward_mean']:>7.3f} {mae:>14}"
        )
    lines.append(f"median rollout saving vs fcfs: {np.median([r['saving'] for r in rows]):.1%} over {len(rows)} steps")
    return "\n".join(lines)


def plot_savings(rows: list[dict], path: Path) -> None:
    """A PNG: per step, rollout time and GRPO step time, length-aware vs fcfs, with the saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = [
        ("rollout", "rollout_time_s", "fcfs_rollout_time_s", "saving"),
        ("GRPO step", "step_time_s", "fcfs_step_time_s", "step_saving"),
    ]
    for ax, (title, aware, blind, saving) in zip(axes, panels):
        ax.bar(steps - 0.2, [r[blind] for r in rows], 0.4, label="fcfs (length-blind)", color="tab:gray")
        ax.bar(steps + 0.2, [r[aware] for r in rows], 0.4, label="length-aware", color="tab:blue")
        for r in rows:
            ax.annotate(f"{r[saving]:+.0%}", (r["step"] + 0.2, r[aware]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(steps)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("seconds")
        ax.set_title(f"{title} time (median saving {np.median([r[saving] for r in rows]):.0%})", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_step(out: Path, step: int, result: dict, max_workers: int = 16) -> Path:
    """A step's files under `out`: `timeline_step{step}.png` (both policies' Gantt charts) and its responses
    appended to `responses.jsonl` (the file starts over at step 0). Returns the PNG's path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"timeline_step{step}.png"
    plot_timelines(result["timelines"], str(png), max_workers=max_workers)
    with (out / "responses.jsonl").open("a" if step else "w", encoding="utf-8") as f:
        for record in result["responses"]:
            f.write(json.dumps({"step": step, **record}) + "\n")
    return png


def start_wandb(cfg: dict, out: Path | None):
    """A wandb run for the demo (mode: WANDB_MODE, else cfg["wandb_mode"]) under `out`/wandb; None if disabled."""
    mode = os.environ.get("WANDB_MODE") or cfg["wandb_mode"]
    if mode == "disabled":
        return None
    import wandb

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg["wandb_project"],
        dir=str(out) if out else None,
        mode=mode,
        config=cfg,
        name=f"grpo-demo-{Path(cfg['model']).name}",
    )


def log_step(run, step: int, metrics: dict, timeline_png: Path | None) -> None:
    """Log a step's metrics to a wandb run (nothing without one), with the timeline PNG as an image."""
    if run is None:
        return
    import wandb

    logged = dict(metrics)
    if timeline_png is not None:
        logged["rollout_len/timeline"] = wandb.Image(str(timeline_png))
    run.log(logged, step=step)


def write_summary(cfg: dict, rows: list[dict], out: Path | None, run, **extra: float) -> dict:
    """End of the demo: the summary {"config", "steps": summary rows, "median_saving", **extra (e.g. setup_s,
    wall_time_s), and with a wandb run "wandb_run_dir", "wandb_mode"}, written to `out`/summary.json with
    `step_time_saving.png`; the wandb run is finished. Returns the summary."""
    summary = {"config": cfg, "steps": rows, "median_saving": float(np.median([r["saving"] for r in rows])), **extra}
    if run is not None:
        run.summary["rollout_len/median_saving_vs_fcfs"] = summary["median_saving"]
        summary["wandb_run_dir"], summary["wandb_mode"] = str(Path(run.dir).parent), run.settings.mode
        run.finish()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_savings(rows, out / "step_time_saving.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'summary.json'}, {out / 'step_time_saving.png'}, {out}/timeline_step*.png")
    if run is not None:
        print(f"wandb run ({summary['wandb_mode']}): {summary['wandb_run_dir']}")
    return summary
