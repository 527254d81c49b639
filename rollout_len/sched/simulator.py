"""Discrete-event simulator: the same manager, policies and step loop as the live rollout, with
workers whose time comes from a CostModel and whose lengths come from a trace.

    groups, cap = load_trace("docs/results/traces/forelen-rl.json")   # groups of response lengths
    result = simulate("length_aware", groups, num_workers=64, slots=16, cost=CostModel.from_yaml(...))

Predictions inside the simulator are synthetic and say so: `lognormal` multiplies the true
remaining length by exp(sigma * N(0, 1)) (prompt-level: the group's mean length); `oracle` gives
the truth; `noise` ignores it. The live rollout uses the real PLP head instead.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rollout_len.sample import Sample, SampleStatus, SamplingParams
from rollout_len.sched.bucket_manager import BucketManager
from rollout_len.sched.costmodel import CostModel
from rollout_len.sched.driver import WorkerDied, drive
from rollout_len.sched.messages import Orders, Progress, Report
from rollout_len.sched.policies import make_policy
from rollout_len.sched.predictions import LengthPrior, PredictionQuality
from rollout_len.sched.timeline import Timeline

__all__ = ["load_trace", "SimWorker", "SimCluster", "SimResult", "simulate", "floor_s"]


def load_trace(path: str | Path) -> tuple[list[list[int]], int | None]:
    """(groups of response lengths, max_new_tokens or None) from JSON {"groups": [[len, ...], ...],
    "max_new_tokens": ...} or JSONL with one {"lengths": [...]} per line. Negative, missing or
    non-integer lengths are errors."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"trace {path} is a directory; give a trace file (.json or .jsonl)")
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    text = path.read_text()
    max_new_tokens = None
    try:
        if path.suffix == ".jsonl":
            groups = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        groups.append(json.loads(line)["lengths"])
                    except (json.JSONDecodeError, KeyError, TypeError) as err:
                        raise ValueError(f"line {number}: {err!r}") from err
        else:
            data = json.loads(text)
            groups, max_new_tokens = data["groups"], data.get("max_new_tokens")
            if not isinstance(groups, list):
                raise TypeError(f"'groups' must be a list of lists, got {type(groups).__name__}")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f'{path}: not a length trace ({err}); expected {{"groups": [[...], ...]}} or JSONL of {{"lengths": [...]}}'
        ) from err
    if max_new_tokens is not None and (
        not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1
    ):
        raise ValueError(f"{path}: max_new_tokens must be an int >= 1 (or absent), got {max_new_tokens!r}")
    if not groups:
        raise ValueError(f"{path}: the trace has no groups")
    for i, g in enumerate(groups):
        if not isinstance(g, list) or not g:
            raise ValueError(f"{path}: group {i} has no lengths")
        bad = [x for x in g if not isinstance(x, int) or isinstance(x, bool) or x < 1]
        if bad:
            raise ValueError(f"{path}: group {i} has invalid lengths {bad[:5]} (each must be an integer >= 1)")
    return groups, max_new_tokens


def floor_s(lengths: list[int], num_workers: int, slots: int, cost: CostModel, prompt_tokens: int) -> float:
    """The physical floor of a synchronous step, in seconds, from the cost model: the larger of
    the longest sample alone (its prefill, then every token at batch 1) and all the work at full
    throughput (every token at full batch, prompts prefilled `slots` at a time, spread evenly).
    A token attends to its context whatever the batch, so the context term is the same sum in both."""

    def context(length: int) -> float:  # sum over t < length of (prompt + t) tokens attended
        return length * prompt_tokens + length * (length - 1) / 2

    longest = max(lengths)
    alone = cost.prefill_time(prompt_tokens) + longest * cost.step_time(1) + cost.per_context_token_s * context(longest)
    decode = sum(lengths) * cost.step_time(slots) / slots + cost.per_context_token_s * sum(map(context, lengths))
    prefill = len(lengths) / slots * cost.prefill_time(slots * prompt_tokens)
    return max(alone, (decode + prefill) / num_workers)


class SimWorker:
    """A worker that spends cost-model time instead of running a model."""

    def __init__(
        self,
        worker_id: int,
        cost: CostModel,
        true_lengths: dict[str, int],
        group_means: dict[str, float],
        sigma: float = 0.5,
        seed: int = 0,
        predicts: bool = True,
    ):
        self.predicts = predicts  # PLP runs (a length-blind policy does not pay for it)
        self.worker_id, self.cost, self.true, self.group_means, self.sigma = (
            worker_id,
            cost,
            true_lengths,
            group_means,
            sigma,
        )
        self.rng = np.random.default_rng(seed + 7919 * worker_id)
        self.running: dict[str, Sample] = {}
        self.padding: set[str] = set()  # static batches: finished rows still computed
        self.reported: dict[str, int] = {}  # sample -> output tokens already reported

    def _noisy(self, value: float) -> float:
        return float(value * np.exp(self.sigma * self.rng.standard_normal()))

    def run(self, orders: Orders) -> tuple[Report, float]:
        report = Report(self.worker_id)
        duration = 0.0
        for sid in orders.export:
            sample = self.running.pop(sid)
            self._report_progress(sample, report)
            report.exported[sid] = None
        # Prompts scored, then samples admitted, each as one batched prefill (as the engine runs them).
        if orders.score:
            duration += self.cost.prefill_time(sum(len(score.prompt_ids) for score in orders.score))
        for score in orders.score:
            report.scores[score.key] = (None, self._noisy(self.group_means[score.group_id]))
        if orders.admit:
            duration += self.cost.prefill_time(sum(adm.sample.num_tokens for adm in orders.admit))
        for adm in orders.admit:
            sample = adm.sample
            self.running[sample.sample_id] = sample
            self.reported[sample.sample_id] = sample.num_output
        steps = 0
        while steps < orders.max_steps and self.running:
            live = [s for sid, s in self.running.items() if sid not in self.padding]
            left = min(self.true[s.sample_id] - s.num_output for s in live)
            n = max(1, min(orders.max_steps - steps, left))
            batch = len(self.running)
            ctx0 = sum(s.num_tokens for s in self.running.values())
            duration += n * self.cost.step_time(batch, 0) + self.cost.per_context_token_s * (
                n * ctx0 + len(live) * n * (n - 1) / 2
            )
            report.batch_sizes += [batch] * n
            report.decode_tokens += n * len(live)
            report.padded_tokens += n * len(self.padding)
            steps += n
            freed = False
            for s in live:
                s.output_ids.extend([0] * n)
                s.logprobs.extend([0.0] * n)
                if s.num_output >= self.true[s.sample_id]:
                    s.status = (
                        SampleStatus.FINISHED_LENGTH
                        if s.num_output >= s.params.max_new_tokens
                        else SampleStatus.FINISHED_STOPPED
                    )
                    if orders.static_batches:
                        self.padding.add(s.sample_id)
                    else:
                        self._finished(self.running.pop(s.sample_id), report)
                        freed = True
            if orders.static_batches and self.padding and len(self.padding) == len(self.running):
                for sample in self.running.values():
                    self._finished(sample, report)
                self.running.clear()
                self.padding.clear()
                freed = True
            if freed and orders.return_on_free_slot:
                break
        for sid, s in self.running.items():
            if sid not in self.padding:
                predicted = self._noisy(self.true[sid] - s.num_output) if self.predicts else None
                self._report_progress(s, report, predicted=predicted)
        report.steps, report.busy_s = steps, duration
        return report, duration

    def _report_progress(self, sample: Sample, report: Report, predicted: float | None = None) -> None:
        start = self.reported.pop(sample.sample_id, sample.num_output)
        report.progress[sample.sample_id] = Progress(
            sample.output_ids[start:], sample.logprobs[start:], None, predicted_remaining=predicted
        )
        self.reported[sample.sample_id] = sample.num_output

    def _finished(self, sample: Sample, report: Report) -> None:
        self._report_progress(sample, report)
        del self.reported[sample.sample_id]
        report.finished[sample.sample_id] = sample.status


class SimCluster:
    """Simulated time: a chunk submitted at `now` completes at now + its cost-model duration."""

    def __init__(self, workers: list[SimWorker], deaths: dict[int, float] | None = None):
        self.workers = workers
        self.deaths = dict(deaths or {})  # worker id -> time it dies
        self._now = 0.0
        self._events: list = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def submit(self, worker_id: int, orders: Orders) -> None:
        report, duration = self.workers[worker_id].run(orders)
        end = self._now + duration
        death = self.deaths.get(worker_id)
        result = report if death is None or end < death else WorkerDied(f"worker {worker_id} died at {death:.1f} s")
        if isinstance(result, WorkerDied):
            end = max(death, self._now)
        heapq.heappush(self._events, (end, self._seq, worker_id, result, self._now))
        self._seq += 1

    def wait_any(self):
        end, _, worker_id, result, sent = heapq.heappop(self._events)
        self._now = end
        return worker_id, result, sent, end


@dataclass
class SimResult:
    policy: str
    step_time_s: float
    padded_fraction: float
    migrations: int
    idle_fraction: float
    timeline: Timeline
    policy_s: float


def simulate(
    policy: str,
    groups: list[list[int]],
    num_workers: int,
    slots: int,
    cost: CostModel,
    max_new_tokens: int | None = None,
    prompt_tokens: int = 128,
    every: int = 16,
    predictions: str = "model",
    sigma: float = 0.5,
    quality: PredictionQuality | None = None,
    prior: LengthPrior | None = None,
    deaths: dict[int, float] | None = None,
    seed: int = 0,
    oracle_lengths: str = "exact",
) -> SimResult:
    """One GRPO step of len(groups) prompts x len(group) samples on simulated workers.

    quality, prior: the predictor-quality window and the survival prior, carried across steps
    (fresh ones when None).
    oracle_lengths: what the `oracle` source knows: "exact" (each sample's true length, the bound
    on any predictor) or "prompt" (its prompt's mean length, the bound on predicting from the
    prompt alone)."""
    if oracle_lengths not in ("exact", "prompt"):
        raise ValueError(f"oracle_lengths must be 'exact' or 'prompt', got {oracle_lengths!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not groups or any(not g for g in groups):
        raise ValueError("simulate needs at least one group, each with at least one length")
    bad = [x for g in groups for x in g if not isinstance(x, int) or isinstance(x, bool) or x < 1]
    if bad:
        raise ValueError(f"simulate: response lengths must be ints >= 1, got {bad[:5]}")
    unknown = sorted(set(deaths or {}) - set(range(num_workers)))
    if unknown:
        raise ValueError(f"simulate: deaths name workers {unknown}, but the workers are 0..{num_workers - 1}")
    cap = max_new_tokens or max(max(g) for g in groups)
    samples, true, means = [], {}, {}
    for p, group in enumerate(groups):
        gid = f"g{p}"
        means[gid] = float(np.mean(group))
        for j, length in enumerate(group):
            sid = f"g{p}-{j}"
            true[sid] = min(length, cap)
            samples.append(
                Sample(sid, [0] * prompt_tokens, SamplingParams(max_new_tokens=cap), seed=seed, group_id=gid)
            )
    known = true if oracle_lengths == "exact" else {sid: round(means[sid.rsplit("-", 1)[0]]) for sid in true}
    manager = BucketManager(
        make_policy(policy),
        num_workers,
        slots,
        cost,
        quality=quality,
        prior=prior,
        predictions=predictions,
        true_lengths=known,
        seed=seed,
    )
    manager.submit(samples)
    predicts = manager.policy.uses_predictions and manager.predictions != "oracle"
    workers = [SimWorker(w, cost, true, means, sigma, seed, predicts) for w in range(num_workers)]
    timeline = drive(manager, SimCluster(workers, deaths), every)
    return SimResult(
        policy,
        timeline.end_s,
        manager.padded_fraction(),
        manager.migrations,
        timeline.idle_fraction(),
        timeline,
        manager.policy_s,
    )
