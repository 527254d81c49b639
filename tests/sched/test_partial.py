"""Partial (stall-free) steps: the stop at a quota of whole groups, carry-over with tokens and
versions, the staleness bound, the multi-step simulation and `bench sim --mode partial`."""

import json

import pytest

from rollout_len.cli import main
from rollout_len.sample import Sample, SampleStatus, SamplingParams
from rollout_len.sched import BucketManager, CostModel, make_policy
from rollout_len.sched.bucket_manager import Tagged
from rollout_len.sched.driver import drive
from rollout_len.sched.partial import PartialConfig, bound_staleness, quota_met, simulate_partial
from rollout_len.sched.simulator import SimCluster, SimWorker

CPU = CostModel(step_base_s=0.1, per_seq_s=0.01, prefill_per_token_s=1e-4)
SMALL = ["--workers", "2", "--slots", "2", "--prompts", "2", "--n", "2", "--trace", "synthetic:short"]


def make_step(groups: dict[str, list[int]], policy="april", version=0, workers=1, slots=2, carried=(), versions=None):
    """A manager and simulated workers for one step: `groups` maps a group id to its samples' true
    lengths (sample ids `<group>-<j>`); `carried` samples are submitted first."""
    true, means, fresh = {}, {}, []
    for gid, lengths in groups.items():
        means[gid] = sum(lengths) / len(lengths)
        for j, length in enumerate(lengths):
            true[f"{gid}-{j}"] = length
            if not any(s.sample_id == f"{gid}-{j}" for s in carried):
                fresh.append(Sample(f"{gid}-{j}", [1, 2, 3], SamplingParams(max_new_tokens=400), group_id=gid))
    manager = BucketManager(make_policy(policy), workers, slots, CPU, version=version)
    manager.submit([*carried, *fresh], versions)
    cluster = SimCluster([SimWorker(w, CPU, true, means, predicts=False) for w in range(workers)])
    return manager, cluster


def test_step_stops_at_the_quota_and_returns_groups_whole():
    manager, cluster = make_step({"a": [5, 5], "b": [5, 300], "c": [200, 300]}, workers=2, slots=2)
    timeline = drive(manager, cluster, every=4, until=quota_met(1))
    end = manager.end_step(1)
    assert list(end.groups) == ["a"]  # the first complete group; the step did not wait for the rest
    assert all(t.sample.status.is_finished for t in end.groups["a"]) and len(end.groups["a"]) == 2
    carried = {t.sample.sample_id: t for t in end.carried}
    assert set(carried) == {"b-0", "b-1", "c-0", "c-1"}
    assert any(t.sample.num_output > 0 and t.sample.status == SampleStatus.WAITING for t in carried.values())
    assert timeline.end_s < 100 * CPU.step_time(2)  # far short of the 300-token tail


def test_groups_beyond_the_quota_are_carried_complete():
    manager, cluster = make_step({"a": [5, 5], "b": [5, 5]}, workers=1, slots=4)
    drive(manager, cluster, every=8, until=quota_met(1))
    end = manager.end_step(1)
    assert len(end.groups) == 1 and len(manager.complete_groups) == 2
    assert len(end.carried) == 2 and all(t.sample.status.is_finished for t in end.carried)
    with pytest.raises(ValueError, match="quota"):
        manager.end_step(-1)


def test_carried_sample_keeps_its_tokens_and_tags_each_with_its_version():
    old = Sample("a-0", [1, 2, 3], SamplingParams(max_new_tokens=400), group_id="a")
    old.output_ids, old.logprobs = [5, 6, 7], [-1.0, -2.0, -3.0]
    manager, cluster = make_step({"a": [10, 4]}, version=1, carried=[old], versions={"a-0": [(0, 3)]})
    drive(manager, cluster, every=4)
    end = manager.end_step()
    a0 = next(t for t in end.groups["a"] if t.sample.sample_id == "a-0")
    assert a0.sample.output_ids[:3] == [5, 6, 7] and a0.sample.logprobs[:3] == [-1.0, -2.0, -3.0]
    assert a0.sample.num_output == 10
    assert a0.versions == ((0, 3), (1, 7)) and (a0.min_version, a0.max_version) == (0, 1)
    a1 = next(t for t in end.groups["a"] if t.sample.sample_id == "a-1")
    assert a1.versions == ((1, 4),)


def test_version_runs_must_fit_the_tokens():
    s = Sample("x", [1], SamplingParams(max_new_tokens=8))
    s.output_ids, s.logprobs = [1, 2], [0.0, 0.0]
    manager = BucketManager(make_policy("april"), 1, 1, CPU)
    with pytest.raises(ValueError, match="version runs"):
        manager.submit([s], {"x": [(0, 3)]})


class Recording(SimCluster):
    """A simulated cluster that keeps the order in which samples were admitted."""

    def __init__(self, workers):
        super().__init__(workers)
        self.admitted: list[str] = []

    def submit(self, worker_id, orders):
        self.admitted += [a.sample.sample_id for a in orders.admit]
        super().submit(worker_id, orders)


def test_resuming_samples_are_admitted_first():
    for policy in ("april", "length_aware_partial", "pool"):
        resumed = Sample("old-1", [1, 2, 3], SamplingParams(max_new_tokens=400), group_id="old")
        resumed.output_ids, resumed.logprobs = [9], [0.0]
        manager, cluster = make_step({"new": [5, 5], "old": [5, 20]}, policy=policy, slots=1, carried=[resumed])
        recording = Recording(cluster.workers)
        drive(manager, recording, every=4)
        assert recording.admitted[:2] == ["old-1", "old-0"], policy  # then the rest of its group


def tagged(sid: str, group: str, runs: tuple[tuple[int, int], ...]) -> Tagged:
    s = Sample(sid, [1], SamplingParams(max_new_tokens=64), group_id=group)
    s.output_ids = [0] * sum(n for _, n in runs)
    s.logprobs = [0.0] * len(s.output_ids)
    s.status = SampleStatus.WAITING
    return Tagged(s, runs)


def test_staleness_bound_restarts_or_drops_and_counts():
    carried = [
        tagged("a-0", "a", ((1, 4), (2, 3))),  # trained at 3: its oldest token 2 steps old
        tagged("a-1", "a", ((2, 5),)),
        tagged("b-0", "b", ()),  # not started: nothing to age
    ]
    kept, count = bound_staleness(carried, version=3, max_staleness=1, on_stale="restart")
    assert [t.sample.sample_id for t in kept] == ["a-0", "a-1", "b-0"]
    assert kept[0].sample.num_output == 0 and kept[0].versions == () and kept[0].sample.rng_state is None
    assert kept[1].sample.num_output == 5  # within the bound: untouched
    assert (count.restarted, count.dropped_groups, count.wasted_tokens) == (1, 0, 7)
    kept, count = bound_staleness(carried, version=3, max_staleness=1, on_stale="drop")
    assert [t.sample.sample_id for t in kept] == ["b-0"]  # group a goes whole
    assert (count.restarted, count.dropped_groups, count.wasted_tokens) == (0, 1, 12)
    kept, count = bound_staleness(carried, version=3, max_staleness=2, on_stale="restart")
    assert count.restarted == 0 and len(kept) == 3


def lengths_stream(seed=0):
    """Long-tailed groups of 2: most short, every third prompt with one long sample."""
    i = 0
    while True:
        yield [8 + (i * 7 + seed) % 11, 150 if i % 3 == 0 else 12]
        i += 1


def test_partial_steps_meet_the_quota_and_beat_a_synchronous_step():
    config = PartialConfig(quota=3, over_sample_rate=0.5, max_staleness=2)
    args = (config, 2, 2, CPU, 400)
    partial = simulate_partial("april", lengths_stream(), 6, *args, every=4)
    sync = simulate_partial("fcfs_sync", lengths_stream(), 6, *args, every=4)
    assert [s.groups for s in partial.steps] == [3] * 6 and config.in_flight == 6
    assert any(s.carried_samples for s in partial.steps)
    assert partial.trained_tokens_per_s > sync.trained_tokens_per_s
    # Synchronous rows carry nothing: every token is trained at the step that made it.
    assert all(s.carried_samples == 0 for s in sync.steps) and set(sync.staleness) == {0}
    assert sync.fresh_token_share == 1.0
    # Every trained token is accounted for by exactly one staleness bucket, none past the bound.
    assert sum(partial.staleness.values()) == partial.trained_tokens
    assert max(partial.staleness) <= config.max_staleness


def test_tight_bound_restarts_long_samples():
    config = PartialConfig(quota=3, over_sample_rate=0.5, max_staleness=0)
    r = simulate_partial("april", lengths_stream(), 6, config, 2, 2, CPU, 400, every=4)
    assert sum(s.restarted for s in r.steps) > 0 and set(r.staleness) == {0}
    assert r.to_dict()["wasted_tokens"] > 0


def test_stop_condition_that_never_holds_is_a_synchronous_step():
    groups = {"a": [5, 40], "b": [30, 7], "c": [12, 12]}
    ends = []
    for until in (None, lambda m: False):
        manager, cluster = make_step(groups, policy="fcfs", workers=2, slots=2)
        ends.append(drive(manager, cluster, every=4, until=until).end_s)
        assert manager.done()
    assert ends[0] == ends[1]


def test_cli_partial_writes_every_row_the_checks_read(tmp_path):
    out = tmp_path / "partial.json"
    assert main(["bench", "sim", "--mode", "partial", *SMALL, "--steps", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "partial" and result["steps"] == 3
    rows = result["policies"]
    assert set(rows) == {"fcfs_sync", "pool_sync", "april", "length_aware_partial"}
    for p in rows.values():
        assert p["trained_tokens_per_s"] > 0 and 0 <= p["fresh_token_share"] <= 1 and len(p["step_time_s"]) == 3
    assert rows["april"]["throughput_vs_april"] == pytest.approx(1.0)
    assert set(result["targets"]) == {"throughput_1.5x_fcfs_sync", "throughput_1.15x_april", "fresh_token_share_0.95"}


def test_cli_sync_mode_is_the_default(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    flags = [*SMALL, "--policies", "fcfs,pool"]
    assert main(["bench", "sim", *flags, "--json", str(a)]) == 0
    assert main(["bench", "sim", *flags, "--mode", "sync", "--json", str(b)]) == 0
    rows = [json.loads(p.read_text())["regimes"]["custom"]["policies"] for p in (a, b)]
    assert {k: v["step_time_s"] for k, v in rows[0].items()} == {k: v["step_time_s"] for k, v in rows[1].items()}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "partial", "--steps", "0", *SMALL], "--steps must be >= 1"),
        (["--mode", "partial", "--over-sample-rate", "1", *SMALL], "--over-sample-rate"),
        (["--mode", "partial", "--over-sample-rate", "nan", *SMALL], "--over-sample-rate"),
        (["--mode", "partial", "--max-staleness", "-1", *SMALL], "--max-staleness"),
        (["--mode", "partial", "--on-stale", "keep", *SMALL], "--on-stale"),
        (["--mode", "partial", "--weight-sync-s", "-1", *SMALL], "--weight-sync-s"),
        (["--mode", "partial", "--policies", "april,nope", *SMALL], "unknown --policies"),
        (["--mode", "partial", "--regimes", "cpu-live"], "--regimes applies to --mode sync only"),
        (["--mode", "partial", "--slots", "0"], "--slots must be >= 1"),
        (["--steps", "3", *SMALL], "--steps applies to --mode partial only"),
        (["--over-sample-rate", "0.2", *SMALL], "--over-sample-rate applies to --mode partial only"),
    ],
)
def test_bad_partial_flags_name_the_flag(flags, message, capsys):
    assert main(["bench", "sim", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"quota": True}, "quota"),
        ({"quota": 2.0}, "quota"),
        ({"over_sample_rate": "0.5"}, "over_sample_rate"),
        ({"over_sample_rate": float("nan")}, "over_sample_rate"),
        ({"max_staleness": True}, "max_staleness"),
        ({"weight_sync_s": "1"}, "weight_sync_s"),
        ({"on_stale": "ignore"}, "on_stale"),
    ],
)
def test_partial_config_names_a_bad_field(fields, name):
    with pytest.raises(ValueError, match=name):
        PartialConfig(**{"quota": 1, **fields})


def test_expand_prompts_prefix_keeps_ids_apart_across_steps():
    from rollout_len.sample import expand_prompts

    params = SamplingParams(max_new_tokens=4)
    first, second = (expand_prompts([[1, 2]], 2, params, prefix=f"step{k}-") for k in range(2))
    assert [s.sample_id for s in first] == ["step0-0-0", "step0-0-1"] and first[0].group_id == "step0-0"
    assert not {s.sample_id for s in first} & {s.sample_id for s in second}
    assert [s.sample_id for s in expand_prompts([[1]], 1, params)] == ["0-0"]  # no prefix: as before
