"""`rollout-len bench lengths`: the response-length distribution of a task, sampled with the policy.

    rollout-len bench lengths --task arith-mix --prompts 16 --n 8 --max-new-tokens 256 --json OUT

A workload study for the GRPO demo and the scheduler: n samples of each of P prompts of a named task
through the project's DecodeEngine, then the figures that decide whether the workload has a
scheduling problem (capped fraction, median, p90, p90 / median, spread of the per-prompt medians)
and whether GRPO can learn on it (solve rate, share of groups whose rewards differ). The JSON is
also a length trace that `rollout_len.sched.simulator.load_trace` reads: `{"groups": [[len, ...],
...], "max_new_tokens": N, ...}`.

Lengths count generated tokens, the stop token included (as `Sample.num_output`); a length equal
to max_new_tokens counts as capped.
"""

from __future__ import annotations

import time

import numpy as np

from rollout_len.bench import write_json
from rollout_len.data import answer_correct
from rollout_len.tasks import TASKS, task_prompts

__all__ = ["length_stats", "run"]


def length_stats(groups: list[list[int]], max_new_tokens: int) -> dict:
    """Figures of response lengths (tokens) grouped by prompt.

    Percentiles interpolate linearly between order statistics (numpy's default). `capped_fraction`
    counts lengths >= max_new_tokens. `group_median_min/max` are the extremes of the per-prompt
    medians; `between_prompt_variance` is the share of the length variance explained by the prompt
    (0: the prompt tells nothing about the length, 1: it tells everything).

    Raises ValueError for no groups, an empty group or a max_new_tokens below 1.
    """
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not groups or any(not g for g in groups):
        raise ValueError("length_stats needs at least one group, each with at least one length")
    flat = np.array([x for g in groups for x in g], dtype=float)
    median, p90 = float(np.median(flat)), float(np.percentile(flat, 90))
    medians = [float(np.median(g)) for g in groups]
    total_var = float(flat.var())
    between = float(sum(len(g) * (np.mean(g) - flat.mean()) ** 2 for g in groups) / len(flat))
    return {
        "samples": len(flat),
        "capped_fraction": float((flat >= max_new_tokens).mean()),
        "median": median,
        "p90": p90,
        "p90_over_median": p90 / median if median > 0 else float("inf"),
        "mean": float(flat.mean()),
        "max": int(flat.max()),
        "group_median_min": min(medians),
        "group_median_max": max(medians),
        "between_prompt_variance": between / total_var if total_var > 0 else 0.0,
    }


def solve_stats(solved: list[list[bool]]) -> dict:
    """Solve rate over all samples, the share of groups with some but not all samples solved (the
    groups whose GRPO advantages are not all zero) and the count solved per group. Raises ValueError
    for no groups."""
    if not solved or any(not g for g in solved):
        raise ValueError("solve_stats needs at least one group, each with at least one sample")
    flat = [x for g in solved for x in g]
    mixed = sum(0 < sum(g) < len(g) for g in solved)
    return {
        "solve_rate": sum(flat) / len(flat),
        "mixed_group_fraction": mixed / len(solved),
        "group_solved": [sum(g) for g in solved],
    }


def _check(prompts: int, n: int, max_new_tokens: int, temperature: float, batch: int, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task: unknown task {task!r}; valid: {sorted(TASKS)}")
    for name, value in (("--prompts", prompts), ("--n", n), ("--max-new-tokens", max_new_tokens), ("--batch", batch)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")


def run(
    task: str = "gsm8k",
    prompts: int = 16,
    n: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    batch: int = 64,
    model: str = "smollm2-135m",
    json_path: str | None = None,
) -> dict:
    """Sample n responses to each of `prompts` prompts of `task`; print and return the figures.

    Every flag is checked before the model loads; a bad one raises ValueError naming it. `batch` is
    the engine's decode slots. Returns (and writes to json_path) the figures, `solve_rate` and
    `mixed_group_fraction` (None when the task has no answers), `tokens_per_s` (generated tokens per
    second of engine time, prefill included), `wall_s`, and the trace: `groups` (lengths per prompt,
    sample order) and `max_new_tokens`.
    """
    _check(prompts, n, max_new_tokens, temperature, batch, task)
    from rollout_len.data import encode_prompt
    from rollout_len.engine import DecodeEngine, EngineConfig
    from rollout_len.model import load_policy
    from rollout_len.sample import SamplingParams, expand_prompts

    items = task_prompts(task, prompts, seed)
    policy = load_policy(model)
    ids = [encode_prompt(policy.tokenizer, item.prompt) for item in items]
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    samples = expand_prompts(ids, n, params, seed=seed)
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=batch))
    start = time.perf_counter()
    engine.run(samples)
    wall = time.perf_counter() - start
    groups = [[s.num_output for s in samples[i * n : (i + 1) * n]] for i in range(prompts)]
    result = {
        "task": task,
        "model": model,
        "prompts": prompts,
        "n": n,
        "temperature": temperature,
        "seed": seed,
        "batch": batch,
        **length_stats(groups, max_new_tokens),
        "solve_rate": None,
        "mixed_group_fraction": None,
        "tokens_per_s": sum(map(sum, groups)) / wall,
        "wall_s": wall,
        "groups": groups,
        "max_new_tokens": max_new_tokens,
    }
    if all(item.answer is not None for item in items):
        texts = [policy.tokenizer.decode(s.output_ids, skip_special_tokens=True) for s in samples]
        solved = [[answer_correct(texts[i * n + j], items[i].answer) for j in range(n)] for i in range(prompts)]
        result.update(solve_stats(solved))
        result["examples"] = [{"prompt": items[i].prompt, "response": texts[i * n]} for i in range(min(prompts, 4))]
    print(format_result(result))
    write_json(result, json_path)
    return result


def format_result(result: dict) -> str:
    """The figures as a few printed lines."""
    solve = (
        f"solve rate {result['solve_rate']:.2f}, mixed groups {result['mixed_group_fraction']:.2f}"
        if result.get("solve_rate") is not None
        else "no answers to check"
    )
    return (
        f"{result['task']}: {result['prompts']} prompts x {result['n']}, max {result['max_new_tokens']} new tokens, "
        f"temperature {result['temperature']}\n"
        f"  capped {result['capped_fraction']:.3f}  median {result['median']:.1f}  p90 {result['p90']:.1f}  "
        f"p90/median {result['p90_over_median']:.2f}  mean {result['mean']:.1f}  max {result['max']}\n"
        f"  per-prompt medians {result['group_median_min']:.1f}..{result['group_median_max']:.1f}, "
        f"between-prompt variance {result['between_prompt_variance']:.2f}\n"
        f"  {solve}\n"
        f"  {result['tokens_per_s']:.1f} tok/s, {result['wall_s']:.1f} s"
    )
