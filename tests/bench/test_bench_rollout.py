"""`rollout-len bench rollout` end to end on a tiny model, in-process, and its helpers on hand data."""

import json

import numpy as np
import pytest

from rollout_len.bench.rollout import bootstrap_median_ci, round_order, run, summarize, throughput_ratio_ci
from rollout_len.cli import main

POLICIES = ("pool", "fcfs", "length_aware", "oracle")


def test_rounds_alternate_rotated_then_reversed():
    orders = [round_order(POLICIES, r) for r in range(4)]
    assert orders == [
        ("pool", "fcfs", "length_aware", "oracle"),
        ("oracle", "length_aware", "fcfs", "pool"),
        ("fcfs", "length_aware", "oracle", "pool"),
        ("pool", "oracle", "length_aware", "fcfs"),
    ]
    # each forward/reversed pair puts every policy at the middle position on average
    for pair in (orders[:2], orders[2:]):
        assert {p: sum(o.index(p) for o in pair) for p in POLICIES} == dict.fromkeys(POLICIES, 3)
    # over 2 x len(policies) rounds every policy holds every position twice
    every = [round_order(POLICIES, r) for r in range(8)]
    assert all(sorted(o.index(p) for o in every) == [0, 0, 1, 1, 2, 2, 3, 3] for p in POLICIES)


def test_the_oracle_never_opens_round_zero():
    assert round_order(("oracle", "pool", "fcfs"), 0) == ("pool", "oracle", "fcfs")
    assert round_order(("oracle", "pool", "fcfs"), 1) == ("fcfs", "pool", "oracle")
    with pytest.raises(ValueError, match="round"):
        round_order(POLICIES, -1)


def test_bootstrap_interval_of_the_median():
    values = [10.0, 12.0, 11.0, 30.0, 9.0]
    lo, hi = bootstrap_median_ci(values)
    assert lo <= np.median(values) <= hi
    assert 9.0 <= lo and hi <= 30.0
    assert bootstrap_median_ci(values) == (lo, hi)  # fixed seed
    assert bootstrap_median_ci([4.5, 4.5, 4.5]) == (4.5, 4.5)
    assert bootstrap_median_ci([7.0]) == (7.0, 7.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_median_ci([])


def test_throughput_ratio_is_of_sums_with_a_paired_interval():
    ratio, (lo, hi) = throughput_ratio_ci([100, 300], [1, 2], [100, 100], [2, 2])
    assert ratio == pytest.approx((400 / 3) / (200 / 4))
    assert lo <= ratio <= hi and lo >= 100 / 2 / 50 and hi <= 150 / 50  # within the per-pair extremes
    assert throughput_ratio_ci([5, 5], [1, 1], [5, 5], [1, 1]) == (1.0, (1.0, 1.0))
    with pytest.raises(ValueError, match="one length"):
        throughput_ratio_ci([1], [1, 2], [1], [1])


def test_summaries_leave_out_undefined_rounds():
    assert summarize([1.0, None, 1.0]) == {"median": 1.0, "ci95": [1.0, 1.0], "rounds": [1.0, None, 1.0]}
    assert summarize([None, None]) == {"median": None, "ci95": None, "rounds": [None, None]}


def test_bench_rollout_repeats_rounds_on_the_same_samples(tmp_path):
    out = tmp_path / "rollout.json"
    result = run(
        POLICIES,
        workers=2,
        prompts=2,
        n=2,
        slots=2,
        max_new_tokens=12,
        warmup_steps=1,
        repeats=2,
        task="arith",
        temperature=0.7,
        model="tiny-llama",
        json_path=str(out),
        use_ray=False,
    )
    data = json.loads(out.read_text())
    assert data["order"] == [list(round_order(POLICIES, r)) for r in range(2)]
    assert data["repeats"] == 2 and data["workers"] == 2 and data["slots"] == 2
    assert data["task"] == "arith" and data["temperature"] == 0.7
    assert isinstance(data["floor_s"], float) and data["floor_s"] > 0
    # one cost model for every twin and the floor, fitted to the run's own engine steps
    assert data["cost_model"]["name"].startswith("live-fit") and data["cost_model"]["step_base_s"] >= 0
    assert data["policies"].keys() == set(POLICIES)
    for name, p in data["policies"].items():
        assert isinstance(p["step_time_s"], float) and p["step_time_s"] > 0
        assert len(p["rounds"]) == 2 and all(isinstance(t, float) for t in p["rounds"])
        assert p["ci95"][0] <= p["step_time_s"] <= p["ci95"][1]
        assert p["step_time_s"] == pytest.approx(float(np.median(p["rounds"])))
        assert p["ratio_to_floor"] == pytest.approx(p["step_time_s"] / data["floor_s"])
        for key in ("ratio_to_pool", "oracle_gain_share"):
            assert set(p[key]) == {"median", "ci95", "rounds"} and len(p[key]["rounds"]) == 2
        assert p["ratio_to_pool"]["median"] > 0 and len(p["ratio_to_pool"]["ci95"]) == 2
        assert isinstance(p["sim_step_time_s"], float) and p["sim_step_time_s"] > 0
        assert p["live_over_sim"] == pytest.approx(float(np.median(np.array(p["rounds"]) / np.array(p["sim_rounds"]))))
        assert [r["position"] for r in p["runs"]] == [o.index(name) for o in data["order"]]
        own = [r["step_time_s"] / r["sim_own_fit_s"] for r in p["runs"]]
        assert p["live_over_own_fit"] == pytest.approx(float(np.median(own)))
        assert len(p["load_factors"]) == 2 and all(f > 0 for f in p["load_factors"])
        adjusted = [r["step_time_s"] / r["load_factor"] for r in p["runs"]]
        assert p["load_adjusted"]["step_time_s"] == pytest.approx(float(np.median(adjusted)))
    assert data["policies"]["pool"]["ratio_to_pool"] == {"median": 1.0, "ci95": [1.0, 1.0], "rounds": [1.0, 1.0]}
    # per-sample RNG: every run of every round generates the same lengths
    assert result["lengths_check"]["identical"]
    assert all(r["oracle_lengths_off"] == 0 for r in result["policies"]["oracle"]["runs"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
        (["--policies", "oracle"], "--policies"),
        (["--policies", "pool,nope"], "--policies: unknown"),
        (["--task", "nope"], "--task: unknown task"),
        (["--temperature", "0"], "--temperature must be > 0"),
    ],
)
def test_bad_flags_name_the_flag(flags, message, capsys):
    assert main(["bench", "rollout", "--model", "tiny-llama", *flags]) == 2
    assert message in capsys.readouterr().err
