import json

import pytest

from rollout_len.bench.predictor import run


def test_predictor_cost_reports_the_lm_head_floor(tmp_path):
    out = tmp_path / "cost.json"
    result = run("tiny-llama", json_path=str(out), quick=True, repeats=2)
    prefill = result["prefill"]
    assert prefill["repeats"] == 2 and prefill["lm_head_floor_s"] > 0
    assert prefill["floor_fraction"] == pytest.approx(prefill["lm_head_floor_s"] / prefill["prefill_s"])
    assert prefill["entropy_s"] > 0
    assert prefill["entropy_over_floor"] == pytest.approx(prefill["entropy_s"] / prefill["lm_head_floor_s"])
    assert prefill["entropy_fraction"] == pytest.approx(prefill["entropy_s"] / prefill["prefill_s"])
    assert json.loads(out.read_text())["prefill"]["lm_head_floor_s"] == prefill["lm_head_floor_s"]
