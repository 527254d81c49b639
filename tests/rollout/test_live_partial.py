"""Partial (stall-free) steps of the live Coordinator on a tiny random-weight model."""

import pytest
import torch

from rollout_len.rollout.coordinator import Coordinator, RolloutConfig
from rollout_len.sample import Sample, SamplingParams
from rollout_len.sched.partial import PartialConfig, PartialRun

# Lengths fixed per sample (ignore_stop): a long-tailed mix inside every group, so groups end apart.
LENGTHS = [[4, 6, 30], [5, 5, 7], [3, 28, 6], [8, 4, 5], [26, 5, 4], [6, 7, 3]]


def groups(first: int, count: int, tag: str = "g") -> list[Sample]:
    out = []
    for g in range(first, first + count):
        prompt = [5 + g, 6, 7, 8 + g % 5, 9]
        for j, length in enumerate(LENGTHS[g % len(LENGTHS)]):
            params = SamplingParams(max_new_tokens=length, ignore_stop=True)
            out.append(Sample(f"{tag}{g}-{j}", prompt, params, seed=11, group_id=f"{tag}{g}"))
    return out


def coordinator(use_ray: bool = False, **kw) -> Coordinator:
    return Coordinator("tiny-llama", RolloutConfig(num_workers=2, slots_per_worker=3, every=4, use_ray=use_ray, **kw))


def run_until_all_returned(coord, run, total_groups, policy="length_aware_partial", max_steps=12):
    launched, returned, results = 0, {}, []
    for _ in range(max_steps):
        count = min(run.groups_to_launch(), total_groups - launched)
        result = coord.run_partial_step(groups(launched, count), run, policy)
        run = result.run
        launched += count
        results.append(result)
        for gid, members in result.groups.items():
            assert gid not in returned, f"group {gid} returned twice"
            returned[gid] = members
        if len(returned) == total_groups:
            return returned, results
    raise AssertionError(f"{len(returned)} of {total_groups} groups returned after {max_steps} steps")


@pytest.mark.parametrize("use_ray", [False, True], ids=["in-process", "ray"])
@pytest.mark.parametrize("policy", ["length_aware_partial", "april"])
def test_partial_steps_return_whole_groups_that_continue_exactly(use_ray, policy):
    """Each step returns `quota` whole groups; carried samples resume (re-prefill of prompt + tokens,
    their RNG state) and, without a weight update in between, end with the tokens and log-probs a
    synchronous step gives the same samples."""
    if use_ray:
        pytest.importorskip("ray")
    coord = coordinator(use_ray)
    try:
        sync = {s.sample_id: s for s in coord.run_step(groups(0, 6), "fcfs").samples}
        run = PartialRun(PartialConfig(quota=2, over_sample_rate=0.5, max_staleness=10))
        assert run.groups_to_launch() == 4
        returned, results = run_until_all_returned(coord, run, 6, policy)
    finally:
        coord.shutdown()
    assert all(len(r.groups) == 2 for r in results[:-1])  # the last step may return fewer: nothing new came
    assert [r.version for r in results] == list(range(len(results)))
    assert any(r.metrics["carried_in"] > 0 for r in results), "nothing was carried: the test proves nothing"
    resumed = 0
    for gid, members in returned.items():
        assert len(members) == 3, f"group {gid} not whole"
        for t in members:
            s, ref = t.sample, sync[t.sample.sample_id]
            assert s.status.is_finished and s.output_ids == ref.output_ids
            assert torch.allclose(torch.tensor(s.logprobs), torch.tensor(ref.logprobs), atol=1e-5)
            assert sum(n for _, n in t.versions) == s.num_output
            resumed += t.min_version != t.max_version
    assert resumed > 0, "no sample spanned two steps"
    for r in results:
        assert r.metrics["trained_tokens"] == sum(s.num_output for s in r.samples)
        tokens = sum(v for k, v in r.metrics.items() if k.startswith("staleness_tokens_"))
        assert tokens == r.metrics["trained_tokens"]


def test_the_staleness_bound_restarts_or_drops_old_samples():
    """max_staleness 0: a sample carried into the next step is restarted from its prompt (its tokens
    counted as wasted), so every returned token was made by the step's own weights; with `drop` its
    group goes instead."""
    coord = coordinator()
    try:
        restart = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=0))
        returned, results = run_until_all_returned(coord, restart, 4)
        drop = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=0, on_stale="drop"))
        first = coord.run_partial_step(groups(0, 2), drop)  # a run of its own on the same workers
        second = coord.run_partial_step(groups(2, first.run.groups_to_launch()), first.run)
    finally:
        coord.shutdown()
    assert sum(r.metrics["restarted"] for r in results) > 0
    assert sum(r.metrics["wasted_tokens"] for r in results) > 0
    for r in results:
        assert set(r.staleness_tokens()) <= {0} and r.metrics["fresh_token_share"] == 1.0
    assert len(returned) == 4
    assert first.carried > 0 and second.metrics["dropped_groups"] >= 1
    assert not set(second.groups) & set(first.groups)


def test_sync_steps_and_other_runs_in_between_leave_what_is_carried():
    coord = coordinator()
    try:
        run, other = (PartialRun(PartialConfig(quota=1, over_sample_rate=0.5, max_staleness=5)) for _ in range(2))
        run = coord.run_partial_step(groups(0, 2), run).run
        carried = [t.sample.sample_id for t in run.carried]
        assert carried and run.version == 1
        coord.run_step(groups(0, 2, "sync"), "fcfs")
        coord.run_partial_step(groups(0, 2), other, "april")  # the same ids in another run: no clash
        assert [t.sample.sample_id for t in run.carried] == carried and run.version == 1
        again = coord.run_partial_step(groups(2, run.groups_to_launch()), run)
        assert again.version == 1 and again.metrics["carried_in"] == len(carried)
    finally:
        coord.shutdown()


def test_bad_partial_arguments_are_refused_and_lose_nothing():
    coord = coordinator()
    try:
        run = PartialRun(PartialConfig(quota=1, over_sample_rate=0.5))
        with pytest.raises(ValueError, match="none are carried"):
            coord.run_partial_step([], run)
        with pytest.raises(TypeError, match="PartialRun"):
            coord.run_partial_step(groups(0, 1), PartialConfig(quota=1))
        with pytest.raises(TypeError, match="PartialConfig"):
            PartialRun({"quota": 1})
        with pytest.raises(ValueError, match="weight_sync_s"):
            coord.run_partial_step(groups(0, 1), PartialRun(PartialConfig(quota=1, weight_sync_s=1.0)))
        first = coord.run_partial_step(groups(0, 2), run)
        assert first.carried > 0 and run.carried == [] and run.version == 0, "the given run is not changed"
        run = first.run
        carried = list(run.carried)
        with pytest.raises(ValueError, match="carried from the previous partial step"):
            coord.run_partial_step(groups(0, 1), run)  # g0 (a 30-token sample) is carried
        with pytest.raises(ValueError, match="unknown policy"):
            coord.run_partial_step(groups(5, 1), run, policy="psychic")
        assert run.carried == carried and run.version == 1
        with pytest.raises(ValueError, match="quota"):
            PartialConfig(quota=0)
    finally:
        coord.shutdown()
