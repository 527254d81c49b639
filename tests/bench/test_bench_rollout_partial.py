"""`bench rollout --mode partial` on a tiny random-weight model, in process."""

import json

import pytest

from rollout_len.bench.rollout import round_order
from rollout_len.bench.rollout_partial import DEFAULT_ROWS, run
from rollout_len.cli import main


def test_rows_interleave_and_report_throughput_beside_fcfs_sync(tmp_path):
    out = tmp_path / "partial.json"
    result = run(
        workers=2,
        prompts=2,
        n=3,
        slots=2,
        max_new_tokens=16,
        steps=3,
        warmup_steps=1,
        task="arith",
        model="tiny-llama",
        json_path=str(out),
        use_ray=False,
    )
    data = json.loads(out.read_text())
    assert data["policies"].keys() == set(DEFAULT_ROWS) and data["in_flight_groups"] == 4
    assert data["cost_model"]["name"].startswith("live-fit")
    for name, p in data["policies"].items():
        steps = p["steps"]
        assert [s["step"] for s in steps] == [0, 1, 2]
        assert [s["position"] for s in steps] == [round_order(DEFAULT_ROWS, k).index(name) for k in range(3)]
        assert all(s["groups"] == 2 for s in steps), "every step returns the quota"
        assert p["trained_tokens"] == sum(s["trained_tokens"] for s in steps)
        assert sum(p["staleness_tokens"].values()) == p["trained_tokens"]
        assert p["trained_tokens_per_s"] == pytest.approx(p["trained_tokens"] / p["wall_s"])
        assert p["fresh_token_share"] == 1.0  # the default bound (1 step) restarts anything older
        assert all(f > 0 for f in p["load_factors"])
        lo, hi = p["x_fcfs_sync_ci95"]
        assert lo <= hi and p["x_fcfs_sync"] > 0
    fcfs = data["policies"]["fcfs_sync"]
    assert fcfs["x_fcfs_sync"] == 1.0 and fcfs["x_fcfs_sync_ci95"] == [1.0, 1.0]
    assert all(s["carried_samples"] == 0 for s in fcfs["steps"])
    # partial rows launch in_flight groups first, then only what tops it up
    april = data["policies"]["april"]["steps"]
    assert april[0]["launched_groups"] == 4 and all(s["launched_groups"] <= 4 for s in april)
    assert result["policies"]["april"]["mode"] == "partial"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "partial", "--repeats", "2"], "--repeats applies to --mode sync only"),
        (["--mode", "partial", "--repeats", "0"], "--repeats applies to --mode sync only"),
        (["--mode", "partial", "--quick"], "--quick applies to --mode sync only"),
        (["--steps", "3"], "--steps applies to --mode partial only"),
        (["--mode", "partial", "--policies", "pool"], "--policies: unknown rows ['pool']"),
        (["--mode", "partial", "--over-sample-rate", "1"], "--over-sample-rate must be in [0, 1)"),
        (["--mode", "partial", "--on-stale", "nope"], "--on-stale must be one of"),
        (["--mode", "partial", "--steps", "0"], "--steps must be >= 1"),
        (["--mode", "partial", "--json", "/proc/nope/x.json"], "--json"),
    ],
)
def test_bad_flags_name_the_flag(flags, message, capsys):
    assert main(["bench", "rollout", "--model", "tiny-llama", *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_twin_replays_the_recorded_lengths(tmp_path):
    """The simulator twin of every row runs on the lengths the live rows returned."""
    result = run(
        rows=("fcfs_sync", "april"),
        workers=2,
        prompts=2,
        n=2,
        slots=2,
        max_new_tokens=12,
        steps=2,
        warmup_steps=1,
        task="arith",
        model="tiny-llama",
        use_ray=False,
    )
    fcfs, april = result["policies"]["fcfs_sync"], result["policies"]["april"]
    assert fcfs["sim_x_fcfs_sync"] == 1.0 and april["sim_x_fcfs_sync"] > 0
    for p in (fcfs, april):
        assert p["sim_trained_tokens_per_s"] > 0
        assert p["live_over_sim"] == pytest.approx(p["trained_tokens_per_s"] / p["sim_trained_tokens_per_s"])
        for step in p["steps"]:
            assert sum(map(sum, step["group_lengths"].values())) == step["trained_tokens"]
    assert 0 <= result["twin_filled_groups"] <= 4


def test_a_step_that_decoded_nothing_is_not_load_adjusted():
    """A partial step whose carried groups already met the quota decodes nothing: no load factor,
    its time counts as measured."""
    from rollout_len.bench.rollout_partial import _summaries

    recs = [
        {"step_time_s": 10.0, "trained_tokens": 100, "load_factor": 2.0, "staleness_tokens": {"0": 100}},
        {"step_time_s": 0.5, "trained_tokens": 50, "load_factor": None, "staleness_tokens": {"1": 50}},
    ]
    for r in recs:
        r.update(groups=1, decode_tokens=r["trained_tokens"])
    (row,) = _summaries(("april",), {"april": recs}).values()
    assert row["trained_tokens_per_s"] == pytest.approx(150 / 10.5)
    assert row["load_adjusted_tokens_per_s"] == pytest.approx(150 / (10.0 / 2.0 + 0.5))
    assert row["fresh_token_share"] == 1.0 and row["load_factors"] == [2.0, None]
