"""`rollout-len bench sim`: the JSON the scheduling checks read, Markdown, and bad flags."""

import json

import pytest

from rollout_len.bench.sim import REGIMES, compare
from rollout_len.cli import main

SMALL = ["--workers", "2", "--slots", "2", "--prompts", "4", "--n", "2", "--trace", "synthetic:short"]


def test_a_custom_regime_writes_every_row_the_checks_read(tmp_path):
    out, md = tmp_path / "sim.json", tmp_path / "sim.md"
    assert main(["bench", "sim", *SMALL, "--json", str(out), "--md", str(md)]) == 0
    regime = json.loads(out.read_text())["regimes"]["custom"]
    assert regime["workers"] == 2 and regime["slots"] == 2 and regime["samples"] == 8
    assert regime["floor_s"] > 0
    rows = regime["policies"]
    for name in ("fcfs", "pool", "length_aware", "oracle", "length_aware+noise", "oracle@prompt"):
        p = rows[name]
        assert p["step_time_s"] > 0
        assert p["ratio_to_floor"] == pytest.approx(p["step_time_s"] / regime["floor_s"])
        assert p["ratio_to_pool"] == pytest.approx(p["step_time_s"] / rows["pool"]["step_time_s"])
    assert rows["oracle"]["step_time_s"] >= regime["floor_s"] * 0.999  # nothing beats the floor
    assert set(regime["targets"]) == {
        "oracle_within_1.05_of_floor",
        "length_aware_captures_60pct_of_oracle_gain",
        "noise_within_1.02_of_pool",
    }
    text = md.read_text()
    assert "## custom: 2 workers x 2 slots, 8 samples" in text and "| oracle |" in text


def test_oracle_gain_share_is_relative_to_pool():
    rows = {"pool": {"step_time_s": 10.0}, "oracle": {"step_time_s": 6.0}, "length_aware": {"step_time_s": 7.0}}
    compare(rows, floor=5.0)
    assert rows["length_aware"]["oracle_gain_share"] == pytest.approx(0.75)
    assert rows["length_aware"]["ratio_to_floor"] == pytest.approx(1.4)
    assert rows["length_aware"]["ratio_to_fcfs"] is None  # no fcfs row


def test_default_regimes_are_named_and_stated():
    assert {"h100-one-wave", "h100-queue-4", "h100-queue-16", "cpu-queue-4", "cpu-live"} <= set(REGIMES)
    wave = REGIMES["h100-one-wave"]
    assert wave.prompts * wave.n == wave.workers * wave.slots  # one wave: every sample starts at once


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--regimes", "nope"], "unknown --regimes"),
        (["--regimes", "cpu-live", "--workers", "2"], "not both"),
        (["--policies", "pool,nope", *SMALL], "unknown --policies"),
        (["--trace", "synthetic:nope"], "--trace synthetic:nope"),
        (["--slots", "0"], "--slots must be >= 1"),
        (["--regimes", ","], "--regimes is empty"),
        (["--policies", "pool,pool", *SMALL], "--policies lists a name twice"),
        (["--sigma", "nan", *SMALL], "--sigma"),
        (["--sigma", "-0.5", *SMALL], "--sigma"),
        (["--trace", "/nonexistent.json"], "does not exist"),
        (["--regimes", ""], "--regimes is empty"),
        (["--policies", "", *SMALL], "--policies is empty"),
        (["--profile", "/nonexistent.yaml", *SMALL], "--profile /nonexistent.yaml"),
        (["--regimes", "cpu-live", "--md", "/proc/x.md"], "--md /proc/x.md: cannot be written"),
        (["--regimes", "cpu-live", "--json", "/tmp"], "--json /tmp is a folder"),
    ],
)
def test_bad_flags_name_the_flag(flags, message, capsys):
    assert main(["bench", "sim", *flags]) == 2
    assert message in capsys.readouterr().err


def test_ratios_over_several_draws_are_paired():
    """Draws are shared by every policy: the ratio is the median of per-draw ratios."""
    rows = {
        "pool": {"step_time_s": 20.0, "draws_s": [10.0, 20.0, 40.0]},
        "oracle": {"step_time_s": 16.0, "draws_s": [8.0, 16.0, 30.0]},
        "length_aware": {"step_time_s": 21.0, "draws_s": [9.0, 21.0, 35.0]},
    }
    compare(rows, floor=8.0)
    la = rows["length_aware"]
    assert la["ratio_to_pool"] == pytest.approx(0.9)  # median of 0.9, 1.05, 0.875
    assert la["oracle_gain_share"] == pytest.approx(0.5)  # median of 0.5, -0.25, 0.5


def test_outputs_go_to_new_folders_and_json_is_strict(tmp_path):
    out = tmp_path / "a" / "sim.json"
    md = tmp_path / "b" / "sim.md"
    assert main(["bench", "sim", *SMALL, "--policies", "pool,oracle", "--json", str(out), "--md", str(md)]) == 0
    assert md.exists()
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_the_floor_is_a_lower_bound_for_one_sample_alone():
    from rollout_len.bench.sim import REGIMES
    from rollout_len.sched import CostModel, simulate
    from rollout_len.sched.simulator import floor_s

    cost = CostModel.from_yaml(REGIMES["cpu-live"].profile)
    r = simulate("pool", [[300]], 1, 1, cost, 512)
    assert r.step_time_s == pytest.approx(floor_s([300], 1, 1, cost, 128), rel=1e-9)
