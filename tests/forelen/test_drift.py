"""forelen drift: a head fit on one build, streamed over a shifted one, frozen and re-fit online."""

import json

import pytest

from rollout_len.cli import main
from rollout_len.forelen.drift import DRIFT_METHODS, drift


@pytest.fixture(scope="module")
def builds(tmp_path_factory, make_synthetic):
    root = tmp_path_factory.mktemp("drift")
    source = make_synthetic(root / "source", prompts=48, seed=0)
    shifted = make_synthetic(root / "shifted", prompts=48, seed=1, offset=12)
    return source, shifted


def test_refit_follows_a_shift_the_frozen_head_misses(builds):
    source, shifted = builds
    result = drift(str(source), str(shifted), prompts_per_step=8, rounds=200)
    run = result["shifted_run"]
    assert [s["step"] for s in run["steps"]] == list(range(6)) and sum(s["prompts"] for s in run["steps"]) == 48
    first = run["steps"][0]
    assert first["in_flight"]["refit"] == first["in_flight"]["frozen"]  # nothing re-fit before the first step
    pooled = run["in_flight"]
    assert set(DRIFT_METHODS) <= set(pooled)
    assert pooled["refit"]["mae"] < 0.9 * pooled["frozen"]["mae"]  # every length moved up by 12 tokens
    ratio = pooled["ratios"]["refit/frozen"]
    assert ratio["ratio"] == pytest.approx(pooled["refit"]["mae"] / pooled["frozen"]["mae"])
    assert ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1]
    # The stream's own lengths move the survival prior up too.
    assert pooled["survival_refit"]["mae"] < pooled["survival"]["mae"]
    # The control streams the source's own test prompts: no shift to follow.
    assert result["control"]["in_flight"]["refit"]["mae"] < 1.2 * result["control"]["in_flight"]["frozen"]["mae"]


def test_bad_inputs_are_refused_naming_them(builds, make_synthetic, tmp_path):
    source, _ = builds
    other = make_synthetic(tmp_path / "wide", hidden_size=32)
    with pytest.raises(ValueError, match="--shifted"):
        drift(str(source), str(other))
    with pytest.raises(ValueError, match="prompts-per-step"):
        drift(str(source), str(source), prompts_per_step=0)
    # One step has nothing after the first to pool: refused before the fit, naming the stream.
    with pytest.raises(ValueError, match="shifted_run stream .48 prompts. a single step"):
        drift(str(source), str(source), prompts_per_step=48)
    with pytest.raises(ValueError, match="control stream"):
        drift(str(source), str(source), prompts_per_step=20)


def test_cli_prints_the_table_and_writes_json(builds, tmp_path, capsys):
    source, shifted = builds
    out = tmp_path / "drift.json"
    args = ["forelen", "drift", "--data", str(source), "--shifted", str(shifted), "--prompts-per-step", "6"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "refit/frozen" in printed and "shifted_run" in printed
    saved = json.loads(out.read_text())
    assert saved["prompts_per_step"] == 6 and len(saved["shifted_run"]["steps"]) == 8
