"""Benchmarks: commands that print figures and write JSON (`rollout-len bench ...`)."""

from __future__ import annotations

import json
import math
import os


def write_json(result: dict, json_path: str | None) -> None:
    """Write a benchmark's result (when a path is given) and say where. Strict JSON: a figure that
    is not finite (NaN, inf: undefined for this run) is written as null."""
    if not json_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(_finite(result), f, indent=2, allow_nan=False)
    print(f"wrote {json_path}")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
