"""`rollout-len bench sim`: scheduling policies on simulated workers, GRPO batches on long-tailed traces.

Each GRPO prompt draws a group of lengths from the trace (with replacement; a group smaller than n
is resampled within itself). One warm-up step on a different draw fills the predictor-quality
window, as the previous RL step would. Runs two regimes: slots scarce and slots plentiful.
"""

from __future__ import annotations

import time

import numpy as np

from rollout_len.bench import write_json
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE, CostModel
from rollout_len.sched.predictions import PredictionQuality
from rollout_len.sched.simulator import load_trace, lower_bound_s, simulate

DEFAULT_TRACE = "docs/results/traces/forelen-rl.json"
DEFAULT_POLICIES = ("fcfs", "pool", "static_padded", "bucketed_padded", "length_aware", "oracle")


def draw_groups(groups: list[list[int]], prompts: int, n: int, rng: np.random.Generator) -> list[list[int]]:
    out = []
    for i in rng.integers(0, len(groups), size=prompts):
        g = groups[i]
        out.append([int(x) for x in (g[:n] if len(g) >= n else rng.choice(g, size=n, replace=True))])
    return out


def run(
    workers: int = 64,
    slots: tuple[int, ...] = (4, 16),
    waves: int = 4,
    n: int = 8,
    trace: str = DEFAULT_TRACE,
    profile: str | None = None,
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    every: int = 16,
    sigma: float = 0.5,
    prompt_tokens: int = 128,
    json_path: str | None = None,
    png: str | None = None,
    seed: int = 0,
) -> dict:
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if waves < 1:
        raise ValueError(f"--waves must be >= 1, got {waves}")
    if any(s < 1 for s in slots):
        raise ValueError(f"--slots must all be >= 1, got {slots}")
    if every < 1:
        raise ValueError(f"--every (k, decode steps per chunk) must be >= 1, got {every}")
    if png and not str(png).lower().endswith((".png", ".pdf", ".svg")):
        raise ValueError(f"--png {png}: the chart is written as .png, .pdf or .svg")
    groups, cap = load_trace(trace)
    cost = CostModel.from_yaml(profile or DEFAULT_COST_PROFILE)
    rng = np.random.default_rng(seed)
    result = {"workers": workers, "n": n, "trace": trace, "cost_model": cost.name, "sigma": sigma, "regimes": {}}
    # Extra rows: the do-no-harm check (a predictor that knows nothing) and bucketing fed true lengths.
    runs = [(p, "model") for p in policies] + [("length_aware", "noise"), ("bucketed_padded", "oracle")]
    timelines = {}
    for s in slots:
        count = max(1, (waves * workers * s) // n)  # `waves` slot-fulls of samples per step
        step = draw_groups(groups, count, n, rng)
        warm = draw_groups(groups, count, n, rng)
        lengths = [min(x, cap) if cap else x for g in step for x in g]  # as simulated: capped at the budget
        regime = {
            "slots": s,
            "prompts": count,
            "samples": len(lengths),
            "lower_bound_s": lower_bound_s(lengths, workers, s, cost, prompt_tokens),
            "policies": {},
        }
        print(
            f"\n[sim] {workers} workers x {s} slots, {count} prompts x {n} = {len(lengths)} samples "
            f"(mean {np.mean(lengths):.0f}, max {max(lengths)} tokens), cost model {cost.name}"
        )
        for policy, source in runs:
            name = policy if source == "model" else f"{policy}+{source}"
            quality = PredictionQuality()
            simulate(policy, warm, workers, s, cost, cap, prompt_tokens, every, source, sigma, quality, seed=seed + 1)
            start = time.perf_counter()
            r = simulate(policy, step, workers, s, cost, cap, prompt_tokens, every, source, sigma, quality, seed=seed)
            regime["policies"][name] = {
                "step_time_s": r.step_time_s,
                "padded_fraction": r.padded_fraction,
                "migrations": r.migrations,
                "idle_fraction": r.idle_fraction,
                "policy_s": r.policy_s,
                "sim_wall_s": time.perf_counter() - start,
            }
            if name in ("fcfs", "length_aware", "oracle"):
                timelines[f"{name} ({s} slots)"] = r.timeline
        base = regime["policies"]["fcfs"]["step_time_s"]
        oracle = regime["policies"].get("oracle", {}).get("step_time_s")
        print(
            f"{'policy':<20}{'step s':>9}{'vs fcfs':>9}{'vs oracle':>10}{'vs bound':>9}"
            f"{'padded':>8}{'migr':>6}{'idle':>7}"
        )
        for name, p in regime["policies"].items():
            p["speedup_vs_fcfs"] = base / p["step_time_s"]
            p["ratio_to_oracle"] = p["step_time_s"] / oracle if oracle else None
            p["ratio_to_lower_bound"] = p["step_time_s"] / regime["lower_bound_s"]
            print(
                f"{name:<20}{p['step_time_s']:>9.1f}{p['step_time_s'] / base:>9.2f}"
                f"{(p['ratio_to_oracle'] or float('nan')):>10.2f}{p['ratio_to_lower_bound']:>9.2f}"
                f"{p['padded_fraction']:>8.2f}{p['migrations']:>6}{p['idle_fraction']:>7.2f}"
            )
        print(f"lower bound {regime['lower_bound_s']:.1f} s")
        result["regimes"][str(s)] = regime
    first = result["regimes"][str(slots[0])]
    result["policies"], result["lower_bound_s"] = first["policies"], first["lower_bound_s"]  # the schema
    if png:
        from rollout_len.sched.timeline import plot_timelines

        plot_timelines(timelines, png, max_workers=8)
        print(f"wrote {png}")
    write_json(result, json_path)
    return result
