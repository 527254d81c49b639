"""`rollout-len bench rollout`: policies on real Ray workers decoding the embedded model.

Every policy runs the same GSM8K prompts with the same samples and seed (per-sample RNG from
(seed, sample id)), on the same workers with the same capped slots. Before the measured rounds,
warm-up steps of length_aware on *other* prompts fit the PLP head online and fill the
predictor-quality window, as earlier RL steps would.

Rounds: `repeats` rounds, each running every policy once on the same samples. The order
alternates so that drift over the run (each live step tends to be slower than the one before)
does not favour a policy (`round_order`): round 2q runs the list rotated left by q, round 2q + 1
runs that order reversed. In each such pair every policy's mean position is the middle, so a
linear drift cancels pair by pair; over 2 x len(policies) rounds every policy holds every
position twice. Round 0 can only start with the oracle if it is listed first: it then runs second.

The oracle gets the true lengths of the round's first non-oracle run before it; when the round
opens with the oracle, those of the previous round's first run. Sampling is seeded per sample, so
every run on these samples is expected to give the same lengths; the batched matmuls are not
guaranteed bitwise batch-invariant, so `lengths_check` counts the samples whose length differs
from the round's first run (and from round 0), and each oracle run records how many of its
samples ended at another length than it was given (`oracle_lengths_off`).

Reported per policy: its step time in each round, the median and a 95% bootstrap interval of the
median (rounds resampled with replacement, fixed seed); the paired per-round ratio to `pool`
(policy / pool in the same round) and the share of the oracle's gain over pool it captures,
(pool - policy) / (pool - oracle), each with its median and 95% bootstrap interval; its median
over the floor (`floor_s`: the cost model's physical floor of the recorded lengths); and a
noise-free twin: each round's recorded lengths of that run, replayed in the simulator with the
same policy, workers, slots and chunk size (`sim_step_time_s`, the median over rounds, and
`live_over_sim`, the median of the per-round live / sim ratios). The simulated predictor is
log-normal noise (sigma `SIM_SIGMA`) around the true remaining length, warmed by replaying the
warm-up steps' lengths; the live one is the PLP head.

The cost model of the twins and of the floor is fitted to this run's own engine steps
(`Report.step_log`: every decode step's batch, context and seconds, every prefill's tokens and
seconds, timed inside the live workers under their threads and load), pooled over every measured
run (`cost_model`): one speed for all policies, so the twins compare schedules, not load. The
machine is shared, so speed drifts between runs; each run's `load_factor` is its measured decode
time over what the pooled model predicts for the same steps (1.3: that run's steps ran 30% slower
than the run's average speed); `load_adjusted` repeats the step time, the paired ratio to pool and the
oracle-gain share on live step times divided by their run's load factor (decode at the run's
average speed; prefill and round trips are not adjusted). `sim_own_fit_s` replays a run with a
cost model fitted to that run's steps alone: with its own speed, the simulator's schedule is
checked against the live one (`live_over_own_fit`), which separates what the simulator leaves out
from drift in speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rollout_len.bench import write_json
from rollout_len.bench.sim import compare
from rollout_len.data import encode_prompt
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.policies import POLICIES
from rollout_len.sched.predictions import PredictionQuality
from rollout_len.sched.simulator import floor_s, simulate
from rollout_len.tasks import task_prompts

DEFAULT_POLICIES = ("pool", "fcfs", "length_aware", "oracle")
SIM_SIGMA = 0.5  # log-normal noise of the simulated predictor (bench sim's default)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SUMMARY_METRICS = ("padded_fraction", "migrations", "worker_idle_fraction", "predictor_mae")


def round_order(policies: tuple[str, ...], r: int) -> tuple[str, ...]:
    """The order of round r (0-based): rotated left by r // 2, reversed when r is odd.

    In round 0 the oracle, if listed first, runs second (it needs a finished run's lengths).
    Raises ValueError for no policies or r < 0.
    """
    if not policies or r < 0:
        raise ValueError(f"round_order needs policies and a round >= 0, got {policies!r}, {r}")
    k = (r // 2) % len(policies)
    order = tuple(policies[k:]) + tuple(policies[:k])
    if r % 2:
        order = order[::-1]
    if r == 0 and order[0] == "oracle" and len(order) > 1:
        order = (order[1], order[0]) + order[2:]
    return order


def bootstrap_median_ci(
    values: list[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (one per round, any unit).

    Resamples the values with replacement `resamples` times (numpy RNG from `seed`) and returns the
    (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled medians: [x, x] when all values
    equal x. Raises ValueError for no values or a level outside (0, 1).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_median_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    tail = 50 * (1 - level)
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def throughput_ratio_ci(
    tokens: list[float],
    seconds: list[float],
    base_tokens: list[float],
    base_seconds: list[float],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, tuple[float, float]]:
    """Throughput (sum tokens / sum seconds) over a base's, with a percentile bootstrap interval:
    index i pairs the runs' i-th steps (or rounds), and pairs are resampled with replacement.
    Returns (ratio, (low, high)). Raises ValueError for lists of unequal or zero length."""
    arrays = [np.asarray(x, dtype=float) for x in (tokens, seconds, base_tokens, base_seconds)]
    k = arrays[0].size
    if k == 0 or any(a.size != k for a in arrays):
        raise ValueError(f"throughput_ratio_ci needs four lists of one length >= 1, got {[a.size for a in arrays]}")
    t, s, bt, bs = arrays
    ratio = float((t.sum() / s.sum()) / (bt.sum() / bs.sum()))
    idx = np.random.default_rng(seed).integers(0, k, size=(resamples, k))
    ratios = (t[idx].sum(1) / s[idx].sum(1)) / (bt[idx].sum(1) / bs[idx].sum(1))
    tail = 50 * (1 - level)
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return ratio, (float(lo), float(hi))


def summarize(per_round: list[float | None]) -> dict:
    """{"median", "ci95", "rounds"} of per-round values; rounds where it is undefined (None) are
    left out of the median and interval, which are None when no round defines it."""
    values = [v for v in per_round if v is not None]
    if not values:
        return {"median": None, "ci95": None, "rounds": per_round}
    return {"median": float(np.median(values)), "ci95": list(bootstrap_median_ci(values)), "rounds": per_round}


def sim_twin(
    policy: str,
    groups: list[list[int]],
    warm: list[list[list[int]]],
    coord: Coordinator,
    max_new_tokens: int,
    prompt_tokens: int,
    seed: int,
    cost: CostModel | None = None,
) -> float:
    """Simulated step time (s) of `policy` on recorded lengths (groups per prompt), on the
    coordinator's configured workers, slots, chunk size and prediction source, with `cost` (default:
    the coordinator's cost model). A policy that uses model predictions first replays the warm-up
    steps' groups (`warm`) to fill its quality window."""
    c = coord.config
    args = dict(
        num_workers=c.num_workers,
        slots=c.slots_per_worker,
        cost=cost or coord.cost,
        max_new_tokens=max_new_tokens,
        prompt_tokens=prompt_tokens,
        every=c.every,
        predictions=c.predictions,
        sigma=SIM_SIGMA,
        quality=PredictionQuality(),
    )
    cls = POLICIES[policy]
    if cls.uses_predictions and cls.prediction_source != "oracle":
        for w, groups_w in enumerate(warm):
            simulate(policy, groups_w, seed=seed + 1 + w, **args)
    return simulate(policy, groups, seed=seed, **args).step_time_s


def _groups(result) -> list[list[int]]:
    """Response lengths (tokens) grouped per prompt, in the step's group order."""
    return [[s.num_output for s in g] for g in result.groups().values()]


def _check(policies: tuple[str, ...], numbers: dict[str, int]) -> None:
    """Refuse bad settings before any worker starts: ValueError naming the flag."""
    for name, value in numbers.items():
        least = 0 if name == "--warmup-steps" else 1
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if not policies:
        raise ValueError("--policies is empty")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"--policies: unknown {unknown}; valid: {sorted(POLICIES)}")
    if len(set(policies)) != len(policies):
        raise ValueError(f"--policies lists a policy twice: {list(policies)}")
    if "oracle" in policies and len(policies) == 1:
        raise ValueError("--policies: the oracle needs another policy's run for its true lengths")


def run(
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    workers: int = 2,
    prompts: int = 16,
    n: int = 8,
    slots: int = 8,
    max_new_tokens: int = 256,
    every: int = 16,
    warmup_steps: int = 2,
    repeats: int = 3,
    task: str = "gsm8k",
    temperature: float = 1.0,
    model: str = "smollm2-135m",
    predictions: str = "model",
    quick: bool = False,
    json_path: str | None = None,
    png: str | None = None,
    seed: int = 0,
    use_ray: bool = True,
    engine: str = "hf",
    engine_eager: bool = False,
) -> dict:
    """Run `repeats` rounds of every policy on one step's samples (see the module docstring).

    Returns (and writes to `json_path`) the config, the warm-up steps, the order of each round,
    `floor_s`, `lengths_check` and, per policy, its rounds and their summaries. Raises ValueError
    naming the flag for a bad setting.
    """
    if quick:
        workers, prompts, n = min(workers, 2), min(prompts, 8), min(n, 4)
        max_new_tokens, warmup_steps, repeats = min(max_new_tokens, 96), min(warmup_steps, 1), min(repeats, 2)
    policies = tuple(policies)
    _check(
        policies,
        {
            "--workers": workers,
            "--prompts": prompts,
            "--n": n,
            "--slots": slots,
            "--max-new-tokens": max_new_tokens,
            "--every": every,
            "--warmup-steps": warmup_steps,
            "--repeats": repeats,
        },
    )
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0 (sampled rollouts), got {temperature}")
    if engine == "vllm":
        static = [p for p in policies if POLICIES[p].static_batches]
        if static:
            raise ValueError(f"--policies: {static} run padded static batches, which --engine vllm does not")
        from rollout_len.vllm_engine import vllm_model_path

        vllm_model_path(model)  # an in-memory test model is refused here, before any worker starts
    tok = _tokenizer(model)  # a model that does not load fails here, before any worker starts
    texts = task_prompts(task, prompts * (warmup_steps + 1), seed)  # validates --task
    coord = Coordinator(
        model,
        RolloutConfig(
            num_workers=workers,
            slots_per_worker=slots,
            every=every,
            predictions=predictions,
            use_ray=use_ray,
            seed=seed,
            engine=engine,
            engine_eager=engine_eager,
        ),
    )
    ids = [encode_prompt(tok, t.prompt) for t in texts]
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    result = {
        "workers": workers,
        "slots": slots,
        "task": task,
        "temperature": temperature,
        "prompts": prompts,
        "n": n,
        "max_new_tokens": max_new_tokens,
        "every": every,
        "warmup_steps": warmup_steps,
        "repeats": repeats,
        "seed": seed,
        "model": model,
        "engine": engine,
        "engine_eager": engine_eager,
        "predictions": predictions,
        "cost_profile": coord.cost.name,
        "sim_sigma": SIM_SIGMA,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95},
        "warmup": [],
    }
    try:
        warm = _warm_up(coord, ids, prompts, n, params, warmup_steps, seed, result["warmup"])
        step_ids = ids[:prompts]
        prompt_tokens = int(np.mean([len(x) for x in step_ids]))
        alone = [] if engine == "vllm" else None
        runs, timelines = _rounds(coord, policies, step_ids, n, params, repeats, seed, alone)
    finally:
        coord.shutdown()
    every_run = [run_r for round_runs in runs for run_r in round_runs.values()]
    cost = CostModel.from_step_log([row for x in every_run for row in x["step_log"]], "live-fit (this run's steps)")
    result["cost_model"] = {"name": cost.name, **{k: v for k, v in vars(cost).items() if k != "name"}}
    for round_runs in runs:
        for policy, run_r in round_runs.items():
            groups, steps = run_r.pop("groups"), run_r.pop("step_log")
            twin = dict(groups=groups, warm=warm, coord=coord, max_new_tokens=max_new_tokens)
            twin.update(prompt_tokens=prompt_tokens, seed=seed)
            run_r["sim_step_time_s"] = sim_twin(policy, cost=cost, **twin)
            run_r["sim_own_fit_s"] = sim_twin(policy, cost=CostModel.from_step_log(steps, "own"), **twin)
            run_r["load_factor"] = cost.load_factor(steps)
    floors = [floor_s(_first(x)["lengths"], workers, slots, cost, prompt_tokens) for x in runs]
    result["order"] = [list(round_order(policies, r)) for r in range(repeats)]
    result["floor_s_rounds"] = floors
    result["floor_s"] = float(np.median(floors))
    result["lengths_check"] = _lengths_check(runs)
    result["policies"] = _summaries(policies, runs, floors)
    if alone is not None:
        result["engine_alone"] = _alone_summary(alone, runs)
    _print_table(result)
    write_json(result, json_path)  # first: a chart that fails must not lose a long live run
    if png:
        from rollout_len.sched.timeline import plot_timelines

        Path(png).resolve().parent.mkdir(parents=True, exist_ok=True)
        plot_timelines(timelines, png)
        print(f"wrote {png}")
    return result


def _warm_up(coord, ids, prompts, n, params, steps, seed, log: list) -> list[list[list[int]]]:
    """length_aware steps on the prompts after the measured ones; returns their lengths per group."""
    warm = []
    for w in range(steps):
        samples = expand_prompts(ids[(w + 1) * prompts : (w + 2) * prompts], n, params, seed=seed + 1 + w)
        r = coord.run_step(samples, "length_aware")
        warm.append(_groups(r))
        log.append({k: r.metrics[k] for k in ("step_time_s", "predictor_mae")})
        print(
            f"[warm-up {w + 1}/{steps}] length_aware {r.metrics['step_time_s']:.1f} s, "
            f"predictor MAE {r.metrics['predictor_mae']:.1f}"
        )
    return warm


def _rounds(coord, policies, step_ids, n, params, repeats, seed, alone: list | None = None) -> tuple[list[dict], dict]:
    """Run every round; returns ([{policy: run record}] per round, the first round's timelines). With
    `alone` (a list), each round also runs the engines alone (`Coordinator.run_alone`) at position
    r mod (policies + 1) and appends {"seconds", "position", "lengths"} to it."""
    runs, timelines, true = [], {}, None
    for r in range(repeats):
        order = round_order(policies, r)
        runs.append({})
        first = None  # the round's first non-oracle run's true lengths
        for pos, policy in enumerate(order):
            samples = expand_prompts(step_ids, n, params, seed=seed)
            if alone is not None and pos == r % (len(order) + 1):
                lengths, wall = coord.run_alone(samples)
                alone.append({"seconds": wall, "position": pos, "lengths": [lengths[s.sample_id] for s in samples]})
                print(f"[round {r + 1}/{repeats}] engine alone (no taps, no scheduler) {wall:.1f} s")
            oracle = policy == "oracle"
            given = (first or true) if oracle else None
            res = coord.run_step(samples, policy, true_lengths=given)
            lengths = {s.sample_id: s.num_output for s in res.samples}
            record = dict(res.metrics)
            record.update(position=pos, lengths=list(lengths.values()), groups=_groups(res), plans=res.plans)
            record["step_log"] = [row for chunk in res.timeline.chunks for row in chunk.step_log]
            if oracle:
                record["oracle_lengths_off"] = sum(lengths[k] != v for k, v in given.items())
            elif first is None:
                first = true = lengths
            runs[r][policy] = record
            if r == 0:
                timelines[policy] = res.timeline
            print(
                f"[round {r + 1}/{repeats}, {pos + 1}/{len(order)}] {policy} {record['step_time_s']:.1f} s, "
                f"padded {record['padded_fraction']:.2f}, migrations {record['migrations']:.0f}, "
                f"idle {record['worker_idle_fraction']:.2f}"
            )
        if alone is not None and r % (len(order) + 1) == len(order):  # this round's last position
            samples = expand_prompts(step_ids, n, params, seed=seed)
            lengths, wall = coord.run_alone(samples)
            alone.append({"seconds": wall, "position": len(order), "lengths": [lengths[s.sample_id] for s in samples]})
            print(f"[round {r + 1}/{repeats}] engine alone (no taps, no scheduler) {wall:.1f} s")
    return runs, timelines


def _alone_summary(alone: list[dict], runs: list[dict]) -> dict:
    """The engines alone per round, and each policy's step time over it in the same round (paired)."""
    seconds = [a["seconds"] for a in alone]
    ratios = {
        policy: [round_runs[policy]["step_time_s"] / a["seconds"] for round_runs, a in zip(runs, alone)]
        for policy in runs[0]
    }
    reference = np.array(_first(runs[0])["lengths"])
    return {
        "rounds": alone,
        "median_s": float(np.median(seconds)),
        "ci95": list(bootstrap_median_ci(seconds)),
        "over_alone": {
            p: {"rounds": r, "median": float(np.median(r)), "ci95": list(bootstrap_median_ci(r))}
            for p, r in ratios.items()
        },
        "lengths_differ_from_round0": [int((np.array(a["lengths"]) != reference).sum()) for a in alone],
    }


def _first(round_runs: dict) -> dict:
    """The round's first run (lowest position)."""
    return min(round_runs.values(), key=lambda x: x["position"])


def _lengths_check(runs: list[dict]) -> dict:
    """How far the runs' lengths are from each round's first run and from round 0's first run."""
    reference = np.array(_first(runs[0])["lengths"])
    differing, max_diff = [], 0
    for round_runs in runs:
        first = np.array(_first(round_runs)["lengths"])
        for run_r in round_runs.values():
            for ref in (first, reference):
                diff = np.abs(np.array(run_r["lengths"]) - ref)
                differing.append(int((diff > 0).sum()))
                max_diff = max(max_diff, int(diff.max()))
    return {
        "identical": max_diff == 0,
        "max_samples_differing": max(differing),
        "max_abs_diff_tokens": max_diff,
        "samples": len(reference),
    }


def _summaries(policies: tuple[str, ...], runs: list[dict], floors: list[float]) -> dict:
    """Per policy: step times per round, medians, bootstrap intervals, paired ratios, sim twin."""
    paired, adjusted = [], []
    for r, round_runs in enumerate(runs):
        times = {p: {"step_time_s": v["step_time_s"]} for p, v in round_runs.items()}
        compare(times, floors[r])
        paired.append(times)
        times = {p: {"step_time_s": v["step_time_s"] / v["load_factor"]} for p, v in round_runs.items()}
        compare(times, floors[r])
        adjusted.append(times)
    out = {}
    for p in policies:
        per_round = [runs[r][p] for r in range(len(runs))]
        live = [x["step_time_s"] for x in per_round]
        sim = [x["sim_step_time_s"] for x in per_round]
        median = float(np.median(live))
        out[p] = {
            "step_time_s": median,
            "rounds": live,
            "ci95": list(bootstrap_median_ci(live)),
            "positions": [x["position"] for x in per_round],
            "ratio_to_floor": median / float(np.median(floors)),
            "ratio_to_pool": summarize([x[p]["ratio_to_pool"] for x in paired]),
            "oracle_gain_share": summarize([x[p]["oracle_gain_share"] for x in paired]),
            "sim_step_time_s": float(np.median(sim)),
            "sim_rounds": sim,
            "live_over_sim": float(np.median(np.array(live) / np.array(sim))),
            "live_over_own_fit": float(np.median([x["step_time_s"] / x["sim_own_fit_s"] for x in per_round])),
            "load_factors": [x["load_factor"] for x in per_round],
            "load_adjusted": {
                "step_time_s": float(np.median([x["step_time_s"] / x["load_factor"] for x in per_round])),
                "ratio_to_pool": summarize([x[p]["ratio_to_pool"] for x in adjusted]),
                "oracle_gain_share": summarize([x[p]["oracle_gain_share"] for x in adjusted]),
            },
            **{k: float(np.median([x[k] for x in per_round])) for k in SUMMARY_METRICS},
            "runs": per_round,
        }
    return out


def _tokenizer(model: str):
    from rollout_len.model import load_policy

    return load_policy(model).tokenizer


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _interval(summary: dict, spec: str = ".2f") -> str:
    """'median [low, high]', saying over how many rounds when some had no value (e.g. no oracle gain)."""
    defined = sum(x is not None for x in summary["rounds"])
    if summary["median"] is None:
        return "n/a (0 rounds)"
    lo, hi = summary["ci95"]
    text = f"{format(summary['median'], spec)} [{format(lo, spec)}, {format(hi, spec)}]"
    return text if defined == len(summary["rounds"]) else f"{text} ({defined}/{len(summary['rounds'])} rounds)"


def _print_table(result: dict) -> None:
    check = result["lengths_check"]
    print(
        f"\n{result['workers']} workers x {result['slots']} slots, {result['prompts']} prompts x {result['n']}, "
        f"max {result['max_new_tokens']} new tokens, k={result['every']}, {result['repeats']} rounds "
        f"(medians, 95% bootstrap intervals over rounds)"
    )
    for r, order in enumerate(result["order"]):
        print(f"  round {r + 1}: {', '.join(order)}")
    print(
        f"{'policy':<14}{'step s':>8}{'95% CI':>17}{'/pool (paired)':>24}{'oracle gain':>24}"
        f"{'/floor':>8}{'sim s':>8}{'live/sim':>9}{'/own fit':>9}{'load':>6}{'padded':>8}{'migr':>6}{'idle':>6}"
        f"{'PLP MAE':>9}"
    )
    for name, p in result["policies"].items():
        lo, hi = p["ci95"]
        print(
            f"{name:<14}{p['step_time_s']:>8.1f}{f'[{lo:.1f}, {hi:.1f}]':>17}{_interval(p['ratio_to_pool']):>24}"
            f"{_interval(p['oracle_gain_share']):>24}{p['ratio_to_floor']:>8.2f}{p['sim_step_time_s']:>8.1f}"
            f"{p['live_over_sim']:>9.2f}{p['live_over_own_fit']:>9.2f}{max(p['load_factors']):>6.2f}"
            f"{p['padded_fraction']:>8.2f}{p['migrations']:>6.0f}"
            f"{p['worker_idle_fraction']:>6.2f}{_fmt(p['predictor_mae'], '.1f'):>9}"
        )
    print("load-adjusted (live step time over the run's load factor):")
    for name, p in result["policies"].items():
        a = p["load_adjusted"]
        print(
            f"  {name:<12}{a['step_time_s']:>8.1f} s   /pool {_interval(a['ratio_to_pool'])}   "
            f"oracle gain {_interval(a['oracle_gain_share'])}"
        )
    print(
        f"floor: {result['floor_s']:.1f} s (median over rounds; the longest sample alone vs all tokens at "
        f"full-batch throughput; cost model fitted to this run's engine steps)"
    )
    print(
        "sim s: the simulator replay at the pooled fitted speed; /own fit: live over the replay at that run's "
        "own fitted speed; load: the slowest round's speed relative to the pooled fit"
    )
    if "engine_alone" in result:
        alone = result["engine_alone"]
        lo, hi = alone["ci95"]
        print(
            f"the engines alone (each worker a contiguous shard in order; no taps, PLP or scheduler): "
            f"{alone['median_s']:.1f} s [{lo:.1f}, {hi:.1f}]; each policy over it, paired:"
        )
        for name, ratio in alone["over_alone"].items():
            print(f"  {name:<12} {_interval(ratio)}")
    same = "identical" if check["identical"] else "NOT identical"
    print(
        f"lengths across runs: {same} (at most {check['max_samples_differing']} of {check['samples']} samples "
        f"differ, by at most {check['max_abs_diff_tokens']} tokens)"
    )
