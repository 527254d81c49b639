"""Cost model of one worker: how long a decode step and a prefill take.

    step_time(batch, context_tokens) = step_base_s + per_seq_s * batch + per_context_token_s * context_tokens
    prefill_time(tokens)             = prefill_base_s + prefill_per_token_s * tokens

Policies plan with it (is a migration worth its re-prefill? does longest-first pay here?) and the
simulator runs on it. Two sources: `calibrate` fits it to measured DecodeEngine steps on this
machine; a YAML profile gives it for hardware we cannot measure here, each parameter naming its source.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["CostModel", "calibrate"]


@dataclass(frozen=True)
class CostModel:
    step_base_s: float
    per_seq_s: float
    per_context_token_s: float = 0.0
    prefill_base_s: float = 0.0
    prefill_per_token_s: float = 0.0
    name: str = "unnamed"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and (not np.isfinite(value) or value < 0):
                raise ValueError(f"CostModel.{f.name} must be a finite number >= 0, got {value!r}")
        if self.step_base_s + self.per_seq_s <= 0:
            raise ValueError("CostModel: a decode step must take some time (step_base_s + per_seq_s > 0)")

    def step_time(self, batch: int, context_tokens: int = 0) -> float:
        return self.step_base_s + self.per_seq_s * batch + self.per_context_token_s * context_tokens

    def prefill_time(self, tokens: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * tokens

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CostModel":
        """A profile: `name`, then each parameter as {value: ..., source: "..."} (the source is required)."""
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a cost profile is a mapping of parameters")
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(data) - known - {"name", "description"}
        if unknown:
            raise ValueError(f"{path}: unknown parameters {sorted(unknown)}; valid: {sorted(known)}")
        values = {}
        for key in known & set(data):
            entry = data[key]
            if not isinstance(entry, dict) or "value" not in entry or not entry.get("source"):
                raise ValueError(f"{path}: {key} must be {{value: ..., source: '...'}} (every figure names its source)")
            values[key] = float(entry["value"])
        for key in ("step_base_s", "per_seq_s"):
            if key not in values:
                raise ValueError(f"{path}: {key} is required")
        return cls(name=str(data.get("name", path.stem)), **values)

    def to_yaml(self, path: str | Path, source: str) -> None:
        import yaml

        data = {"name": self.name}
        data.update({k: {"value": v, "source": source} for k, v in asdict(self).items() if k != "name"})
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


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


def calibrate(policy, batches=(1, 4, 8, 16, 32), contexts=(64, 256), steps: int = 6, name: str = "measured") -> tuple[CostModel, dict]:
    """Time DecodeEngine decode steps and prefills of `policy` and fit the cost model to them."""
    import torch

    from rollout_len.engine import DecodeEngine, EngineConfig
    from rollout_len.sample import Sample, SamplingParams

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
            prefill_rows.append(batch * context), prefill_times.append(time.perf_counter() - t0)
            for _ in range(steps):
                t0 = time.perf_counter()
                engine.step()
                rows.append((batch, batch * context)), times.append(time.perf_counter() - t0)
    x = np.array([[1.0, b, c] for b, c in rows])
    step = _fit(x, np.array(times))
    pre = _fit(np.array([[1.0, t] for t in prefill_rows]), np.array(prefill_times))
    model = CostModel(step_base_s=float(step[0]), per_seq_s=float(step[1]), per_context_token_s=float(step[2]),
                      prefill_base_s=float(pre[0]), prefill_per_token_s=float(pre[1]), name=name)
    predicted = np.array([model.step_time(b, c) for b, c in rows])
    fit_error = float(np.mean(np.abs(predicted - np.array(times)) / np.array(times)))
    measurements = {"decode": [{"batch": b, "context_tokens": c, "time_s": t} for (b, c), t in zip(rows, times)],
                    "prefill": [{"tokens": n, "time_s": t} for n, t in zip(prefill_rows, prefill_times)],
                    "mean_relative_error": fit_error}
    return model, measurements
