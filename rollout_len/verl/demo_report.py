"""The GRPO demo's outputs (recipes/grpo_demo): summary rows and table, the simulator replay of each
step, PNG charts, the HTML report, responses, wandb.

A step's result, as `GRPODemo.train_step` returns it: {"metrics": {verl's metric names and
rollout_len/*}, "timelines": {policy: Timeline}, "first": the policy that ran first,
"step_fcfs_s": the GRPO step time with the fcfs rollout, "lengths": response lengths (tokens) per
prompt group, "sim": `SimReplay.step`'s figures, "responses": [{"uid", "response", "length",
"correct", "reward"}]}. The run's figures over steps (`measured`: median saving and its interval,
oracle saving, reward slope, ...) come from the recipe's `measure`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from rollout_len.rollout.coordinator import RolloutConfig
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.predictions import LengthPrior, PredictionQuality
from rollout_len.sched.simulator import floor_s, simulate
from rollout_len.sched.timeline import Timeline, plot_timelines
from rollout_len.verl.agent_loop import RESULT_KEY
from rollout_len.verl.html_report import write_report

__all__ = [
    "comparison_metrics",
    "timelines",
    "group_lengths",
    "SimReplay",
    "slope_ci",
    "response_records",
    "summary_row",
    "setup_line",
    "step_line",
    "format_table",
    "plot_savings",
    "write_step",
    "start_wandb",
    "log_step",
    "log_panels",
    "write_summary",
]


# Below this saving of the oracle over fcfs (a fraction) a share of the oracle's gain is noise over a tiny
# denominator (a 2-step run gave 14.25), so none is given.
MIN_ORACLE_SAVING = 0.01

PREDICTOR_METRICS = (
    "predictor_mae_inflight",
    "survival_mae_inflight",
    "predictor_mae_admission",
    "constant_mae_admission",
)


def step_cost_model(metrics: dict[str, float]) -> CostModel:
    """The cost model a live step ran with (the Coordinator's `cost_*` step metrics: refitted to the
    workers' own timed steps), so a replay runs at the speed the live step ran."""
    return CostModel(
        **{f.name: metrics[f"cost_{f.name}"] for f in fields(CostModel) if f.name != "name"}, name="live-fit"
    )


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
        # in flight beside the survival baseline at the same t; at admission beside the constant median
        **{f"rollout_len/{k}": la[k] for k in PREDICTOR_METRICS},
        "rollout_len/floor_s": la["floor_s"],
        "rollout_len/ratio_to_floor": la["ratio_to_floor"],
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


def group_lengths(data) -> list[list[int]]:
    """Response lengths (tokens) of a rollout output, grouped by `uid` in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for uid, n in zip(data.non_tensor_batch["uid"], data.batch["response_mask"].sum(dim=-1).tolist()):
        groups.setdefault(str(uid), []).append(int(n))
    return list(groups.values())


class SimReplay:
    """The simulator's replay of each live step's recorded lengths, on the rollout's workers, slots,
    chunk size, prediction source and cost model (`rollout_len.sched.simulator.simulate`): a
    twin of the live comparison free of timing noise, with the `oracle` (exact lengths) and the prediction-free
    shared `pool` beside fcfs and length_aware. The length_aware replay carries its
    predictor-quality window and survival prior from step to step, as the live Coordinator does.
    """

    POLICIES = ("fcfs", "pool", "length_aware", "oracle")

    def __init__(self, config: RolloutConfig, max_new_tokens: int):
        self.config, self.cost, self.max_new_tokens = config, config.cost_model(), max_new_tokens
        self.quality, self.prior = PredictionQuality(), LengthPrior()

    def step(self, groups: list[list[int]], prompt_tokens: int, seed: int, cost: CostModel | None = None) -> dict:
        """One step's replay: {"sim_s": {policy: simulated step time, s}, "sim_floor_s": the cost model's
        physical floor of these lengths, "sim_saving" and "oracle_saving": 1 - policy / fcfs of
        length_aware and the oracle, "sim_oracle_gain_share": (fcfs - length_aware) / (fcfs - oracle),
        None when the oracle saves under MIN_ORACLE_SAVING}. `prompt_tokens`: the step's mean prompt length; `cost`: the
        live step's cost model (`step_cost_model`), else the configured profile."""
        c, cost = self.config, cost or self.cost
        args = dict(
            num_workers=c.num_workers,
            slots=c.slots_per_worker,
            cost=cost,
            max_new_tokens=self.max_new_tokens,
            prompt_tokens=prompt_tokens,
            every=c.every,
            predictions=c.predictions,
            seed=seed,
        )
        carried = {"length_aware": {"quality": self.quality, "prior": self.prior}}
        sim = {p: simulate(p, groups, **args, **carried.get(p, {})).step_time_s for p in self.POLICIES}
        lengths = [x for g in groups for x in g]
        gain = sim["fcfs"] - sim["oracle"]
        return {
            "sim_s": sim,
            "sim_floor_s": floor_s(lengths, c.num_workers, c.slots_per_worker, cost, prompt_tokens),
            "sim_saving": 1.0 - sim["length_aware"] / sim["fcfs"],
            "oracle_saving": 1.0 - sim["oracle"] / sim["fcfs"],
            "sim_oracle_gain_share": (
                (sim["fcfs"] - sim["length_aware"]) / gain if gain >= MIN_ORACLE_SAVING * sim["fcfs"] else None
            ),
        }


def slope_ci(
    x: list[float], y: list[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float | None, list[float] | None]:
    """Least-squares slope of y over x (units of y per unit of x) and its percentile bootstrap interval
    (the (x, y) pairs resampled with replacement; resamples whose x are all equal, which have no
    slope, are left out). (None, None) with fewer than two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.unique(x).size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, x.size, size=(resamples, x.size))
    xs, ys = x[picks], y[picks]
    xc = xs - xs.mean(axis=1, keepdims=True)
    var = (xc**2).sum(axis=1)
    slopes = (xc * (ys - ys.mean(axis=1, keepdims=True))).sum(axis=1)[var > 0] / var[var > 0]
    tail = 50 * (1 - level)
    lo, hi = np.percentile(slopes, [tail, 100 - tail])
    return float(np.polyfit(x, y, 1)[0]), [float(lo), float(hi)]


def response_records(data, details: list[dict]) -> list[dict]:
    """One `responses.jsonl` record per row: {"uid", "response" (text), "length" (tokens), "correct" (the
    answer checker's score), "reward"}; `details` as `rollout_len.verl.reward.score_batch` returns them."""
    lengths = data.batch["response_mask"].sum(dim=-1).tolist()
    return [
        {"uid": str(uid), "response": d["response"], "length": int(n), "correct": d["acc"], "reward": d["reward"]}
        for uid, d, n in zip(data.non_tensor_batch["uid"], details, lengths)
    ]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def summary_row(step: int, result: dict) -> dict:
    """One `summary.json` row of a step: times in seconds, savings as fractions (1 - aware / fcfs), the
    simulator replay (`SimReplay.step`), lengths per group and both timelines (`Timeline.to_dict`).

    `oracle_gain_share` is the live saving over the replay's oracle saving (None when the oracle
    saves under MIN_ORACLE_SAVING); `predictor_mae` the in-flight (t > 0) predictor's mean absolute error in tokens and
    `survival_mae` the survival baseline's on the same predictions (None before the first re-fit);
    `predictor_mae_admission` / `constant_mae_admission` the same at t = 0 against the constant median."""
    m, sim = result["metrics"], result["sim"]
    return {
        "step": step,
        "step_time_s": m["timing_s/step"],
        "rollout_time_s": m["timing_s/gen"],
        "fcfs_rollout_time_s": m["timing_s/gen_fcfs"],
        "saving": (saving := m["rollout_len/saving_vs_fcfs"]),
        **sim,
        "oracle_gain_share": saving / sim["oracle_saving"] if sim["oracle_saving"] >= MIN_ORACLE_SAVING else None,
        "floor_s": m["rollout_len/floor_s"],
        "ratio_to_floor": m["rollout_len/ratio_to_floor"],
        "sim_ratio_to_floor": sim["sim_s"]["length_aware"] / sim["sim_floor_s"],
        "reward_mean": m["critic/score/mean"],
        "correct_mean": m["reward/correct_mean"],
        "predictor_mae": _finite(m["rollout_len/predictor_mae_inflight"]),
        "survival_mae": _finite(m["rollout_len/survival_mae_inflight"]),
        "predictor_mae_admission": _finite(m["rollout_len/predictor_mae_admission"]),
        "constant_mae_admission": _finite(m["rollout_len/constant_mae_admission"]),
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
        "lengths": result["lengths"],
        "timelines": {name: t.to_dict() for name, t in result["timelines"].items()},
    }


def setup_line(cfg: dict) -> str:
    """The console line before setup: model, workers, task, prompts and samples per step."""
    return (
        f"setting up: {cfg['model']}, {cfg['num_workers']} rollout workers x {cfg['slots_per_worker']} slots, "
        f"{cfg['steps']} steps of {cfg['prompts_per_step']} {cfg['task']} prompts x {cfg['samples_per_prompt']} "
        f"samples, at most {cfg['max_new_tokens']} new tokens, temperature {cfg['temperature']}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _interval(values: list[float] | None) -> str:
    return "-" if values is None else f"[{values[0]:+.1%}, {values[1]:+.1%}]"


def step_line(row: dict, metrics: dict, measured: dict) -> str:
    """The console line of a step, from its summary row, metrics and the run's figures so far."""
    return (
        f"step {row['step']}: rollout {row['rollout_time_s']:.1f} s vs fcfs {row['fcfs_rollout_time_s']:.1f} s "
        f"({row['saving']:+.1%}, {row['first_rollout']} first; sim {row['sim_saving']:+.1%}, "
        f"oracle {row['oracle_saving']:+.1%}), update_actor {metrics['timing_s/update_actor']:.1f} s, "
        f"update_weights {metrics['timing_s/update_weights']:.1f} s, reward {row['reward_mean']:.3f}, "
        f"mean length {row['response_length_mean']:.0f}; median saving so far {measured['median_saving']:+.1%} "
        f"{_interval(measured['saving_ci95'])}"
    )


def format_table(rows: list[dict], measured: dict) -> str:
    """The console table of summary rows, then the run's figures with their 95% intervals."""
    header = (
        f"{'step':>4} {'rollout s':>10} {'fcfs s':>7} {'saving':>7} {'sim':>7} {'oracle':>7} {'share':>7} "
        f"{'live/floor':>10} {'reward':>7} {'PLP MAE':>8} {'surv MAE':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        mae = "-" if r["predictor_mae"] is None else f"{r['predictor_mae']:.1f}"
        surv = "-" if r.get("survival_mae") is None else f"{r['survival_mae']:.1f}"
        share = "-" if r["oracle_gain_share"] is None else f"{r['oracle_gain_share']:.2f}"
        lines.append(
            f"{r['step']:>4} {r['rollout_time_s']:>10.1f} {r['fcfs_rollout_time_s']:>7.1f} {r['saving']:>+7.1%} "
            f"{r['sim_saving']:>+7.1%} {r['oracle_saving']:>+7.1%} {share:>7} {r['ratio_to_floor']:>10.2f} "
            f"{r['reward_mean']:>7.3f} {mae:>8} {surv:>8}"
        )
    m = measured
    slope = "-" if m["reward_slope"] is None else f"{m['reward_slope']:+.4f} per step"
    slope_ci = "" if m["reward_slope_ci95"] is None else " [{:+.4f}, {:+.4f}]".format(*m["reward_slope_ci95"])
    share = "-" if m["oracle_gain_share"] is None else f"{m['oracle_gain_share']:.2f}"
    lines += [
        f"median rollout saving vs fcfs: {m['median_saving']:+.1%} {_interval(m['saving_ci95'])} (95% bootstrap, "
        f"{len(rows)} steps); simulator replay: length_aware {_pct(m['sim_saving'])}, oracle {_pct(m['oracle_saving'])}"
        f"; share of the oracle's saving {share}",
        f"capped responses {m['capped_fraction']:.1%}; reward slope {slope}{slope_ci}",
    ]
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


def log_step(run, step: int, metrics: dict, row: dict, measured: dict, timeline_png: Path | None) -> None:
    """Log a step to a wandb run (nothing without one): its metrics, its summary row's savings (live,
    simulator replay, oracle), the median saving so far with its 95% interval, and the timeline PNG."""
    if run is None:
        return
    import wandb

    low, high = measured["saving_ci95"]
    logged = {
        **metrics,
        **{f"demo/{key}": row[key] for key in ("saving", "sim_saving", "oracle_saving", "reward_mean")},
        "demo/median_saving": measured["median_saving"],
        "demo/saving_ci95_low": low,
        "demo/saving_ci95_high": high,
    }
    if timeline_png is not None:
        logged["rollout_len/timeline"] = wandb.Image(str(timeline_png))
    run.log(logged, step=step)


TABLE_COLUMNS = (
    "step",
    "rollout_time_s",
    "fcfs_rollout_time_s",
    "saving",
    "sim_saving",
    "oracle_saving",
    "oracle_gain_share",
    "reward_mean",
    "predictor_mae",
    "survival_mae",
)


def log_panels(run, summary: dict, report: Path | None) -> None:
    """The dashboard's panels in a wandb run: the steps as a table, saving per step (live, simulator
    replay, oracle) and reward per step as line plots, the response lengths as a histogram, the partial
    run's panels (`partial_report.wandb_panels`) when the rows have them, the run's figures in the run
    summary, and the HTML report itself."""
    import wandb

    rows = summary["steps"]
    steps = [r["step"] for r in rows]
    table = wandb.Table(columns=list(TABLE_COLUMNS), data=[[r[c] for c in TABLE_COLUMNS] for r in rows])
    savings = [[r[key] for r in rows] for key in ("saving", "sim_saving", "oracle_saving")]
    panels = {
        "demo/steps": table,
        "demo/saving_per_step": wandb.plot.line_series(
            xs=steps,
            ys=savings,
            keys=["live", "simulator replay", "oracle (simulator)"],
            title="saving vs fcfs",
            xname="step",
        ),
        "demo/reward_per_step": wandb.plot.line(table, "step", "reward_mean", title="reward mean per step"),
        "demo/response_lengths": wandb.Histogram([x for r in rows for g in r["lengths"] for x in g]),
    }
    scored = [r for r in rows if r["predictor_mae"] is not None and r["survival_mae"] is not None]
    if scored:
        panels["demo/predictor_mae_per_step"] = wandb.plot.line_series(
            xs=[r["step"] for r in scored],
            ys=[[r["predictor_mae"] for r in scored], [r["survival_mae"] for r in scored]],
            keys=["PLP in flight", "survival baseline"],
            title="predictor MAE in flight (tokens)",
            xname="step",
        )
    partial = [r["partial"] for r in rows if "partial" in r]  # the default run's partial steps
    if partial:
        from rollout_len.verl.partial_report import wandb_panels

        panels |= wandb_panels(partial, summary)
    if report is not None:
        panels["demo/report"] = wandb.Html(report.read_text(encoding="utf-8"), inject=False)
    run.log(panels, step=steps[-1])  # beside the last step's metrics, in the same history row
    keys = ["median_saving", "oracle_saving", "oracle_gain_share", "capped_fraction", "reward_slope"]
    for key in keys + (["partial_throughput_ratio", "fresh_token_share"] if partial else []):
        run.summary[f"demo/{key}"] = summary[key]
    run.summary["demo/saving_ci95"] = summary["saving_ci95"]
    run.summary["demo/reward_slope_ci95"] = summary["reward_slope_ci95"]
    if partial:
        run.summary["demo/partial_throughput_ratio_ci95"] = summary["partial_throughput_ratio_ci95"]


def write_summary(cfg: dict, rows: list[dict], measured: dict, out: Path | None, run, **extra: float) -> dict:
    """End of the demo: the summary {"config", "steps": summary rows, **measured (the recipe's `measure`),
    **extra (e.g. setup_s, wall_time_s), and with a wandb run "wandb_run_dir", "wandb_mode"}, written to
    `out`/summary.json with `step_time_saving.png` and the dashboard `report.html`; the wandb run gets the
    same panels (`log_panels`) and is finished. Returns the summary."""
    summary = {"config": cfg, **measured, **extra, "steps": rows}
    report = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_savings(rows, out / "step_time_saving.png")
        report = write_report(summary, out / "report.html")
    if run is not None:
        log_panels(run, summary, report)
        summary["wandb_run_dir"], summary["wandb_mode"] = str(Path(run.dir).parent), run.settings.mode
        run.finish()
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'summary.json'}, {report}, {out / 'step_time_saving.png'}, {out}/timeline_step*.png")
    if run is not None:
        print(f"wandb run ({summary['wandb_mode']}): {summary['wandb_run_dir']}")
    return summary
