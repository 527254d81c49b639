"""Partial (stall-free) rollouts: a step stops waiting for its tail, over many steps.

    result = simulate_partial("april", prompts, steps=10, config=PartialConfig(quota=256), num_workers=64,
                              slots=16, cost=cost, max_new_tokens=8192)
    result.trained_tokens_per_s, result.fresh_token_share, result.staleness

`rollout-len bench sim --mode partial --workers 64 --steps 10 --json OUT` compares the rows of
PARTIAL_ROWS on one trace (rollout_len.bench.sim). The pieces a live rollout would reuse are not
simulator code: the stop condition is `drive(..., until=quota_met(quota))`, the step's end is
`BucketManager.end_step(quota)`, the staleness bound is `bound_staleness`.

Semantics, each a modelling choice:
- **A step ends when `quota` GRPO groups are complete** (every sample of the group finished; a group
  is returned only whole, its samples may span policy versions). The quota is verl's
  `data.train_batch_size` in prompts: the trainer gets a batch of the usual size. Groups completed
  beyond the quota in the same instant are carried (returned first next step), so every step
  trains on exactly `quota` groups. The stop takes effect at each worker's next chunk boundary
  (`drive`: at most k decode steps), as a live worker ends its chunk before answering.
- **Over-provisioning**: `over_sample_rate` has verl's meaning (`actor_rollout_ref.rollout.
  over_sample_rate`: stop once (1 - rate) of the launched requests are done), counted in groups:
  a step holds quota / (1 - rate) groups in flight (carried ones first, topped up with new prompts),
  and stops when `quota` of them are complete. APRIL's `over_sampling_batch_size / rollout_batch_size`
  is 1 / (1 - rate) (its reasoning setting, 2x, is rate 0.5). Unlike verl, which drops what it
  aborts, the unfinished samples carry over (APRIL, verl fully-async's partial rollout).
- **Carried samples keep their tokens** and are admitted first in the next step (the manager ranks
  samples holding tokens first, then the rest of their groups; every partial policy keeps them
  first). They resume by **re-prefill** of prompt + generated tokens under the new weights (the
  simulated worker charges it through the cost model, as the engine's import does): carried samples
  are re-admitted anyway, so an in-flight weight update would save only that prefill, and it would
  leave the KV of old tokens computed by old weights.
- **Versions**: step v decodes with policy version v (the trainer's step); every token records the
  version that produced it (`Tagged.versions`), so each returned sample has `min_version` /
  `max_version` (verl's `min_global_steps` / `max_global_steps`) and each token a staleness v - u
  when trained at step v. `fresh_token_share` is the share of trained tokens with staleness <= 1.
- **Staleness bound**: a carried sample whose oldest token would be more than `max_staleness` steps
  old when trained in the coming step is restarted (its tokens discarded, it decodes again from the
  prompt; in the simulator with the same length, a conservative choice for long samples) or its
  whole group is dropped (`on_stale`); both are counted, with the tokens wasted.
- **Weight update** between steps: `weight_sync_s` seconds (default 0: the trainer's time is
  the same for every row, and a rollout-only comparison should not hide a difference behind it).
- **Synchronous rows** launch `quota` new groups per step and wait for every sample (verl's default
  step). The metric, for every row: tokens of returned groups / simulated wall time, over all steps;
  tokens still in flight after the last step are reported (`unreturned_tokens`), not counted.
- **Predictions** are the simulator's synthetic ones (rollout_len.sched.simulator): the prompt's
  mean length and the true remaining length, each times exp(sigma N(0, 1)), behind the same trust
  gate; `LengthPrior` (the survival baseline) stands in for a source that has not earned trust.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from rollout_len.sample import Sample, SampleStatus, SamplingParams
from rollout_len.sched.bucket_manager import BucketManager, Tagged
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.driver import drive
from rollout_len.sched.policies import POLICIES, make_policy
from rollout_len.sched.predictions import LengthPrior, PredictionQuality
from rollout_len.sched.simulator import SimCluster, SimWorker

__all__ = [
    "ON_STALE",
    "PARTIAL_ROWS",
    "PartialConfig",
    "PartialResult",
    "PartialRun",
    "StepRecord",
    "bound_staleness",
    "quota_met",
    "simulate_partial",
]

ON_STALE = ("restart", "drop")
# row -> (policy, partial step?): verl's default synchronous step, the prediction-free shared pool
# (synchronous), APRIL-style over-provisioning without prediction, and the length-aware partial policy.
PARTIAL_ROWS: dict[str, tuple[str, bool]] = {
    "fcfs_sync": ("fcfs", False),
    "pool_sync": ("pool", False),
    "april": ("april", True),
    "length_aware_partial": ("length_aware_partial", True),
}


@dataclass(frozen=True)
class PartialConfig:
    quota: int  # complete groups per step: verl's data.train_batch_size, in prompts
    over_sample_rate: float = 0.5  # verl's: stop when (1 - rate) of the groups in flight are complete
    max_staleness: int = 2  # steps a token may age before it is trained (verl: staleness threshold)
    on_stale: str = "restart"  # a carried sample past the bound: "restart" it or "drop" its group
    weight_sync_s: float = 0.0  # between steps

    def __post_init__(self) -> None:
        def is_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_number(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        if not is_int(self.quota) or self.quota < 1:
            raise ValueError(f"quota (complete groups per step) must be an int >= 1, got {self.quota!r}")
        if not (is_number(self.over_sample_rate) and 0.0 <= self.over_sample_rate < 1.0):
            raise ValueError(f"over_sample_rate must be in [0, 1) (verl's meaning), got {self.over_sample_rate!r}")
        if not is_int(self.max_staleness) or self.max_staleness < 0:
            raise ValueError(f"max_staleness must be an int >= 0, got {self.max_staleness!r}")
        if self.on_stale not in ON_STALE:
            raise ValueError(f"on_stale must be one of {list(ON_STALE)}, got {self.on_stale!r}")
        if not (is_number(self.weight_sync_s) and self.weight_sync_s >= 0):
            raise ValueError(f"weight_sync_s must be finite and >= 0, got {self.weight_sync_s!r}")

    @property
    def in_flight(self) -> int:
        """Groups a partial step holds in flight: quota / (1 - over_sample_rate), rounded up."""
        return math.ceil(self.quota / (1.0 - self.over_sample_rate) - 1e-9)


@dataclass
class PartialRun:
    """The state a run of partial steps keeps between steps: what the last step carried over and the
    policy version of the next step (the number of partial steps before it: verl's `global_steps`
    when one weight update follows each step). The live Coordinator (`run_partial_step`) and
    `simulate_partial` both step one; several runs can share one Coordinator."""

    config: PartialConfig
    carried: list[Tagged] = field(default_factory=list)
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.config, PartialConfig):
            raise TypeError(f"PartialRun takes a PartialConfig, got {type(self.config).__name__}")

    def bounded(self) -> tuple[list[Tagged], StaleCount]:
        """The carried samples after the staleness bound of the next step, and what it discarded."""
        c = self.config
        return bound_staleness(self.carried, self.version, c.max_staleness, c.on_stale)

    def groups_to_launch(self) -> int:
        """New groups the next step should get: `config.in_flight` less the groups carried into it
        (after its staleness bound; 0 when those fill it)."""
        return max(0, self.config.in_flight - len({t.group for t in self.bounded()[0]}))


def quota_met(quota: int) -> Callable[[BucketManager], bool]:
    """The stop condition of a partial step, for `drive(..., until=...)`."""
    return lambda m: len(m.complete_groups) >= quota


@dataclass
class StaleCount:
    restarted: int = 0  # samples restarted from the prompt
    dropped_groups: int = 0
    wasted_tokens: int = 0  # tokens discarded by either


def bound_staleness(
    carried: list[Tagged], version: int, max_staleness: int, on_stale: str
) -> tuple[list[Tagged], StaleCount]:
    """Apply the staleness bound to samples carried into the step that decodes with `version`: a
    sample whose oldest token would be trained more than `max_staleness` steps after it was made
    (version - min_version > max_staleness) is restarted (tokens dropped, WAITING, no RNG state)
    or, with on_stale="drop", its whole group is dropped (a group returns whole or not at all).
    Returns the samples kept, in order, and what was discarded."""
    if on_stale not in ON_STALE:
        raise ValueError(f"on_stale must be one of {list(ON_STALE)}, got {on_stale!r}")
    count = StaleCount()
    stale = [t for t in carried if t.min_version is not None and version - t.min_version > max_staleness]
    if on_stale == "drop":
        dropped = {t.group for t in stale}
        count.dropped_groups = len(dropped)
        count.wasted_tokens = sum(t.sample.num_output for t in carried if t.group in dropped)
        return [t for t in carried if t.group not in dropped], count
    kept = []
    for t in carried:
        if t in stale:
            count.restarted += 1
            count.wasted_tokens += t.sample.num_output
            sample = t.sample.copy()
            sample.output_ids, sample.logprobs, sample.rng_state = [], [], None
            sample.status = SampleStatus.WAITING
            t = Tagged(sample)
        kept.append(t)
    return kept, count


@dataclass
class StepRecord:
    step: int
    time_s: float  # rollout (to the stop and its chunk boundaries) + weight update
    groups: int  # complete groups returned
    trained_tokens: int  # their tokens
    decoded_tokens: int  # every token decoded in the step (returned or not)
    carried_samples: int  # unfinished or waiting for their group, into the next step
    launched_groups: int  # new prompts
    restarted: int
    dropped_groups: int
    wasted_tokens: int  # discarded by the staleness bound at the step's start


@dataclass
class PartialResult:
    row: str
    policy: str
    partial: bool
    steps: list[StepRecord] = field(default_factory=list)
    staleness: Counter = field(default_factory=Counter)  # staleness (steps) -> trained tokens
    unreturned_tokens: int = 0  # in flight after the last step
    policy_s: float = 0.0  # time spent deciding

    @property
    def wall_s(self) -> float:
        return sum(s.time_s for s in self.steps)

    @property
    def trained_tokens(self) -> int:
        return sum(s.trained_tokens for s in self.steps)

    @property
    def trained_tokens_per_s(self) -> float:
        return self.trained_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def groups_per_s(self) -> float:
        return sum(s.groups for s in self.steps) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def fresh_token_share(self) -> float:
        """Share of trained tokens at staleness <= 1 step (nan when nothing was trained)."""
        total = sum(self.staleness.values())
        return (self.staleness[0] + self.staleness[1]) / total if total else float("nan")

    def to_dict(self) -> dict:
        decoded = sum(s.decoded_tokens for s in self.steps)
        return {
            "policy": self.policy,
            "mode": "partial" if self.partial else "sync",
            "trained_tokens_per_s": self.trained_tokens_per_s,
            "groups_per_s": self.groups_per_s,
            "fresh_token_share": self.fresh_token_share,
            "wall_s": self.wall_s,
            "trained_tokens": self.trained_tokens,
            "decoded_tokens": decoded,
            "unreturned_tokens": self.unreturned_tokens,
            "wasted_tokens": sum(s.wasted_tokens for s in self.steps),
            "restarted": sum(s.restarted for s in self.steps),
            "dropped_groups": sum(s.dropped_groups for s in self.steps),
            "staleness_tokens": {str(k): v for k, v in sorted(self.staleness.items())},
            "step_time_s": [s.time_s for s in self.steps],
            "steps": [vars(s) for s in self.steps],
            "policy_s": self.policy_s,
        }


def simulate_partial(
    row: str,
    prompts: Iterator[list[int]],
    steps: int,
    config: PartialConfig,
    num_workers: int,
    slots: int,
    cost: CostModel,
    max_new_tokens: int,
    prompt_tokens: int = 128,
    every: int = 16,
    sigma: float = 0.5,
    quality: PredictionQuality | None = None,
    prior: LengthPrior | None = None,
    seed: int = 0,
) -> PartialResult:
    """`steps` rollout steps of one PARTIAL_ROWS row on simulated workers. `prompts` yields each new
    prompt's response lengths (a group; capped at max_new_tokens), consumed as the row launches
    prompts, so rows fed the same sequence see the same prompts in the same order. quality, prior:
    the predictor-quality window and survival prior, carried across steps (fresh when None)."""
    if row not in PARTIAL_ROWS:
        raise ValueError(f"unknown row {row!r}; valid: {list(PARTIAL_ROWS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    policy, partial = PARTIAL_ROWS[row]
    quality, prior = quality or PredictionQuality(), prior or LengthPrior()
    result = PartialResult(row, policy, partial)
    run = PartialRun(config)
    true: dict[str, int] = {}
    means: dict[str, float] = {}
    predicts = POLICIES[policy].uses_predictions
    for v in range(steps):
        carried, stale = run.bounded()
        launch = run.groups_to_launch() if partial else config.quota
        fresh = _new_prompts(prompts, launch, v, max_new_tokens, prompt_tokens, seed, true, means)
        manager = BucketManager(
            make_policy(policy), num_workers, slots, cost, quality=quality, prior=prior, seed=seed + v, version=v
        )
        manager.submit([t.sample for t in carried] + fresh, {t.sample.sample_id: t.versions for t in carried})
        workers = [SimWorker(w, cost, true, means, sigma, seed + v, predicts) for w in range(num_workers)]
        until = quota_met(config.quota) if partial else None
        timeline = drive(manager, SimCluster(workers), every, until)
        end = manager.end_step(config.quota if partial else None)
        run.carried, run.version = end.carried, v + 1
        trained = 0
        for group in end.groups.values():
            for t in group:
                trained += t.sample.num_output
                for u, n in t.versions:
                    result.staleness[v - u] += n
        result.steps.append(
            StepRecord(
                v,
                timeline.end_s + config.weight_sync_s,
                len(end.groups),
                trained,
                manager.decode_tokens,
                len(end.carried),
                launch,
                stale.restarted,
                stale.dropped_groups,
                stale.wasted_tokens,
            )
        )
        result.policy_s += manager.policy_s
    result.unreturned_tokens = sum(t.sample.num_output for t in run.carried)
    return result


def _new_prompts(
    prompts: Iterator[list[int]],
    count: int,
    version: int,
    cap: int,
    prompt_tokens: int,
    seed: int,
    true: dict[str, int],
    means: dict[str, float],
) -> list[Sample]:
    """`count` new groups from the stream, ids unique across steps; records their true lengths and
    each group's mean (what the simulated prompt-level predictor is noisy around)."""
    samples = []
    for p in range(count):
        lengths = [min(int(x), cap) for x in next(prompts)]
        gid = f"v{version}p{p}"
        means[gid] = float(np.mean(lengths))
        for j, length in enumerate(lengths):
            sid = f"{gid}-{j}"
            true[sid] = length
            samples.append(Sample(sid, [0] * prompt_tokens, SamplingParams(max_new_tokens=cap), seed, group_id=gid))
    return samples
