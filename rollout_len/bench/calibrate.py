"""`rollout-len bench calibrate`: fit the scheduler's cost model to measured DecodeEngine steps.

    rollout-len bench calibrate --model smollm2-135m --threads 1 --yaml my-cpu.yaml --json fit.json

Times decode steps over a grid of batch sizes and contexts, and prefills, on this machine, then fits
`step_time(batch, context) = a + b·batch + c·context` and `prefill_time(tokens) = p0 + p1·tokens`
by non-negative least squares (rollout_len.sched.costmodel.CostModel). The YAML it writes names the
command as every parameter's source.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rollout_len.bench import write_json
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import Policy, load_policy
from rollout_len.sample import Sample, SamplingParams
from rollout_len.sched.costmodel import CostModel

__all__ = ["calibrate", "run"]


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a few columns (clip and refit the rest)."""
    active = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        coef[active] = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            return coef
        active = [i for i in active if i not in negative]


def calibrate(
    policy: Policy, batches=(1, 4, 8, 16, 32), contexts=(64, 256), steps: int = 6, name: str = "measured"
) -> tuple[CostModel, dict]:
    """Time DecodeEngine decode steps and prefills of `policy` and fit the cost model to them."""
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    rows, times, prefill_rows, prefill_times = [], [], [], []
    for context in contexts:
        for batch in batches:
            engine = DecodeEngine(policy, EngineConfig(max_batch_size=batch, initial_kv_capacity=context + steps + 8))
            params = SamplingParams(max_new_tokens=steps + 2, ignore_stop=True)
            for i in range(batch):
                ids = torch.randint(3, vocab, (context,), generator=gen).tolist()
                engine.add(Sample(f"c{i}", ids, params, seed=i))
            t0 = time.perf_counter()
            engine.step()  # prefill of the whole batch
            prefill_times.append(time.perf_counter() - t0)
            prefill_rows.append(batch * context)
            for _ in range(steps):
                t0 = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - t0)
                rows.append((batch, batch * context))
    x = np.array([[1.0, b, c] for b, c in rows])
    step = _fit(x, np.array(times))
    pre = _fit(np.array([[1.0, t] for t in prefill_rows]), np.array(prefill_times))
    model = CostModel(
        step_base_s=float(step[0]),
        per_seq_s=float(step[1]),
        per_context_token_s=float(step[2]),
        prefill_base_s=float(pre[0]),
        prefill_per_token_s=float(pre[1]),
        name=name,
    )
    predicted = np.array([model.step_time(b, c) for b, c in rows])
    fit_error = float(np.mean(np.abs(predicted - np.array(times)) / np.array(times)))
    measurements = {
        "decode": [{"batch": b, "context_tokens": c, "time_s": t} for (b, c), t in zip(rows, times)],
        "prefill": [{"tokens": n, "time_s": t} for n, t in zip(prefill_rows, prefill_times)],
        "mean_relative_error": fit_error,
    }
    return model, measurements


def run(
    model: str = "smollm2-135m", threads: int = 1, yaml_path: str | None = None, json_path: str | None = None
) -> CostModel:
    """Calibrate with `threads` torch threads (as one rollout worker runs); write the YAML profile."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    fitted, measurements = calibrate(load_policy(model), name=f"{model}-{threads}thread")
    print(fitted)
    print(f"mean relative error of the fit: {measurements['mean_relative_error']:.1%}")
    if yaml_path:
        fitted.to_yaml(yaml_path, f"measured by `rollout-len bench calibrate --model {model} --threads {threads}`")
        print(f"wrote {yaml_path}")
    write_json(measurements, json_path)
    return fitted
