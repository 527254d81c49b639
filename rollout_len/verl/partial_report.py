"""The GRPO demo's figures in partial (stall-free) mode (recipes/grpo_demo, `--mode partial`).

Each step trains on `prompts_per_step` complete groups returned by a partial step
(`LengthAwareRollout.generate_partial`); beside it, as a measurement, an fcfs synchronous rollout of
the prompts a synchronous run would take at that step (the same prompt list, `prompts_per_step` a
step), under the same weights. The figures: trained tokens per second of each over the run, their
ratio with a 95% bootstrap interval over steps (the recipe's `measure_partial`), the staleness
histogram of the trained tokens, and the reward per step.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["format_table", "log_step", "step_line", "summary_row", "wandb_panels", "write_summary"]


def summary_row(step: int, metrics: dict, data, blind) -> dict:
    """One `summary.json` row of a partial step: times in seconds, tokens, the staleness histogram
    (steps -> trained tokens) and the GRPO groups' response lengths. `metrics`: the recipe's step
    metrics; the Coordinator's come with `data` (meta_info["rollout_len"]["metrics"])."""
    step_metrics = data.meta_info["rollout_len"]["metrics"]
    tokens = int(data.batch["response_mask"].sum())
    fcfs_tokens = int(blind.batch["response_mask"].sum())
    lengths: dict[str, list[int]] = {}
    for uid, n in zip(data.non_tensor_batch["uid"], data.batch["response_mask"].sum(dim=1).tolist()):
        lengths.setdefault(str(uid), []).append(int(n))
    prefix = "staleness_tokens_"
    staleness = {key[len(prefix) :]: int(value) for key, value in step_metrics.items() if key.startswith(prefix)}
    return {
        "step": step,
        "step_time_s": metrics["timing_s/step"],
        "rollout_time_s": metrics["timing_s/gen"],
        "fcfs_rollout_time_s": metrics["timing_s/gen_fcfs"],
        "trained_tokens": tokens,
        "fcfs_tokens": fcfs_tokens,
        "tokens_per_s": tokens / metrics["timing_s/gen"],
        "fcfs_tokens_per_s": fcfs_tokens / metrics["timing_s/gen_fcfs"],
        "staleness_tokens": staleness,
        "fresh_token_share": step_metrics["fresh_token_share"],
        "carried_samples": int(step_metrics["carried_samples"]),
        "launched_groups": int(metrics["demo/launched_groups"]),
        "restarted": int(step_metrics["restarted"]),
        "dropped_groups": int(step_metrics["dropped_groups"]),
        "wasted_tokens": int(step_metrics["wasted_tokens"]),
        "reward_mean": metrics["critic/score/mean"],
        "correct_mean": metrics["reward/correct_mean"],
        "rollout_is_mean": metrics.get("rollout_corr/rollout_is_mean"),
        "first_rollout": metrics["demo/first_rollout"],
        "load_average": metrics["system/load_average"],
        "lengths": list(lengths.values()),
    }


def step_line(row: dict, measured: dict) -> str:
    lo, hi = measured["partial_throughput_ratio_ci95"]
    return (
        f"step {row['step']}: partial rollout {row['rollout_time_s']:.1f} s ({row['tokens_per_s']:.0f} tok/s), "
        f"fcfs sync {row['fcfs_rollout_time_s']:.1f} s ({row['fcfs_tokens_per_s']:.0f} tok/s), "
        f"staleness {row['staleness_tokens']}, carried {row['carried_samples']}, reward {row['reward_mean']:.3f} | "
        f"throughput x fcfs so far {measured['partial_throughput_ratio']:.2f} [{lo:.2f}, {hi:.2f}]"
    )


def format_table(rows: list[dict], measured: dict) -> str:
    head = f"{'step':>4}{'partial s':>11}{'fcfs s':>9}{'tok/s':>8}{'fcfs tok/s':>12}{'stale<=1':>9}{'carried':>9}"
    lines = [head + f"{'restarted':>10}{'dropped':>8}{'reward':>9}"]
    for r in rows:
        lines.append(
            f"{r['step']:>4}{r['rollout_time_s']:>11.1f}{r['fcfs_rollout_time_s']:>9.1f}{r['tokens_per_s']:>8.0f}"
            f"{r['fcfs_tokens_per_s']:>12.0f}{r['fresh_token_share']:>9.2f}{r['carried_samples']:>9}"
            f"{r['restarted']:>10}{r['dropped_groups']:>8}{r['reward_mean']:>9.3f}"
        )
    lo, hi = measured["partial_throughput_ratio_ci95"]
    lines.append(
        f"trained tokens/s: partial {measured['partial_tokens_per_s']:.1f}, "
        f"fcfs sync {measured['fcfs_tokens_per_s']:.1f}"
        f" -> {measured['partial_throughput_ratio']:.2f} x [{lo:.2f}, {hi:.2f}] (95% bootstrap over steps); "
        f"staleness (steps: tokens) {measured['staleness_tokens']}"
    )
    return "\n".join(lines)


def log_step(run, step: int, metrics: dict, row: dict, measured: dict) -> None:
    """Log a partial step to a wandb run (nothing without one)."""
    if run is None:
        return
    lo, hi = measured["partial_throughput_ratio_ci95"]
    logged = {
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        **{f"demo/{key}": row[key] for key in ("tokens_per_s", "fcfs_tokens_per_s", "fresh_token_share")},
        "demo/partial_throughput_ratio": measured["partial_throughput_ratio"],
        "demo/partial_throughput_ratio_ci95_low": lo,
        "demo/partial_throughput_ratio_ci95_high": hi,
    }
    run.log(logged, step=step)


def wandb_panels(rows: list[dict], measured: dict) -> dict:
    """The partial run's wandb panels: the steps as a table, trained tokens per second per step (partial
    and fcfs sync) and the staleness histogram of the trained tokens."""
    import wandb

    columns = ["step", "rollout_time_s", "fcfs_rollout_time_s", "tokens_per_s", "fcfs_tokens_per_s", "reward_mean"]
    return {
        "demo/partial_steps": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
        "demo/throughput_per_step": wandb.plot.line_series(
            xs=[r["step"] for r in rows],
            ys=[[r["tokens_per_s"] for r in rows], [r["fcfs_tokens_per_s"] for r in rows]],
            keys=["partial", "fcfs sync"],
            title="trained tokens per second",
            xname="step",
        ),
        "demo/staleness": wandb.plot.bar(
            wandb.Table(
                columns=["staleness", "tokens"], data=[[int(k), v] for k, v in measured["staleness_tokens"].items()]
            ),
            "staleness",
            "tokens",
            title="trained tokens by staleness (steps)",
        ),
    }


def write_summary(cfg: dict, rows: list[dict], measured: dict, out: Path | None, run, **extra: float) -> dict:
    """End of a partial-mode demo: {"config", **measured, **extra, "steps": rows} to `out`/summary.json
    with the dashboard `out`/report.html; the wandb run gets `wandb_panels` and the report, and is
    finished. Returns the summary."""
    summary = {"config": cfg, **measured, **extra, "steps": rows}
    report = None
    if out is not None:
        from rollout_len.verl.html_report import write_report

        out.mkdir(parents=True, exist_ok=True)
        report = write_report(summary, out / "report.html")
    if run is not None:
        import wandb

        panels = wandb_panels(rows, measured)
        if report is not None:
            panels["demo/report"] = wandb.Html(report.read_text(encoding="utf-8"), inject=False)
        run.log(panels, step=rows[-1]["step"])
        for key in ("partial_throughput_ratio", "fresh_token_share", "capped_fraction", "reward_slope"):
            run.summary[f"demo/{key}"] = summary[key]
        run.summary["demo/partial_throughput_ratio_ci95"] = summary["partial_throughput_ratio_ci95"]
        summary["wandb_run_dir"], summary["wandb_mode"] = str(Path(run.dir).parent), run.settings.mode
        run.finish()
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'summary.json'}, {report}")
    if run is not None:
        print(f"wandb run ({summary['wandb_mode']}): {summary['wandb_run_dir']}")
    return summary
