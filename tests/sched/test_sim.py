"""Manager, policies, planner and simulator: fast, no model."""

import json

import numpy as np
import pytest

from rollout_len.sched import BucketManager, CostModel, load_trace, make_policy
from rollout_len.sched.driver import drive
from rollout_len.sched.planner import estimate_makespan
from rollout_len.sched.predictions import PredictionQuality
from rollout_len.sched.simulator import simulate

CPU = CostModel(step_base_s=0.1, per_seq_s=0.01, prefill_per_token_s=1e-4)


def long_tail_groups(prompts=16, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(x) for x in np.clip(rng.lognormal(np.log(60), 0.9, size=n), 2, 400)] for _ in range(prompts)]


def test_unknown_policy_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*fcfs.*length_aware"):
        make_policy("sjf")


@pytest.mark.parametrize("workers,slots", [(0, 4), (2, 0)])
def test_manager_rejects_empty_cluster(workers, slots):
    with pytest.raises(ValueError, match="must be >= 1"):
        BucketManager(make_policy("fcfs"), workers, slots, CPU)


def test_oracle_without_lengths_is_an_error():
    with pytest.raises(ValueError, match="true lengths"):
        BucketManager(make_policy("oracle"), 2, 4, CPU)


def test_cost_profile_needs_sources(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nstep_base_s: {value: 0.01}\nper_seq_s: {value: 0.001, source: here}\n")
    with pytest.raises(ValueError, match="source"):
        CostModel.from_yaml(path)
    path.write_text("name: x\nstep_base_s: {value: 0.01, source: a}\nper_seq_s: {value: 0.001, source: b}\n")
    assert CostModel.from_yaml(path).step_time(10) == pytest.approx(0.02)
    with pytest.raises(ValueError, match=">= 0"):
        CostModel(step_base_s=-1.0, per_seq_s=0.1)


@pytest.mark.parametrize(
    "content,match",
    [
        ({"groups": [[10, -3]]}, "invalid lengths"),
        ({"groups": [[10, None]]}, "invalid lengths"),
        ({"groups": [[]]}, "no lengths"),
        ({"lengths": [1]}, "not a length trace"),
    ],
)
def test_trace_validation(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_trace(path)
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "missing.json")


def test_trace_errors_name_the_line_and_refuse_a_directory(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"lengths": [3, 4]}\n\n{"lengths": [5]}\n{"lenghts": [6]}\n')
    with pytest.raises(ValueError, match="line 4"):
        load_trace(path)
    with pytest.raises(ValueError, match="is a directory"):
        load_trace(tmp_path)


def test_shipped_trace_loads():
    groups, cap = load_trace("docs/results/traces/forelen-rl.json")
    assert cap == 512 and len(groups) == 40 and all(len(g) == 8 for g in groups)


def test_planner_single_worker_closed_form():
    # One worker, 2 slots, samples of 10 and 30 tokens: 10 steps at batch 2, then 20 at batch 1.
    t = estimate_makespan([np.array([10.0, 30.0])], np.zeros(0), [2], CPU)
    assert t == pytest.approx(10 * CPU.step_time(2) + 20 * CPU.step_time(1))
    # A queue is pulled by the first worker to free a slot.
    t = estimate_makespan([np.array([5.0]), np.array([50.0])], np.array([20.0]), [1, 1], CPU)
    assert t == pytest.approx(50 * CPU.step_time(1))


@pytest.mark.parametrize("policy", ["fcfs", "static_padded", "bucketed_padded", "length_aware", "oracle"])
def test_every_policy_finishes_every_sample_exactly(policy):
    groups = long_tail_groups()
    r = simulate(policy, groups, num_workers=3, slots=4, cost=CPU, max_new_tokens=400, every=8)
    assert r.step_time_s > 0
    chunks = r.timeline.chunks
    assert {c.worker_id for c in chunks} == {0, 1, 2}
    if policy.endswith("padded"):
        assert r.padded_fraction > 0
    else:
        assert r.padded_fraction == 0


def test_longest_first_beats_fcfs_when_slots_are_scarce():
    # Round-robin placement puts two of the three long samples on one worker, after its short ones;
    # longest-first starts the long ones at once and lets the short ones fill in.
    groups = [[10, 10, 10], [10, 10, 10], [300, 300, 300]]
    fcfs = simulate("fcfs", groups, 2, 1, CPU, max_new_tokens=400)
    oracle = simulate("oracle", groups, 2, 1, CPU, max_new_tokens=400)
    assert oracle.step_time_s < 0.97 * fcfs.step_time_s


def test_bucketing_cuts_padding_with_good_predictions():
    groups = long_tail_groups(prompts=32, n=4, seed=1)
    plain = simulate("static_padded", groups, 2, 8, CPU, max_new_tokens=400)
    bucketed = simulate("bucketed_padded", groups, 2, 8, CPU, max_new_tokens=400, predictions="oracle")
    assert bucketed.padded_fraction < 0.6 * plain.padded_fraction


def test_noise_predictions_fall_back_to_length_blind():
    ratios = []
    for seed in range(10, 14):
        quality = PredictionQuality()  # warmed by an earlier step, as in RL
        simulate(
            "length_aware",
            long_tail_groups(32, 8, seed=seed + 10),
            4,
            4,
            CPU,
            400,
            predictions="noise",
            quality=quality,
        )
        groups = long_tail_groups(32, 8, seed=seed)
        noisy = simulate("length_aware", groups, 4, 4, CPU, 400, predictions="noise", quality=quality)
        fcfs = simulate("fcfs", groups, 4, 4, CPU, 400)
        assert not quality.trusted("admission") and not quality.trusted("inflight")
        assert noisy.migrations == 0
        ratios.append(noisy.step_time_s / fcfs.step_time_s)
    assert np.mean(ratios) <= 1.05, ratios


def test_tail_migration_pays_on_a_batch_sensitive_cost_model():
    # Longest-first puts the three long samples on one worker; once the other runs dry, moving one
    # over (re-prefill included) beats leaving the batch of three to finish alone.
    from rollout_len.sched.policies import POLICIES, Oracle, register_policy

    @register_policy("oracle_without_migration")
    class NoMigration(Oracle):
        def migrate(self, m, w, now):
            return []

    try:
        cost = CostModel(step_base_s=0.01, per_seq_s=0.05, prefill_per_token_s=1e-5)
        groups = [[200, 200, 200, 10, 10, 10]]
        moved = simulate("oracle", groups, 2, 6, cost, max_new_tokens=400, every=4)
        stayed = simulate("oracle_without_migration", groups, 2, 6, cost, max_new_tokens=400, every=4)
    finally:
        POLICIES.pop("oracle_without_migration")
    assert moved.migrations >= 1 and stayed.migrations == 0
    assert moved.step_time_s < 0.85 * stayed.step_time_s


@pytest.mark.parametrize("policy", ["fcfs", "length_aware"])
def test_a_dead_worker_loses_no_samples(policy):
    groups = long_tail_groups(prompts=8, n=4, seed=4)
    r = simulate(policy, groups, 3, 4, CPU, max_new_tokens=400, deaths={1: 2.0})
    assert r.timeline.deaths and r.timeline.deaths[0][1] == 1
    assert max(c.end_s for c in r.timeline.chunks if c.worker_id == 1) <= 2.0 + 1e-9


def test_drive_rejects_bad_k():
    m = BucketManager(make_policy("fcfs"), 1, 1, CPU)
    with pytest.raises(ValueError, match="k"):
        drive(m, None, 0)


def test_oracle_missing_lengths_and_empty_groups_are_clear_errors():
    from rollout_len.sample import Sample, SamplingParams

    m = BucketManager(make_policy("oracle"), 2, 2, CPU, true_lengths={"a": 3})
    with pytest.raises(ValueError, match=r"true length of every sample; 1 have none, e.g. \['b'\]"):
        m.submit([Sample("a", [1, 2], SamplingParams()), Sample("b", [1, 2], SamplingParams())])
    with pytest.raises(ValueError, match="at least one group"):
        simulate("fcfs", [], 2, 2, CPU)
    with pytest.raises(ValueError, match="ints >= 1"):
        simulate("fcfs", [[3, 0]], 2, 2, CPU)


def test_an_ungrouped_sample_cannot_share_a_name_with_a_group():
    from rollout_len.sample import Sample, SamplingParams

    m = BucketManager(make_policy("fcfs"), 2, 2, CPU)
    with pytest.raises(ValueError, match="sample '0' has no group, and another sample's group is also called '0'"):
        m.submit([Sample("0", [1, 2], SamplingParams()), Sample("x", [3], SamplingParams(), group_id="0")])


def test_the_quality_gate_compares_with_the_survival_baseline():
    """In flight, a predictor that knows nothing (uniform over the budget left) must not be trusted:
    the baseline is the median remaining length of the samples that ran past t, not median - t."""
    from rollout_len.sched.predictions import LengthPrior

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(60), 0.9, size=2000), 2, 512).astype(int)
    prior = LengthPrior()
    for L in lengths[:1000]:
        prior.observe(int(L))
    noise, good = PredictionQuality(), PredictionQuality()
    for L in lengths[1000:]:
        for t in range(16, int(L), 16):
            baseline = prior.baseline(t, 512)
            noise.record("inflight", rng.uniform(1, 512 - t), L - t, baseline)
            good.record("inflight", (L - t) * np.exp(0.2 * rng.standard_normal()), L - t, baseline)
    assert not noise.trusted("inflight") and good.trusted("inflight")
    # t = 0: the baseline is the constant median length
    assert prior.baseline(0, 512) == pytest.approx(float(np.median(lengths[:1000])))
    # past t, the median residual of the survivors, not the median minus t
    t = 200
    assert prior.remaining(t, 512) == pytest.approx(float(np.median(lengths[:1000][lengths[:1000] > t])) - t)


def test_a_small_pool_is_spread_evenly_in_one_round():
    """256 samples on 16 workers x 64 slots: 16 each at once, none left waiting a chunk."""
    from rollout_len.sample import Sample, SamplingParams

    m = BucketManager(make_policy("length_aware"), 16, 64, CPU, predictions="noise")
    m.submit([Sample(f"s{i}", [1, 2, 3], SamplingParams(max_new_tokens=64)) for i in range(256)])
    admitted = [len(m.orders_for(w, 16).admit) for w in range(16)]
    assert admitted == [16] * 16 and not m.pool
    m = BucketManager(make_policy("pool"), 2, 4, CPU)
    m.submit([Sample(f"s{i}", [1, 2, 3], SamplingParams(max_new_tokens=64)) for i in range(4)])
    assert [len(m.orders_for(w, 16).admit) for w in range(2)] == [2, 2]


def test_admission_trust_is_ranking_against_no_information():
    """t = 0 predictions only order samples: the group mean ranks well (trusted) even where the
    median wins on MAE (heavy tails); uniform noise ranks nothing (not trusted)."""
    rng = np.random.default_rng(1)
    ranked, noise = PredictionQuality(), PredictionQuality()
    for _ in range(200):
        mean = float(np.exp(rng.normal(np.log(100), 1.0)))
        for L in np.ceil(mean * np.exp(0.8 * rng.standard_normal(4))):
            ranked.record("admission", mean, float(L), baseline=100.0)
            noise.record("admission", float(rng.uniform(1, 512)), float(L), baseline=100.0)
    assert ranked.rank_corr("admission") > 0.5 and ranked.trusted("admission")
    assert abs(noise.rank_corr("admission")) < 0.1 and not noise.trusted("admission")
    assert ranked.log_error_sd("admission") == pytest.approx(0.8, abs=0.1)


def test_spearman_matches_a_hand_computed_value():
    from rollout_len.sched.predictions import _spearman

    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert _spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(0.8)
    assert np.isnan(_spearman(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))


def test_the_survival_prior_keeps_its_window_sorted():
    from rollout_len.sched.predictions import LengthPrior

    prior = LengthPrior(window=3)
    for L in (50, 10, 30, 20):  # 50 leaves the window
        prior.observe(L)
    assert prior.expected_remaining(0, 100) == 20.0  # median of (10, 30, 20)
    assert prior.expected_remaining(15, 100) == 10.0  # median of (30, 20) - 15
    assert prior.expected_remaining(40, 100) == 30.0  # nothing ran past 40: half the budget left


def test_floor_counts_the_longest_alone_and_all_the_work():
    from rollout_len.sched.simulator import floor_s

    cost = CostModel(step_base_s=0.1, per_seq_s=0.01, prefill_base_s=0.5, prefill_per_token_s=0.001)
    # The longest sample alone: prefill of 10 tokens, then 100 steps at batch 1.
    assert floor_s([100, 1, 1, 1], 4, 4, cost, 10) == pytest.approx(0.5 + 0.01 + 100 * 0.11)
    # All the work: 400 tokens at batch 4 (0.14 s a step), 4 prompts prefilled at once, on 1 worker.
    assert floor_s([100] * 4, 1, 4, cost, 10) == pytest.approx(100 * 0.14 + (0.5 + 0.04))


def test_the_exact_oracle_reaches_the_floor_where_ordering_can():
    """One long sample among short ones on 2 workers x 4 slots: exact longest-first starts it at
    once; the length-blind pool may start it last."""
    groups = [[40] * 4 for _ in range(7)] + [[40, 40, 40, 400]]
    pool = simulate("pool", groups, 2, 4, CPU, max_new_tokens=400)
    oracle = simulate("oracle", groups, 2, 4, CPU, max_new_tokens=400)
    from rollout_len.sched.simulator import floor_s

    floor = floor_s([x for g in groups for x in g], 2, 4, CPU, 128)
    assert oracle.step_time_s <= 1.1 * floor < pool.step_time_s


def test_longest_first_deals_the_longest_samples_across_workers():
    """On the first fill, exact longest-first deals: the first worker takes ranks 1, 5, 9 and 13,
    not the 4 longest (32 samples on 4 x 4 slots: the order matters)."""
    from rollout_len.sample import Sample, SamplingParams

    lengths = {f"s{i}": 10 * (i + 1) for i in range(32)}
    m = BucketManager(make_policy("oracle"), 4, 4, CPU, true_lengths=lengths)
    m.submit([Sample(sid, [1, 2], SamplingParams(max_new_tokens=400)) for sid in lengths])
    assert [lengths[a.sample.sample_id] for a in m.orders_for(0, 8).admit] == [320, 280, 240, 200]


def test_the_prompt_oracle_knows_only_each_prompt_mean():
    groups = [[10, 30], [100, 300]]
    r = simulate("oracle", groups, 1, 1, CPU, max_new_tokens=400, oracle_lengths="prompt")
    assert r.step_time_s == pytest.approx(simulate("oracle", groups, 1, 1, CPU, max_new_tokens=400).step_time_s)
    with pytest.raises(ValueError, match="oracle_lengths"):
        simulate("oracle", groups, 1, 1, CPU, oracle_lengths="median")


def test_synthetic_traces_are_long_tailed_and_say_so():
    from rollout_len.bench.lengths import length_stats
    from rollout_len.bench.traces import synthetic_trace

    for name in ("reasoning", "short", "mix"):
        groups, cap = synthetic_trace(name, 256, 8, seed=0)
        stats = length_stats(groups, cap)
        assert stats["p90_over_median"] >= 2.5 and stats["capped_fraction"] <= 0.05, (name, stats)
    with pytest.raises(ValueError, match="unknown synthetic trace"):
        synthetic_trace("long", 4, 4)


def test_the_simulator_does_not_depend_on_string_hashing():
    """A noise-free twin must replay the same way in every process: no decision may follow the
    iteration order of a set of sample ids (randomized per process by PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    code = (
        "from rollout_len.sched import CostModel, simulate\n"
        "from rollout_len.bench.traces import synthetic_trace\n"
        "from rollout_len.sched.predictions import PredictionQuality\n"
        "g, cap = synthetic_trace('reasoning', 32, 4, seed=0)\n"
        "cost = CostModel(step_base_s=0.1, per_seq_s=0.01, prefill_per_token_s=1e-4)\n"
        "q = PredictionQuality(min_count=8)\n"
        "simulate('length_aware', synthetic_trace('reasoning', 32, 4, seed=1)[0], 8, 4, cost, cap, quality=q)\n"
        "print(simulate('length_aware', g, 8, 4, cost, cap, quality=q).step_time_s)\n"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(out) == 1 and float(out.pop()) > 0


def test_cost_model_fit_recovers_its_parameters():
    truth = CostModel(0.05, 0.004, 2e-5, 0.1, 0.003, name="truth")
    rng = np.random.default_rng(0)
    decode = [(b, c, truth.step_time(b, c)) for b, c in zip(rng.integers(1, 9, 200), rng.integers(50, 3000, 200))]
    prefill = [(n, truth.prefill_time(n)) for n in rng.integers(30, 400, 40)]
    fitted = CostModel.fit(decode, prefill, name="fit")
    for name in ("step_base_s", "per_seq_s", "per_context_token_s", "prefill_base_s", "prefill_per_token_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    assert fitted.relative_error(decode) == pytest.approx(0.0, abs=1e-9)
    # a term the data says is negative is dropped (no negative seconds), the rest refitted
    flat = [(b, c, 0.1 - 1e-3 * b) for b, c, _ in decode]
    assert CostModel.fit(flat, []).per_seq_s == 0.0
    # time that only grows with context is put on base and batch: a step must cost something by itself
    context_only = CostModel.fit([(b, c, 1e-5 * c) for b, c, _ in decode], [])
    assert context_only.per_context_token_s == 0.0 and context_only.step_base_s + context_only.per_seq_s > 0
    with pytest.raises(ValueError, match="at least 3"):
        CostModel.fit(decode[:2], prefill)
    with pytest.raises(ValueError, match="finite"):
        CostModel.fit(decode + [(1, 10, float("nan"))], prefill)


def test_the_first_fill_waits_for_trusted_prompt_scores():
    """With trusted admission predictions, workers score the prompts (in parallel) before admitting
    anything, so the first fill is ranked (longest prompt first), not blind; a worker that dies while
    scoring hands its prompts to another."""
    from rollout_len.sample import Sample, SamplingParams
    from rollout_len.sched.messages import Report

    quality = PredictionQuality()
    for i in range(64):  # a ranking predictor: trusted at admission
        quality.record("admission", float(10 + i), float(12 + i), baseline=40.0)
    m = BucketManager(make_policy("length_aware"), 3, 2, CPU, quality=quality)
    params = SamplingParams(max_new_tokens=400)
    m.submit([Sample(f"p{g}-{i}", [1, 2, g + 3], params, group_id=f"p{g}") for g in range(6) for i in range(2)])
    first = {w: m.orders_for(w, 8) for w in range(3)}
    assert all(o.score and not o.admit for o in first.values())  # every worker scores; nothing admitted blind
    m.worker_died(2)  # its prompts go back to be scored elsewhere
    scored, orders = [], {w: first[w] for w in (0, 1)}
    while not any(o.admit for o in orders.values()):
        for w, o in orders.items():
            report = Report(w)
            for p in o.score:  # prompt g is predicted 50 (g + 1) tokens
                report.scores[p.key] = (None, 50.0 * (int(p.group_id[1:]) + 1))
                scored.append(p.group_id)
            m.apply(report)
        orders = {w: m.orders_for(w, 8) for w in (0, 1)}
    assert sorted(scored) == [f"p{g}" for g in range(6)]  # each prompt scored once, p4 and p5 after the death
    admitted = [[a.sample.group_id for a in orders[w].admit] for w in (0, 1)]
    assert admitted == [["p5", "p4"], ["p5", "p4"]]  # dealt: each worker starts one sample of the two longest
