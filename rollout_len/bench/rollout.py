"""`rollout-len bench rollout`: policies on real Ray workers decoding the embedded model.

Every policy runs the same GSM8K prompts with the same samples and seed (per-sample RNG from
(seed, sample id)), on the same workers with the same capped slots. Before the measured steps, warm-up steps
of length_aware on *other* prompts fit the PLP head online and fill the predictor-quality window,
as earlier RL steps would. `oracle` gets the lengths the fcfs run produced.
"""

from __future__ import annotations

import numpy as np

from rollout_len.bench import write_json
from rollout_len.data import encode_prompt, gsm8k_prompts
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts
from rollout_len.sched.simulator import lower_bound_s

DEFAULT_POLICIES = ("fcfs", "static_padded", "bucketed_padded", "length_aware", "oracle")


def run(
    policies: tuple[str, ...] = DEFAULT_POLICIES,
    workers: int = 2,
    prompts: int = 16,
    n: int = 8,
    slots: int = 8,
    max_new_tokens: int = 256,
    every: int = 16,
    warmup_steps: int = 2,
    model: str = "smollm2-135m",
    predictions: str = "model",
    quick: bool = False,
    json_path: str | None = None,
    png: str | None = None,
    seed: int = 0,
    use_ray: bool = True,
) -> dict:
    if quick:
        prompts, n, max_new_tokens, warmup_steps = (
            min(prompts, 8),
            min(n, 4),
            min(max_new_tokens, 128),
            min(warmup_steps, 1),
        )
    for name, value in (
        ("--workers", workers),
        ("--prompts", prompts),
        ("--n", n),
        ("--slots", slots),
        ("--every", every),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    policies = tuple(policies)
    if "oracle" in policies and "fcfs" not in policies:
        raise ValueError("the oracle needs the fcfs run's lengths: include fcfs in --policies")
    order = ("fcfs",) + tuple(p for p in policies if p != "fcfs") if "fcfs" in policies else policies
    texts = gsm8k_prompts(prompts * (warmup_steps + 1))
    coord = Coordinator(
        model,
        RolloutConfig(
            num_workers=workers,
            slots_per_worker=slots,
            every=every,
            predictions=predictions,
            use_ray=use_ray,
            seed=seed,
        ),
    )
    tok = _tokenizer(model)
    ids = [encode_prompt(tok, t["prompt"]) for t in texts]
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    result = {
        "workers": workers,
        "slots": slots,
        "prompts": prompts,
        "n": n,
        "max_new_tokens": max_new_tokens,
        "every": every,
        "model": model,
        "predictions": predictions,
        "cost_model": coord.cost.name,
        "warmup": [],
        "policies": {},
    }
    try:
        for w in range(warmup_steps):
            warm = expand_prompts(ids[(w + 1) * prompts : (w + 2) * prompts], n, params, seed=seed + 1 + w)
            r = coord.run_step(warm, "length_aware")
            result["warmup"].append({k: r.metrics[k] for k in ("step_time_s", "predictor_mae")})
            print(
                f"[warm-up {w + 1}/{warmup_steps}] length_aware {r.metrics['step_time_s']:.1f} s, "
                f"predictor MAE {r.metrics['predictor_mae']:.1f}"
            )
        step_ids = ids[:prompts]
        timelines, true = {}, None
        for policy in order:
            samples = expand_prompts(step_ids, n, params, seed=seed)
            r = coord.run_step(samples, policy, true_lengths=true if policy == "oracle" else None)
            if policy == "fcfs":
                true = {s.sample_id: s.num_output for s in r.samples}
            entry = dict(r.metrics)
            entry["lengths"] = [s.num_output for s in r.samples]
            entry["plans"] = r.plans
            result["policies"][policy] = entry
            timelines[policy] = r.timeline
            print(
                f"[{policy}] {entry['step_time_s']:.1f} s, padded {entry['padded_fraction']:.2f}, "
                f"migrations {entry['migrations']:.0f}, idle {entry['worker_idle_fraction']:.2f}"
            )
        lengths = result["policies"][order[0]]["lengths"]
        prompt_tokens = int(np.mean([len(x) for x in step_ids]))
        result["lower_bound_s"] = lower_bound_s(lengths, workers, slots, coord.cost, prompt_tokens)
    finally:
        coord.shutdown()
    _print_table(result)
    if png:
        from rollout_len.sched.timeline import plot_timelines

        plot_timelines(timelines, png)
        print(f"wrote {png}")
    write_json(result, json_path)
    return result


def _tokenizer(model: str):
    from rollout_len.model import load_policy

    return load_policy(model).tokenizer


def _print_table(result: dict) -> None:
    pols = result["policies"]
    base = pols.get("fcfs", {}).get("step_time_s")
    oracle = pols.get("oracle", {}).get("step_time_s")
    bound = result["lower_bound_s"]
    print(
        f"\n{result['workers']} workers x {result['slots']} slots, {result['prompts']} prompts x {result['n']}, "
        f"max {result['max_new_tokens']} new tokens, k={result['every']}"
    )
    print(
        f"{'policy':<17}{'step s':>8}{'vs fcfs':>9}{'vs oracle':>10}{'vs bound':>9}{'padded':>8}{'migr':>6}{'idle':>7}"
        f"{'PLP MAE':>9}{'mgr %':>7}{'PLP %':>7}"
    )
    for name, p in pols.items():
        p["speedup_vs_fcfs"] = base / p["step_time_s"] if base else None
        p["ratio_to_oracle"] = p["step_time_s"] / oracle if oracle else None
        p["ratio_to_lower_bound"] = p["step_time_s"] / bound
        print(
            f"{name:<17}{p['step_time_s']:>8.1f}{(p['step_time_s'] / base if base else float('nan')):>9.2f}"
            f"{(p['ratio_to_oracle'] or float('nan')):>10.2f}{p['ratio_to_lower_bound']:>9.2f}"
            f"{p['padded_fraction']:>8.2f}"
            f"{p['migrations']:>6.0f}{p['worker_idle_fraction']:>7.2f}{p['predictor_mae']:>9.1f}"
            f"{100 * p['manager_overhead_fraction']:>7.2f}{100 * p['plp_overhead_fraction']:>7.2f}"
        )
    print(
        f"lower bound: {bound:.1f} s (max of the longest sample at batch 1, "
        "all tokens at full-batch throughput; cost model)"
    )
