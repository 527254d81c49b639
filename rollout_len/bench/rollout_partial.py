"""`rollout-len bench rollout --mode partial`: stall-free steps against synchronous ones, live.

Rows (the simulator's names, rollout_len.sched.partial.PARTIAL_ROWS): `fcfs_sync` (verl's default
synchronous step: `prompts` new groups per step, every sample waited for), `pool_sync`, `april`
(partial steps without prediction) and `length_aware_partial`. Each row is its own run of `steps`
steps on the same Ray workers (one Coordinator; each partial row keeps its own
`rollout_len.sched.partial.PartialRun`). Rows draw new prompts from one list in the same order,
and a prompt's samples have the same ids and seeds in every row (per-sample RNG from (seed, id)),
so every row decodes the same responses to the same prompts; what differs is when they run and
which step returns them. Steps interleave: step s runs every row once, in `round_order(rows, s)`
(rotated and reversed from step to step), so drift over the run does not favour a row.

A partial step stops once `prompts` groups are complete (the quota: the trainer gets the batch
size it asked for) out of quota / (1 - over_sample_rate) in flight; the rest carries into the
row's next step. No weights change here, so a token's staleness is the number of steps between
the one that made it and the one that returns it, as if one weight update followed each step.

Before the rows, `warmup_steps` synchronous length_aware steps on other prompts fit the PLP head
online (as earlier RL steps would). Metric, per row: trained tokens (tokens of the returned groups)
per second over the run (sum over steps of tokens / sum of step times), groups per second, the
share of trained tokens at staleness <= 1 step and the staleness histogram. Its ratio to
`fcfs_sync` carries a 95% bootstrap interval over steps (step indices resampled with replacement,
paired across rows; the steps of a partial run are not independent, which the interval ignores).
Beside each row, its noise-free twin: the simulator (`simulate_partial`, the same policy objects)
runs the row on the lengths the live run recorded, prompt by prompt in the same order (a prompt no
row returned in time gets a group drawn from the recorded ones; `twin_filled_groups` counts them),
at the speed fitted to the run's own engine steps, with the simulated predictor (log-normal noise
around the true lengths) warmed on the warm-up steps' lengths.
The machine is shared: each step's `load_factor` (its decode time over a cost model fitted to all
of the run's engine steps, rollout_len.sched.costmodel) gives a load-adjusted throughput too
(step time divided by its load factor; a step that decoded nothing, its carried groups meeting the
quota, has none and is not adjusted).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from rollout_len.bench import write_json
from rollout_len.bench.rollout import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    SIM_SIGMA,
    _tokenizer,
    round_order,
    throughput_ratio_ci,
)
from rollout_len.bench.sim import check_output
from rollout_len.data import encode_prompt
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import Sample, SamplingParams, expand_prompts
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.partial import ON_STALE, PARTIAL_ROWS, PartialConfig, PartialRun, simulate_partial
from rollout_len.sched.policies import POLICIES
from rollout_len.sched.predictions import LengthPrior, PredictionQuality
from rollout_len.tasks import task_prompts

DEFAULT_ROWS = ("fcfs_sync", "april", "length_aware_partial")


def _check(rows: tuple[str, ...], numbers: dict[str, int], over_sample_rate: float, on_stale: str) -> None:
    """Refuse bad settings before any worker starts: ValueError naming the flag."""
    for name, value in numbers.items():
        least = 0 if name in ("--warmup-steps", "--max-staleness") else 1
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if not rows:
        raise ValueError("--policies (the rows) is empty")
    unknown = [r for r in rows if r not in PARTIAL_ROWS]
    if unknown:
        raise ValueError(f"--policies: unknown rows {unknown}; valid: {list(PARTIAL_ROWS)}")
    if len(set(rows)) != len(rows):
        raise ValueError(f"--policies lists a row twice: {list(rows)}")
    if not 0 <= over_sample_rate < 1:
        raise ValueError(f"--over-sample-rate must be in [0, 1) (verl's meaning), got {over_sample_rate}")
    if on_stale not in ON_STALE:
        raise ValueError(f"--on-stale must be one of {list(ON_STALE)}, got {on_stale!r}")


def run(
    rows: tuple[str, ...] = DEFAULT_ROWS,
    steps: int = 6,
    workers: int = 2,
    prompts: int = 8,
    n: int = 8,
    slots: int = 8,
    max_new_tokens: int = 256,
    every: int = 16,
    warmup_steps: int = 2,
    over_sample_rate: float = 0.5,
    max_staleness: int = 1,
    on_stale: str = "restart",
    task: str = "arith",
    temperature: float = 0.7,
    model: str = "smollm2-135m",
    json_path: str | None = None,
    seed: int = 0,
    use_ray: bool = True,
) -> dict:
    """Run `steps` interleaved steps of every row (module docstring); returns and writes the result:
    the config, per row its steps (time, trained tokens, groups, staleness, load factor) and
    summary (throughput, ratio to fcfs_sync with its interval, load-adjusted figures)."""
    rows = tuple(rows)
    numbers = {"--steps": steps, "--workers": workers, "--prompts": prompts, "--n": n, "--slots": slots}
    numbers.update({"--max-new-tokens": max_new_tokens, "--every": every, "--warmup-steps": warmup_steps})
    _check(rows, {**numbers, "--max-staleness": max_staleness}, over_sample_rate, on_stale)
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0 (sampled rollouts), got {temperature}")
    if json_path is not None:
        check_output("--json", json_path)
    partial = PartialConfig(prompts, over_sample_rate, max_staleness, on_stale)
    # Enough prompts for the hungriest row: a partial row launches at most in_flight groups a step.
    needed = warmup_steps * prompts + steps * max(partial.in_flight, prompts)
    texts = task_prompts(task, needed, seed)  # validates --task
    coord = Coordinator(
        model, RolloutConfig(num_workers=workers, slots_per_worker=slots, every=every, use_ray=use_ray, seed=seed)
    )
    tok = _tokenizer(model)
    ids = [encode_prompt(tok, t.prompt) for t in texts]
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    result = {
        "mode": "partial",
        "rows": list(rows),
        "steps": steps,
        "workers": workers,
        "slots": slots,
        "task": task,
        "temperature": temperature,
        "quota": prompts,
        "n": n,
        "max_new_tokens": max_new_tokens,
        "every": every,
        "warmup_steps": warmup_steps,
        "over_sample_rate": over_sample_rate,
        "in_flight_groups": partial.in_flight,
        "max_staleness": max_staleness,
        "on_stale": on_stale,
        "seed": seed,
        "model": model,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95, "over": "steps"},
        "warmup": [],
    }
    records: dict[str, list[dict]] = {row: [] for row in rows}
    warm_results = []
    try:
        for w in range(warmup_steps):
            batch = expand_prompts(ids[w * prompts : (w + 1) * prompts], n, params, seed=seed + 1 + w)
            r = coord.run_step(batch, "length_aware")
            warm_results.append(r)
            result["warmup"].append({k: r.metrics[k] for k in ("step_time_s", "predictor_mae")})
            print(f"[warm-up {w + 1}/{warmup_steps}] length_aware {r.metrics['step_time_s']:.1f} s")
        warm = [[[s.num_output for s in g] for g in r.groups().values()] for r in warm_results]
        stream = ids[warmup_steps * prompts :]
        states = {row: _RowState(row, partial) for row in rows}
        for s in range(steps):
            for pos, row in enumerate(round_order(rows, s)):
                rec = states[row].step(coord, stream, n, params, seed)
                rec.update(step=s, position=pos)
                records[row].append(rec)
                print(
                    f"[step {s + 1}/{steps}, {pos + 1}/{len(rows)}] {row} {rec['step_time_s']:.1f} s, "
                    f"{rec['groups']} groups, {rec['trained_tokens']} trained tokens, carried {rec['carried_samples']}"
                )
    finally:
        coord.shutdown()
    logs = [rec.pop("step_log") for row in rows for rec in records[row]]
    cost = CostModel.from_step_log([x for log in logs for x in log], "live-fit (this run's steps)")
    result["cost_model"] = {"name": cost.name, **{k: v for k, v in vars(cost).items() if k != "name"}}
    i = 0
    for row in rows:
        for rec in records[row]:
            # A step whose carried groups met the quota decodes nothing: no speed to measure, nothing to adjust.
            decoded = any(row[0] > 0 for row in logs[i])
            rec["load_factor"] = cost.load_factor(logs[i]) if decoded else None
            i += 1
    result["policies"] = _summaries(rows, records)
    prompt_tokens = int(np.mean([len(x) for x in stream]))
    twin = _twin(rows, records, partial, warm, workers, slots, cost, max_new_tokens, prompt_tokens, every, seed)
    result["twin_filled_groups"] = twin.pop("filled")
    base = twin.get("fcfs_sync")
    for row in rows:
        p = result["policies"][row]
        p["sim_trained_tokens_per_s"] = twin[row]
        p["live_over_sim"] = p["trained_tokens_per_s"] / twin[row]
        p["sim_x_fcfs_sync"] = twin[row] / base if base else None
    _print_table(result)
    write_json(result, json_path)
    return result


def _twin(rows, records, partial, warm, workers, slots, cost, max_new_tokens, prompt_tokens, every, seed) -> dict:
    """Each row's simulated trained tokens per second on the recorded lengths (module docstring),
    and under "filled" how many prompts the replays took that no live row had returned."""
    known: dict[str, list[int]] = {}
    for row in rows:
        for rec in records[row]:
            known.update(rec["group_lengths"])
    recorded = list(known.values())
    filled: set[int] = set()

    def stream():
        rng = np.random.default_rng(seed)
        for i in itertools.count():
            group = known.get(f"p{i}")
            if group is None:
                filled.add(i)
                group = recorded[int(rng.integers(len(recorded)))]
            yield group

    out = {}
    for row in rows:
        quality, prior = PredictionQuality(), LengthPrior()
        args = (workers, slots, cost, max_new_tokens, prompt_tokens, every, SIM_SIGMA)
        if POLICIES[PARTIAL_ROWS[row][0]].uses_predictions:
            for w, groups in enumerate(warm):  # the warm-up steps, synchronous, as live
                config = replace(partial, quota=len(groups), over_sample_rate=0.0)
                simulate_partial(row, iter(groups), 1, config, *args, quality, prior, seed=seed + 1 + w)
        r = simulate_partial(row, stream(), len(records[row]), partial, *args, quality, prior, seed=seed)
        out[row] = r.trained_tokens_per_s
    out["filled"] = len(filled)
    return out


class _RowState:
    """One row's run: its prompt cursor and, for a partial row, its PartialRun."""

    def __init__(self, row: str, partial: PartialConfig):
        self.row, self.policy, self.is_partial = row, *PARTIAL_ROWS[row]
        self.run = PartialRun(partial)
        self.next_prompt = 0

    def step(self, coord: Coordinator, stream: list[list[int]], n: int, params: SamplingParams, seed: int) -> dict:
        count = self.run.groups_to_launch() if self.is_partial else self.run.config.quota
        if self.next_prompt + count > len(stream):
            raise RuntimeError(f"{self.row}: the prompt list ran out ({len(stream)} prompts)")
        new = [
            Sample(f"p{p}-{j}", list(stream[p]), params, seed=seed, group_id=f"p{p}")
            for p in range(self.next_prompt, self.next_prompt + count)
            for j in range(n)
        ]
        self.next_prompt += count
        if self.is_partial:
            r = coord.run_partial_step(new, self.run, self.policy)
            self.run = r.run
            staleness = {str(k): v for k, v in r.staleness_tokens().items()}
            returned = {g: [t.sample.num_output for t in members] for g, members in r.groups.items()}
            trained, carried = int(r.metrics["trained_tokens"]), r.carried
            extra = {k: r.metrics[k] for k in ("restarted", "dropped_groups", "wasted_tokens", "carried_in")}
        else:
            r = coord.run_step(new, self.policy)
            returned = {g: [s.num_output for s in members] for g, members in r.groups().items()}
            trained, carried = sum(s.num_output for s in r.samples), 0
            staleness, extra = {"0": trained}, {}
        groups = len(returned)
        return {
            "step_time_s": r.metrics["step_time_s"],
            "groups": groups,
            "trained_tokens": trained,
            "decode_tokens": int(r.metrics["decode_tokens"]),
            "launched_groups": count,
            "carried_samples": carried,
            "staleness_tokens": staleness,
            "group_lengths": returned,  # group id -> its samples' lengths (tokens), for the twin
            "predictor_mae_inflight": r.metrics["predictor_mae_inflight"],
            "survival_mae_inflight": r.metrics["survival_mae_inflight"],
            **extra,
            "step_log": [row for chunk in r.timeline.chunks for row in chunk.step_log],
        }


def _throughput(recs: list[dict], adjusted: bool = False) -> float:
    return sum(r["trained_tokens"] for r in recs) / sum(_seconds(recs, adjusted))


def _seconds(recs: list[dict], adjusted: bool) -> list[float]:
    """Step times, or step times at the run's average speed (divided by their load factor)."""
    return [r["step_time_s"] / (r["load_factor"] if adjusted and r["load_factor"] else 1.0) for r in recs]


def _ratio(recs: list[dict], base: list[dict], adjusted: bool) -> tuple[float, list[float]]:
    tokens = [[r["trained_tokens"] for r in x] for x in (recs, base)]
    ratio, ci = throughput_ratio_ci(tokens[0], _seconds(recs, adjusted), tokens[1], _seconds(base, adjusted))
    return ratio, list(ci)


def _summaries(rows: tuple[str, ...], records: dict[str, list[dict]]) -> dict:
    base = records.get("fcfs_sync")
    out = {}
    for row in rows:
        recs = records[row]
        tokens = sum(r["trained_tokens"] for r in recs)
        staleness: dict[str, int] = {}
        for r in recs:
            for k, v in r["staleness_tokens"].items():
                staleness[k] = staleness.get(k, 0) + v
        fresh = sum(v for k, v in staleness.items() if int(k) <= 1) / tokens if tokens else None
        summary = {
            "policy": PARTIAL_ROWS[row][0],
            "mode": "partial" if PARTIAL_ROWS[row][1] else "sync",
            "trained_tokens_per_s": _throughput(recs),
            "groups_per_s": sum(r["groups"] for r in recs) / sum(r["step_time_s"] for r in recs),
            "load_adjusted_tokens_per_s": _throughput(recs, adjusted=True),
            "fresh_token_share": fresh,
            "staleness_tokens": dict(sorted(staleness.items(), key=lambda kv: int(kv[0]))),
            "trained_tokens": tokens,
            "decode_tokens": sum(r["decode_tokens"] for r in recs),
            "wall_s": sum(r["step_time_s"] for r in recs),
            "median_step_s": float(np.median([r["step_time_s"] for r in recs])),
            "load_factors": [r["load_factor"] for r in recs],
            "steps": recs,
        }
        if base is not None:
            summary["x_fcfs_sync"], summary["x_fcfs_sync_ci95"] = _ratio(recs, base, adjusted=False)
            adjusted = _ratio(recs, base, adjusted=True)
            summary["load_adjusted_x_fcfs_sync"], summary["load_adjusted_x_fcfs_sync_ci95"] = adjusted
        out[row] = summary
    return out


def _print_table(result: dict) -> None:
    print(
        f"\n{result['workers']} workers x {result['slots']} slots; quota {result['quota']} groups x {result['n']} "
        f"per step, {result['in_flight_groups']} in flight for partial rows; max {result['max_new_tokens']} new "
        f"tokens, {result['steps']} steps per row, staleness bound {result['max_staleness']} ({result['on_stale']})"
    )
    head = (
        f"{'row':<22}{'tok/s':>8}{'x fcfs_sync [95% CI]':>26}{'load-adj x fcfs':>26}{'sim tok/s':>10}"
        f"{'sim x fcfs':>11}{'fresh':>7}{'step s':>8}"
    )
    print(head + "  staleness (tokens)")
    for name, p in result["policies"].items():
        ratio = adj = "-"
        if "x_fcfs_sync" in p:
            lo, hi = p["x_fcfs_sync_ci95"]
            ratio = f"{p['x_fcfs_sync']:.2f} [{lo:.3f}, {hi:.3f}]"
            lo, hi = p["load_adjusted_x_fcfs_sync_ci95"]
            adj = f"{p['load_adjusted_x_fcfs_sync']:.2f} [{lo:.3f}, {hi:.3f}]"
        fresh = "-" if p["fresh_token_share"] is None else f"{p['fresh_token_share']:.3f}"
        sim_x = "-" if p["sim_x_fcfs_sync"] is None else f"{p['sim_x_fcfs_sync']:.2f}"
        print(
            f"{name:<22}{p['trained_tokens_per_s']:>8.1f}{ratio:>26}{adj:>26}{p['sim_trained_tokens_per_s']:>10.1f}"
            f"{sim_x:>11}{fresh:>7}{p['median_step_s']:>8.1f}  {p['staleness_tokens']}"
        )
    print(
        f"sim: the simulator on the recorded lengths at the run's fitted speed ({result['twin_filled_groups']} "
        "prompts no live row returned were drawn from the recorded groups)"
    )
