"""Cost model of one worker: how long a decode step and a prefill take.

    step_time(batch, context_tokens) = step_base_s + per_seq_s * batch + per_context_token_s * context_tokens
    prefill_time(tokens)             = prefill_base_s + prefill_per_token_s * tokens

Policies plan with it (is a migration worth its re-prefill? does longest-first pay here?) and the
simulator runs on it. It comes from a YAML profile (`profiles/`), each parameter naming its source:
`rollout-len bench calibrate` (rollout_len.bench.calibrate) writes one from measured DecodeEngine
steps on this machine; others are derived for hardware we cannot measure here.
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
