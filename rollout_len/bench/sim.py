"""`rollout-len bench sim`: scheduling policies on simulated workers, one GRPO step per regime.

Each regime names its cost profile, workers, slots, samples and length trace (REGIMES). A step
draws `prompts` groups of `n` lengths (a recorded trace: groups drawn with replacement, a group
smaller than n resampled within itself; a synthetic trace: drawn fresh). Before the measured step,
policies that use predictions run one warm-up step on a different draw, which fills the
predictor-quality window as the previous RL step would.

Every regime reports the physical floor (`floor_s`: the longest sample alone vs all tokens at full
throughput) and, per policy, its step time and its ratios to the floor, to `pool` (the
prediction-free shared pool, the baseline to beat) and to `fcfs`, and the share of the oracle's
gain over `pool` it captures: (pool - policy) / (pool - oracle).

`--mode partial` (run_partial) runs PARTIAL_REGIME instead, or one custom regime, over `--steps`
partial (stall-free) steps (rollout_len.sched.partial): the rows of PARTIAL_ROWS, each with its
trained tokens and complete groups per second and its staleness histogram.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rollout_len.bench import write_json
from rollout_len.bench.lengths import length_stats
from rollout_len.bench.traces import SYNTHETIC_TRACES, synthetic_trace
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE, PROFILES_DIR, CostModel
from rollout_len.sched.partial import PARTIAL_ROWS, PartialConfig, simulate_partial
from rollout_len.sched.policies import POLICIES
from rollout_len.sched.predictions import LengthPrior, PredictionQuality
from rollout_len.sched.simulator import floor_s, load_trace, simulate

# The recorded rl trace ships in the source tree (docs/results/traces), found from any directory.
RL_TRACE = str(Path(__file__).resolve().parents[2] / "docs" / "results" / "traces" / "forelen-rl.json")
H100 = str(PROFILES_DIR / "h100-qwen2.5-7b.yaml")
CPU = str(DEFAULT_COST_PROFILE)
DEFAULT_POLICIES = ("fcfs", "pool", "static_padded", "bucketed_padded", "length_aware", "oracle")
# (policy, prediction source, what an oracle knows): the do-no-harm check (a predictor that knows
# nothing), the bound on predicting from the prompt alone (each prompt's mean length), and padded
# batches sorted on true lengths.
EXTRA_RUNS = (
    ("length_aware", "noise", "exact"),
    ("oracle", "oracle", "prompt"),
    ("bucketed_padded", "oracle", "exact"),
)
WARMUP_SAMPLES = 512  # finished samples before the measured step: the quality window's size


@dataclass(frozen=True)
class Regime:
    """One simulated step: `prompts` x `n` samples on `workers` x `slots` (trace: a file or
    `synthetic:<name>` from rollout_len.bench.traces)."""

    workers: int
    slots: int
    prompts: int
    n: int
    trace: str
    profile: str
    every: int = 16  # decode steps per chunk (the PLP interval k)
    draws: int = 1  # steps drawn (a small step's result depends on its draw: report the median)
    note: str = ""


REGIMES: dict[str, Regime] = {
    # verl's vLLM default admits 256 sequences per replica: the whole step starts at once.
    "h100-one-wave": Regime(16, 256, 512, 8, "synthetic:reasoning", H100, every=64, note="queue-free: one wave"),
    "h100-queue-4": Regime(64, 4, 128, 8, "synthetic:reasoning", H100, every=32, draws=3, note="queue-heavy: 4 waves"),
    "h100-queue-16": Regime(64, 16, 512, 8, "synthetic:reasoning", H100, every=32, note="queue-heavy: 4 waves"),
    "h100-mix-4": Regime(64, 4, 128, 8, "synthetic:mix", H100, every=32, draws=3, note="heterogeneous prompts"),
    "cpu-queue-4": Regime(64, 4, 128, 8, RL_TRACE, CPU, note="measured CPU profile, the rl trace, 4 waves"),
    "cpu-live": Regime(2, 8, 8, 8, "synthetic:short", CPU, draws=9, note="the live demo's shape, 4 waves"),
}


# Partial steps: verl-sized GRPO batches (256 prompts x 8) on 64 replicas of 16 slots (2 waves), on the
# long-tailed reasoning trace, where a synchronous step waits ~3x its full-throughput time for its tail.
PARTIAL_REGIME = Regime(64, 16, 256, 8, "synthetic:reasoning", H100, every=32, note="quota 256 groups x 8 per step")


def draw_groups(groups: list[list[int]], prompts: int, n: int, rng: np.random.Generator) -> list[list[int]]:
    out = []
    for i in rng.integers(0, len(groups), size=prompts):
        g = groups[i]
        out.append([int(x) for x in (g[:n] if len(g) >= n else rng.choice(g, size=n, replace=True))])
    return out


def draw_step(regime: Regime, seed: int) -> tuple[list[list[int]], int]:
    """One step's groups of lengths (capped at the budget) and the budget."""
    if regime.trace.startswith("synthetic:"):
        return synthetic_trace(regime.trace.split(":", 1)[1], regime.prompts, regime.n, seed)
    groups, cap = load_trace(regime.trace)
    cap = cap or max(max(g) for g in groups)
    step = draw_groups(groups, regime.prompts, regime.n, np.random.default_rng(seed))
    return [[min(x, cap) for x in g] for g in step], cap


def compare(policies: dict[str, dict], floor: float) -> None:
    """Add each policy's ratios to the floor, pool and fcfs, and its share of the oracle's gain.
    With several draws (`draws_s`, the same draws for every policy) a ratio is the median of the
    per-draw ratios (paired), not the ratio of medians."""

    def draws(name: str) -> list[float]:
        p = policies.get(name)
        return p.get("draws_s", [p["step_time_s"]]) if p else []

    def median(values: list[float]) -> float | None:
        return float(np.median(values)) if values else None

    pool, fcfs, oracle = draws("pool"), draws("fcfs"), draws("oracle")
    for p in policies.values():
        mine = p.get("draws_s", [p["step_time_s"]])
        p["ratio_to_floor"] = p["step_time_s"] / floor
        p["ratio_to_pool"] = median([t / b for t, b in zip(mine, pool)])
        p["ratio_to_fcfs"] = median([t / b for t, b in zip(mine, fcfs)])
        gains = [(b - t) / (b - o) for t, b, o in zip(mine, pool, oracle) if b > o]
        p["oracle_gain_share"] = median(gains)


def targets(regime: dict) -> dict[str, dict]:
    """The scheduling targets, met or missed, with their figures (None: does not apply)."""
    pols = regime["policies"]
    out = {}
    if "oracle" in pols:
        r = pols["oracle"]["ratio_to_floor"]
        out["oracle_within_1.05_of_floor"] = {"value": r, "met": r <= 1.05}
    if {"oracle", "pool", "length_aware"} <= set(pols):
        gain = 1 - pols["oracle"]["step_time_s"] / pols["pool"]["step_time_s"]
        share = pols["length_aware"]["oracle_gain_share"]
        applies = gain >= 0.10
        out["length_aware_captures_60pct_of_oracle_gain"] = {
            "oracle_gain_over_pool": gain,
            "value": share,
            "met": (share is not None and share >= 0.6) if applies else None,
        }
    if {"length_aware+noise", "pool"} <= set(pols):
        r = pols["length_aware+noise"]["ratio_to_pool"]
        out["noise_within_1.02_of_pool"] = {"value": r, "met": r <= 1.02}
    return out


def run_regime(
    name: str,
    regime: Regime,
    policies: tuple[str, ...],
    sigma: float,
    prompt_tokens: int,
    seed: int,
    timelines: dict | None = None,
) -> dict:
    """Every policy on the regime's draws. A policy that uses predictions first runs warm-up steps
    (other draws, at least WARMUP_SAMPLES samples in all) that fill its predictor-quality window, as
    earlier RL steps would; each measured draw starts from that window."""
    cost = CostModel.from_yaml(regime.profile)
    draws = [draw_step(regime, seed + 1000 * d) for d in range(regime.draws)]
    cap = draws[0][1]
    samples = regime.prompts * regime.n
    warmups = [draw_step(regime, seed + 1 + i)[0] for i in range(min(8, -(-WARMUP_SAMPLES // samples)))]
    all_groups = [g for groups, _ in draws for g in groups]
    floors = [
        floor_s([x for g in groups for x in g], regime.workers, regime.slots, cost, prompt_tokens)
        for groups, _ in draws
    ]
    out = {**asdict(regime), "cost_model": cost.name, "cap": cap, "floor_s": float(np.median(floors)), "policies": {}}
    out["samples"], out["lengths"], out["warmup_steps"] = samples, length_stats(all_groups, cap), len(warmups)
    print(
        f"\n[sim] {name}: {regime.workers} workers x {regime.slots} slots, {regime.prompts} prompts x {regime.n} = "
        f"{samples} samples x {regime.draws} draw(s), {regime.trace} (median {out['lengths']['median']:.0f}, p90 "
        f"{out['lengths']['p90']:.0f}, max {out['lengths']['max']:.0f}, capped "
        f"{out['lengths']['capped_fraction']:.1%}), {cost.name}, k={regime.every}"
    )
    runs = [(p, "model", "exact") for p in policies] + [r for r in EXTRA_RUNS if r[0] in policies]
    for policy, source, known in runs:
        label = "oracle@prompt" if known == "prompt" else policy if source == "model" else f"{policy}+{source}"
        args = (regime.workers, regime.slots, cost, cap, prompt_tokens, regime.every, source, sigma)
        cls = POLICIES[policy]
        warm, prior = PredictionQuality(), LengthPrior()
        if cls.uses_predictions and cls.prediction_source != "oracle" and source != "oracle":
            for groups in warmups:
                simulate(policy, groups, *args, warm, prior, seed=seed + 1)
        start = time.perf_counter()
        results = [
            simulate(policy, groups, *args, copy.deepcopy(warm), copy.deepcopy(prior), seed=seed, oracle_lengths=known)
            for groups, _ in draws
        ]
        times = [r.step_time_s for r in results]
        mid = results[int(np.argsort(times)[len(times) // 2])]
        out["policies"][label] = {
            "step_time_s": float(np.median(times)),
            "draws_s": times,
            "padded_fraction": mid.padded_fraction,
            "migrations": mid.migrations,
            "idle_fraction": mid.idle_fraction,
            "policy_s": mid.policy_s,
            "sim_wall_s": time.perf_counter() - start,
        }
        if timelines is not None and label in ("pool", "length_aware", "oracle"):
            timelines[f"{label} ({name})"] = mid.timeline
    compare(out["policies"], out["floor_s"])
    out["targets"] = targets(out)
    print_regime(out)
    return out


def print_regime(regime: dict) -> None:
    print(
        f"{'policy':<24}{'step s':>9}{'/floor':>8}{'/pool':>7}{'/fcfs':>7}{'oracle gain':>12}"
        f"{'padded':>8}{'migr':>6}{'idle':>6}"
    )
    for label, p in regime["policies"].items():
        share = p["oracle_gain_share"]
        print(
            f"{label:<24}{p['step_time_s']:>9.1f}{p['ratio_to_floor']:>8.2f}{p['ratio_to_pool'] or float('nan'):>7.2f}"
            f"{p['ratio_to_fcfs'] or float('nan'):>7.2f}{'' if share is None else f'{share:.0%}':>12}"
            f"{p['padded_fraction']:>8.2f}{p['migrations']:>6}{p['idle_fraction']:>6.2f}"
        )
    print(
        f"floor {regime['floor_s']:.1f} s"
        + (" (ratios: medians of the per-draw ratios)" if regime["draws"] > 1 else "")
    )
    for target, t in regime["targets"].items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  target {target}: {value} ({verdict})")


def to_markdown(result: dict, command: str) -> str:
    """The regimes' tables as Markdown, headed by the command that produced them."""
    names = list(result["regimes"])
    lines = [
        "# Simulated GRPO steps: " + ("every regime" if names == list(REGIMES) else ", ".join(names)),
        "",
        f"Generated by `{command}` ({result['wall_s']:.0f} s). Step times are",
        "simulated seconds of one synchronous step (median over the regime's draws). `/floor`: ratio to",
        "the physical floor; `/pool` and `/fcfs`: ratios to those policies; `oracle gain`: the share of",
        "the exact oracle's gain over `pool` captured, (pool - policy) / (pool - oracle). With several",
        "draws (the same draws for every policy), ratios and shares are medians of the per-draw values.",
        "",
    ]
    for name, r in result["regimes"].items():
        st = r["lengths"]
        lines += [
            f"## {name}: {r['workers']} workers x {r['slots']} slots, {r['samples']} samples ({r['note']})",
            "",
            f"Trace `{r['trace']}`: median {st['median']:.0f}, p90 {st['p90']:.0f} (p90/median "
            f"{st['p90_over_median']:.1f}), max {st['max']:.0f} tokens, {st['capped_fraction']:.1%} capped at "
            f"{r['cap']}. Cost model `{r['cost_model']}`, k = {r['every']}, {r['draws']} draw(s), "
            f"{r['warmup_steps']} warm-up step(s). Floor {r['floor_s']:.1f} s.",
            "",
            "| policy | step s | /floor | /pool | /fcfs | oracle gain | padded | migrations |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, p in r["policies"].items():
            share = "" if p["oracle_gain_share"] is None else f"{p['oracle_gain_share']:.0%}"
            pool, fcfs = p["ratio_to_pool"] or float("nan"), p["ratio_to_fcfs"] or float("nan")
            lines.append(
                f"| {label} | {p['step_time_s']:.1f} | {p['ratio_to_floor']:.2f} | {pool:.2f} | {fcfs:.2f} | {share} "
                f"| {p['padded_fraction']:.2f} | {p['migrations']} |"
            )
        lines.append("")
        for target, t in r["targets"].items():
            verdict = "does not apply" if t["met"] is None else ("met" if t["met"] else "**missed**")
            value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"- target `{target}`: {value}, {verdict}")
        lines.append("")
    return "\n".join(lines)


def check_names(flag: str, names: tuple[str, ...], valid: list[str]) -> None:
    """A comma list of names from the command line: not empty, each valid, none twice."""
    if not names:
        raise ValueError(f"{flag} is empty; valid: {valid}")
    unknown = [x for x in names if x not in valid]
    if unknown:
        raise ValueError(f"unknown {flag} {unknown}; valid: {valid}")
    if len(set(names)) < len(names):
        raise ValueError(f"{flag} lists a name twice: {list(names)}")


def check_output(flag: str, path: str) -> None:
    """Make the output's folder now and refuse a path that cannot be written (ValueError naming the flag)."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    try:
        target.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {path}: its folder cannot be created ({err.strerror})") from None
    existed = target.exists()
    try:
        with open(target, "a"):  # can it be written? (an existing file is left as it is)
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot be written ({err.strerror})") from None
    if not existed:
        target.unlink()


def check_sigma(sigma: float) -> None:
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"--sigma (log-normal noise of the simulated predictor) must be finite and >= 0, got {sigma}")


def check_regime(r: Regime) -> None:
    """Sizes >= 1, a known synthetic trace or a readable trace file, a readable cost profile: a bad
    input fails before any simulation, not after the regimes before it."""
    for field in ("workers", "slots", "prompts", "n", "every"):
        if getattr(r, field) < 1:
            raise ValueError(f"--{field} must be >= 1, got {getattr(r, field)}")
    if r.trace.startswith("synthetic:") and r.trace.split(":", 1)[1] not in SYNTHETIC_TRACES:
        raise ValueError(f"--trace {r.trace}: valid synthetic traces are {sorted(SYNTHETIC_TRACES)}")
    if not r.trace.startswith("synthetic:"):
        load_trace(r.trace)
    try:
        CostModel.from_yaml(r.profile)
    except OSError as err:
        raise ValueError(f"--profile {r.profile}: {err.strerror}") from None


def run(
    regimes: tuple[str, ...] = tuple(REGIMES),
    custom: dict | None = None,
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    sigma: float = 0.5,
    prompt_tokens: int = 128,
    json_path: str | None = None,
    png: str | None = None,
    seed: int = 0,
    md_path: str | None = None,
    command: str = "rollout-len bench sim",
) -> dict:
    """Run named regimes, or one `custom` regime (Regime fields overriding `cpu-queue-4`);
    write JSON (`json_path`), Gantt charts (`png`) and Markdown tables (`md_path`)."""
    check_names("--regimes", regimes, list(REGIMES))
    check_names("--policies", policies, sorted(POLICIES))
    check_sigma(sigma)
    if png and not str(png).lower().endswith((".png", ".pdf", ".svg")):
        raise ValueError(f"--png {png}: the chart is written as .png, .pdf or .svg")
    chosen = {name: REGIMES[name] for name in regimes}
    if custom:
        chosen = {"custom": replace(REGIMES["cpu-queue-4"], note="from the command line", **custom)}
    for r in chosen.values():
        check_regime(r)
    for flag, path in (("--png", png), ("--md", md_path), ("--json", json_path)):
        if path:  # outputs land where asked, after a run that may take minutes: check the folders now
            check_output(flag, path)
    result = {"sigma": sigma, "prompt_tokens": prompt_tokens, "seed": seed, "regimes": {}}
    timelines = {} if png else None
    start = time.perf_counter()
    for name, regime in chosen.items():
        result["regimes"][name] = run_regime(name, regime, policies, sigma, prompt_tokens, seed, timelines)
    result["wall_s"] = time.perf_counter() - start
    print(f"\n{len(chosen)} regime(s) in {result['wall_s']:.0f} s")
    write_json(result, json_path)
    if png:
        from rollout_len.sched.timeline import plot_timelines

        plot_timelines(timelines, png, max_workers=8)
        print(f"wrote {png}")
    if md_path:
        Path(md_path).write_text(to_markdown(result, command) + "\n")
        print(f"wrote {md_path}")
    return result


def prompt_stream(regime: Regime, seed: int) -> Iterator[list[int]]:
    """An endless stream of prompts' lengths (groups of `n`), drawn `prompts` at a time as
    `draw_step` draws a step; the same seed gives every row the same prompts in the same order."""
    for i in itertools.count():
        yield from draw_step(regime, seed + 1000 * i)[0]


PARTIAL_FLAGS = {  # PartialConfig field -> its command-line flag, for error messages
    "over_sample_rate": "--over-sample-rate",
    "max_staleness": "--max-staleness",
    "on_stale": "--on-stale",
    "weight_sync_s": "--weight-sync-s",
}


def run_partial(
    custom: dict | None = None,
    rows: tuple[str, ...] = tuple(PARTIAL_ROWS),
    steps: int = 10,
    over_sample_rate: float = 0.5,
    max_staleness: int = 2,
    on_stale: str = "restart",
    weight_sync_s: float = 0.0,
    sigma: float = 0.5,
    prompt_tokens: int = 128,
    json_path: str | None = None,
    md_path: str | None = None,
    seed: int = 0,
    command: str = "rollout-len bench sim --mode partial",
) -> dict:
    """`steps` partial steps of each row (PARTIAL_ROWS) on PARTIAL_REGIME, or on it with the `custom`
    Regime fields (`prompts` is the quota of complete groups per step); writes JSON and Markdown.
    A row whose policy uses predictions first runs one step on other prompts (as `run_regime`
    does): it fills the predictor-quality window and the survival prior, as earlier RL steps would."""
    check_names("--policies", rows, list(PARTIAL_ROWS))
    check_sigma(sigma)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    regime = replace(PARTIAL_REGIME, **(custom or {}))
    check_regime(regime)
    try:
        config = PartialConfig(regime.prompts, over_sample_rate, max_staleness, on_stale, weight_sync_s)
    except ValueError as err:  # name the flag, not the field
        field = str(err).split(" ", 1)[0]
        raise ValueError(f"{PARTIAL_FLAGS.get(field, field)}: {err}") from None
    for flag, path in (("--md", md_path), ("--json", json_path)):
        if path:
            check_output(flag, path)
    cost = CostModel.from_yaml(regime.profile)
    cap = draw_step(regime, seed)[1]
    out = {
        "mode": "partial",
        **asdict(regime),
        "cost_model": cost.name,
        "cap": cap,
        "steps": steps,
        **{k: getattr(config, k) for k in ("over_sample_rate", "max_staleness", "on_stale", "weight_sync_s")},
        "in_flight_groups": config.in_flight,
        "sigma": sigma,
        "prompt_tokens": prompt_tokens,
        "seed": seed,
        "policies": {},
    }
    print(
        f"[sim partial] {regime.workers} workers x {regime.slots} slots, quota {regime.prompts} groups x {regime.n} "
        f"per step, {steps} steps, {regime.trace}, {cost.name}, k={regime.every}; over_sample_rate "
        f"{over_sample_rate} ({config.in_flight} groups in flight), max staleness {max_staleness} ({on_stale})"
    )
    args = (config, regime.workers, regime.slots, cost, cap, prompt_tokens, regime.every, sigma)
    start = time.perf_counter()
    for row in rows:
        t0 = time.perf_counter()
        quality, prior = PredictionQuality(), LengthPrior()
        if POLICIES[PARTIAL_ROWS[row][0]].uses_predictions:
            warm = replace(config, over_sample_rate=0.0)
            simulate_partial(row, prompt_stream(regime, seed + 1), 1, *(warm, *args[1:]), quality, prior, seed=seed + 1)
        r = simulate_partial(row, prompt_stream(regime, seed), steps, *args, quality, prior, seed=seed)
        out["policies"][row] = {**r.to_dict(), "sim_wall_s": time.perf_counter() - t0}
    out["wall_s"] = time.perf_counter() - start
    compare_partial(out["policies"])
    out["targets"] = partial_targets(out["policies"])
    print_partial(out)
    write_json(out, json_path)
    if md_path:
        Path(md_path).write_text(partial_markdown(out, command) + "\n")
        print(f"wrote {md_path}")
    return out


def compare_partial(rows: dict[str, dict]) -> None:
    """Each row's trained-token throughput as a ratio to fcfs_sync's and april's (None without them)."""
    for base in ("fcfs_sync", "april"):
        ref = rows.get(base, {}).get("trained_tokens_per_s")
        for p in rows.values():
            p[f"throughput_vs_{base}"] = p["trained_tokens_per_s"] / ref if ref else None


def partial_targets(rows: dict[str, dict]) -> dict[str, dict]:
    """The issue's simulator targets for length_aware_partial, met or missed (None: a row is missing)."""
    la = rows.get("length_aware_partial")
    if la is None:
        return {}
    out = {}
    for base, bar in (("fcfs_sync", 1.5), ("april", 1.15)):
        value = la[f"throughput_vs_{base}"]
        out[f"throughput_{bar}x_{base}"] = {"value": value, "met": None if value is None else value >= bar}
    share = la["fresh_token_share"]
    out["fresh_token_share_0.95"] = {"value": share, "met": share is not None and share >= 0.95}
    return out


PARTIAL_COLUMNS = (
    ("row", "{}"),
    ("trained tok/s", "{:.0f}"),
    ("groups/s", "{:.2f}"),
    ("x fcfs_sync", "{:.2f}"),
    ("x april", "{:.2f}"),
    ("fresh", "{:.3f}"),
    ("staleness 0/1/2+ (share of tokens)", "{}"),
    ("mean step s", "{:.1f}"),
    ("restarted", "{}"),
    ("dropped groups", "{}"),
    ("wasted tok", "{}"),
    ("unreturned tok", "{}"),
)


def _partial_cells(label: str, p: dict) -> list[str]:
    hist = {int(k): v for k, v in p["staleness_tokens"].items()}
    total = sum(hist.values()) or 1
    stale = "/".join(
        f"{x / total:.2f}" for x in (hist.get(0, 0), hist.get(1, 0), total - hist.get(0, 0) - hist.get(1, 0))
    )
    values = (
        label,
        p["trained_tokens_per_s"],
        p["groups_per_s"],
        p["throughput_vs_fcfs_sync"],
        p["throughput_vs_april"],
        p["fresh_token_share"],
        stale,
        float(np.mean(p["step_time_s"])),
        p["restarted"],
        p["dropped_groups"],
        p["wasted_tokens"],
        p["unreturned_tokens"],
    )
    return ["n/a" if v is None else fmt.format(v) for (_, fmt), v in zip(PARTIAL_COLUMNS, values)]


def print_partial(result: dict) -> None:
    rows = [[name for name, _ in PARTIAL_COLUMNS]]
    rows += [_partial_cells(label, p) for label, p in result["policies"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))))
    for target, t in result["targets"].items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  target {target}: {_value(t)} ({verdict})")


def _value(target: dict) -> str:
    return "n/a" if target["value"] is None else f"{target['value']:.3f}"


def partial_markdown(result: dict, command: str) -> str:
    """The partial rows as a Markdown table, headed by the command that produced them."""
    lines = [
        f"Generated by `{command}` ({result['wall_s']:.0f} s).",
        "",
        "| " + " | ".join(name for name, _ in PARTIAL_COLUMNS) + " |",
        "| --- |" + " ---: |" * (len(PARTIAL_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(_partial_cells(label, p)) + " |" for label, p in result["policies"].items()]
    lines.append("")
    for target, t in result["targets"].items():
        verdict = "does not apply" if t["met"] is None else ("met" if t["met"] else "**missed**")
        lines.append(f"- target `{target}`: {_value(t)}, {verdict}")
    return "\n".join(lines)
