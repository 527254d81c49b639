"""Benchmarks: commands that print figures and write JSON (`rollout-len bench ...`)."""

from __future__ import annotations

import os

from rollout_len.data import strict_json


def write_json(result: dict, json_path: str | None) -> None:
    """Write a benchmark's result (when a path is given) and say where. Strict JSON: a figure that
    is not finite (NaN, inf: undefined for this run) is written as null (`rollout_len.data.strict_json`)."""
    if not json_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        f.write(strict_json(result, indent=2))
    print(f"wrote {json_path}")
