"""`rollout-len bench calibrate`: fit the scheduler's cost model to measured DecodeEngine steps.

    rollout-len bench calibrate --model smollm2-135m --threads 1 --yaml my-cpu.yaml --json fit.json

Times decode steps over a grid of batch sizes and contexts, and prefills, on this machine, then fits
`step_time(batch, context) = a + b·batch + c·context` and `prefill_time(tokens) = p0 + p1·tokens`
by non-negative least squares (rollout_len.sched.costmodel.CostModel). The YAML it writes names the
command as every parameter's source.
"""

from __future__ import annotations

import time

import torch

from rollout_len.bench import write_json
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import Policy, load_policy
from rollout_len.sample import Sample, SamplingParams
from rollout_len.sched.costmodel import CostModel

__all__ = ["calibrate", "run"]


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
    decode = [(b, c, t) for (b, c), t in zip(rows, times)]
    model = CostModel.fit(decode, list(zip(prefill_rows, prefill_times)), name=name)
    fit_error = model.relative_error(decode)
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
