"""Cost model of one worker: how long a decode step and a prefill take.

    step_time(batch, context_tokens) = step_base_s + per_seq_s * batch + per_context_token_s * context_tokens
    prefill_time(tokens)             = prefill_base_s + prefill_per_token_s * tokens

Policies plan with it (is a migration worth its re-prefill? does longest-first pay here?) and the
simulator runs on it. It comes from a YAML profile (`profiles/`), each parameter naming its source:
`rollout-len bench calibrate` (rollout_len.bench.calibrate) writes one from measured DecodeEngine
steps on this machine; others are derived for hardware we cannot measure here. `CostModel.fit` fits
one to timed engine steps: the calibration grid, or a live rollout's own steps (`Report.step_log`),
which `bench rollout` uses so that its simulator twins run at the live workers' speed under their
threads and load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["CostModel", "DEFAULT_COST_PROFILE", "PROFILES_DIR"]

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_COST_PROFILE = PROFILES_DIR / "cpu-smollm2-135m.yaml"  # measured on the 2-core CI machine


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
    def fit(
        cls,
        decode: list[tuple[int, int, float]],
        prefill: list[tuple[int, float]],
        name: str = "fitted",
    ) -> CostModel:
        """Fit the parameters to timed steps by non-negative least squares.

        decode: (batch rows, context tokens summed over the rows, seconds) per decode step;
        prefill: (prompt tokens prefilled together, seconds) per batched prefill. Raises ValueError
        when there is too little to fit (fewer than 3 decode steps) or a time is not finite and >= 0.
        Without prefills, the prefill parameters are 0; if the fit puts all of a step's time on its
        context, it is refitted without the context term (a step must cost something by itself).
        """
        if len(decode) < 3:
            raise ValueError(f"CostModel.fit needs at least 3 timed decode steps, got {len(decode)}")
        d = np.array(decode, dtype=float).reshape(-1, 3)
        p = np.array(prefill, dtype=float).reshape(-1, 2)
        if not (np.isfinite(d).all() and np.isfinite(p).all()) or (d < 0).any() or (p < 0).any():
            raise ValueError("CostModel.fit: batch sizes, token counts and times must be finite and >= 0")
        step = _nnls(np.column_stack([np.ones(len(d)), d[:, 0], d[:, 1]]), d[:, 2])
        if step[0] + step[1] <= 0:  # all of it put on context: a step must cost something by itself
            step = np.append(_nnls(np.column_stack([np.ones(len(d)), d[:, 0]]), d[:, 2]), 0.0)
        pre = _nnls(np.column_stack([np.ones(len(p)), p[:, 0]]), p[:, 1]) if len(p) else np.zeros(2)
        return cls(*map(float, step), *map(float, pre), name=name)

    @classmethod
    def from_step_log(cls, step_log: list[tuple[int, int, float, int, float]], name: str = "live-fit") -> CostModel:
        """`fit` to live engine steps: rows (decode rows, their context tokens, decode s, prefill tokens,
        prefill s), as workers report them (`Report.step_log`). Raises ValueError as `fit` does."""
        prefill = [(tokens, s) for _, _, _, tokens, s in step_log if tokens > 0]
        return cls.fit(_decode_rows(step_log), prefill, name=name)

    def load_factor(self, step_log: list[tuple[int, int, float, int, float]]) -> float:
        """Measured decode seconds of these `Report.step_log` rows over what this model predicts for
        them: 1.3 means they ran 30% slower than the model (a busier machine). Raises ValueError
        without decode steps."""
        rows = _decode_rows(step_log)
        if not rows:
            raise ValueError("load_factor needs at least one timed decode step")
        return sum(s for _, _, s in rows) / sum(self.step_time(b, c) for b, c, _ in rows)

    def relative_error(self, decode: list[tuple[int, int, float]]) -> float:
        """Mean |predicted - measured| / measured over timed decode steps (batch, context, seconds)."""
        d = np.array(decode, dtype=float).reshape(-1, 3)
        predicted = np.array([self.step_time(int(b), c) for b, c in d[:, :2]])
        return float(np.mean(np.abs(predicted - d[:, 2]) / d[:, 2]))

    @classmethod
    def from_yaml(cls, path: str | Path) -> CostModel:
        """A profile: `name`, then each parameter as {value: ..., source: "..."} (the source is required)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
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
            try:
                values[key] = float(entry["value"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: {key}.value must be a number, got {entry['value']!r}") from None
        for key in ("step_base_s", "per_seq_s"):
            if key not in values:
                raise ValueError(f"{path}: {key} is required")
        return cls(name=str(data.get("name", path.stem)), **values)

    def to_yaml(self, path: str | Path, source: str) -> None:
        import yaml

        data = {"name": self.name}
        data.update({k: {"value": v, "source": source} for k, v in asdict(self).items() if k != "name"})
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, for a few columns: drop the negative ones, refit."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        coef = np.zeros(x.shape[1])
        coef[active] = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            break
        active = [i for i in active if i not in negative]
    return coef


def _decode_rows(step_log: list[tuple[int, int, float, int, float]]) -> list[tuple[int, int, float]]:
    """(batch rows, context tokens, decode s) of the `Report.step_log` rows that decoded."""
    return [(rows, context, s) for rows, context, s, _, _ in step_log if rows > 0]
