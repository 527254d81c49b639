"""Benchmarks: commands that print figures and write JSON (`rollout-len bench ...`)."""

from __future__ import annotations

import json
import os


def write_json(result: dict, json_path: str | None) -> None:
    """Write a benchmark's result (when a path is given) and say where."""
    if not json_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {json_path}")
