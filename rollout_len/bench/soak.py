"""Soak benchmark: many rollout steps in a row, to show that step time, the online re-fit and memory
stay flat as the re-fit's replay buffer fills.

    rollout-len bench soak --steps 100 --json docs/results/soak.json [--model tiny-llama] [--refit-lag 1]

Each step generates new prompts (random token ids of mixed lengths) with `length_aware` on a
Coordinator (in-process workers unless --ray) and records the step's wall time as the caller sees it
(run_step, re-fit waits included), the re-fit's time on the critical path and in the background, the
replay buffer's size and this process's resident memory (with --ray the workers' memory is not in it).
`--update-s` sleeps between steps, standing in for the trainer's update during which a `refit_lag`
0 re-fit runs. Per 10 steps it prints the medians; at the end the change of the median step time and
of memory from steps 10-19 (after the warm-up) to the last 10.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from rollout_len.bench import write_json
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import SamplingParams, expand_prompts

__all__ = ["run"]

WINDOW = 10  # steps per printed row (the command's; tests take fewer)


def _rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """`count` prompts of random token ids, 4 to 4 + 3 * count tokens long."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (4 + 3 * i,), generator=g).tolist() for i in range(count)]


def _windows(rows: list[dict], window: int) -> list[dict]:
    """Medians of every `window` steps (NaN figures, e.g. no re-fit yet, left out)."""
    out = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        out.append(
            {
                "steps": [start, start + len(chunk) - 1],
                **{k: float(np.nanmedian([r[k] for r in chunk])) for k in chunk[0] if k != "step"},
            }
        )
    return out


def _trend(values: list[float]) -> float:
    """Relative change over the run of a least-squares line through `values` (step order): robust to
    a few slow steps where comparing two windows is not."""
    y = np.asarray(values, dtype=np.float64)
    slope = np.polyfit(np.arange(len(y)), y, 1)[0]
    return float(slope * (len(y) - 1) / y.mean())


def run(
    steps: int = 100,
    model: str = "tiny-llama",
    workers: int = 2,
    slots: int = 4,
    prompts: int = 8,
    n: int = 4,
    max_new_tokens: int = 32,
    every: int = 16,
    refit_lag: int = 0,
    update_s: float = 0.0,
    use_ray: bool = False,
    json_path: str | None = None,
    seed: int = 0,
    window: int = WINDOW,
) -> dict:
    """Run the soak (module docstring); returns what it writes to `json_path`: the config, per-window
    medians, every step's figures, the step time's relative change and memory's change in MiB from
    the second window to the last, the step time's trend after the first window (`_trend`), and the
    share of the wall time the re-fit spent on the critical path."""
    if steps < 3 * window:
        raise ValueError(f"--steps must be >= {3 * window} (a warm-up window, then two to compare), got {steps}")
    if update_s < 0:
        raise ValueError(f"--update-s must be >= 0 seconds, got {update_s}")
    config = RolloutConfig(
        num_workers=workers, slots_per_worker=slots, every=every, use_ray=use_ray, refit_lag=refit_lag, seed=seed
    )
    coord = Coordinator(model, config)
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    print(
        f"[soak] {model}: {steps} steps of {prompts} x {n} samples, {max_new_tokens} tokens, {workers} workers x "
        f"{slots} slots ({'Ray' if use_ray else 'in-process'}), refit_lag {refit_lag}, {update_s} s between steps"
    )
    print(f"{'steps':>7s} {'step s':>7s} {'re-fit on path s':>16s} {'re-fit bg s':>11s} {'buffer':>7s} {'RSS MiB':>8s}")
    rows = []
    try:
        for step in range(steps):
            samples = expand_prompts(_prompts(prompts, coord.limits["vocab_size"], seed + step), n, params, seed + step)
            start = time.perf_counter()
            m = coord.run_step(samples, "length_aware").metrics
            wall = time.perf_counter() - start
            rows.append(
                {
                    "step": step,
                    "wall_s": wall,
                    "rollout_s": m["step_time_s"],
                    "refit_critical_s": m["refit_s"],
                    "refit_background_s": m["refit_fit_s"],
                    "refit_examples": m["refit_examples"],
                    "buffer": m["refit_buffer"],
                    "decode_tokens": m["decode_tokens"],
                    "rss_mb": _rss_mb(),
                }
            )
            if (step + 1) % window == 0:
                w = _windows(rows[-window:], window)[0]
                print(
                    f"{step - window + 1:3d}-{step:<3d} {w['wall_s']:7.3f} {w['refit_critical_s']:16.4f} "
                    f"{w['refit_background_s']:11.4f} {w['buffer']:7.0f} {w['rss_mb']:8.1f}"
                )
            time.sleep(update_s)
    finally:
        coord.shutdown()
    windows = _windows(rows, window)
    base, last = windows[1], windows[-1]
    result = {
        "config": {
            "steps": steps,
            "model": model,
            "workers": workers,
            "slots": slots,
            "prompts": prompts,
            "n": n,
            "max_new_tokens": max_new_tokens,
            "every": every,
            "refit_lag": refit_lag,
            "update_s": update_s,
            "ray": use_ray,
            "seed": seed,
        },
        "windows": windows,
        "step_time_change": last["wall_s"] / base["wall_s"] - 1,
        # after the warm-up window: the step's wall time, and its rollout alone (no re-fit wait in it)
        "step_time_trend": _trend([r["wall_s"] for r in rows[window:]]),
        "rollout_time_trend": _trend([r["rollout_s"] for r in rows[window:]]),
        "rss_change_mb": last["rss_mb"] - base["rss_mb"],
        "refit_critical_share": sum(r["refit_critical_s"] for r in rows) / sum(r["wall_s"] for r in rows),
        "steps": rows,
    }
    print(
        f"median step {base['wall_s']:.3f} s (steps {base['steps'][0]}-{base['steps'][1]}) -> {last['wall_s']:.3f} s "
        f"(steps {last['steps'][0]}-{last['steps'][1]}): {result['step_time_change']:+.1%}, trend after the warm-up "
        f"{result['step_time_trend']:+.1%} (the rollout alone {result['rollout_time_trend']:+.1%}); RSS "
        f"{base['rss_mb']:.0f} -> {last['rss_mb']:.0f} MiB; re-fit on the critical path "
        f"{result['refit_critical_share']:.1%} of the step time"
    )
    write_json(result, json_path)
    return result
