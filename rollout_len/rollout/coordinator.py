"""Coordinator: Ray rollout workers + the bucket manager + a policy = one GRPO/PPO rollout step.

    coord = Coordinator("smollm2-135m", RolloutConfig(num_workers=2, slots_per_worker=8))
    samples = expand_prompts(prompt_ids, n=8, params=SamplingParams(max_new_tokens=256), seed=step)
    result = coord.run_step(samples, policy="length_aware")
    result.samples       # the same samples, in the caller's order, finished
    result.groups()      # {group id: its samples} (GRPO groups)
    result.metrics       # step time, padding, migrations, idle fraction, predictor MAE, overheads
    result.timeline      # per worker chunks and migrations (plot_timelines draws it)
    coord.update_weights(model.state_dict())   # after an optimizer step
    coord.shutdown()

With `use_ray=False` the workers live in this process and run one after another (tests, debugging;
its times are not parallel). On a cluster, `ray_address` joins it; each worker takes
`threads_per_worker` CPUs or `gpus_per_worker` GPUs. The PLP head is re-fit after every step
from the finished samples (free labels) and sent to the workers with the next step's orders.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead
from rollout_len.predictor.train import OnlineTrainer
from rollout_len.rollout.worker import RolloutWorker
from rollout_len.sample import Sample
from rollout_len.sched.bucket_manager import BucketManager
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE, CostModel
from rollout_len.sched.driver import WorkerDied, drive
from rollout_len.sched.messages import Orders
from rollout_len.sched.policies import POLICIES, make_policy
from rollout_len.sched.predictions import PREDICTION_SOURCES, PredictionQuality
from rollout_len.sched.timeline import Timeline

__all__ = ["RolloutConfig", "Coordinator", "StepResult"]


@dataclass
class RolloutConfig:
    num_workers: int = 2
    slots_per_worker: int = 8  # decode slots: what KV memory allows per replica on a GPU
    every: int = 16  # k: PLP re-estimates every k decode steps (one chunk)
    use_ray: bool = True
    ray_address: str | None = None  # None: a local Ray instance
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    dtype: str = "float32"
    device: str = "cpu"
    tap_layer: int = -1  # PLP reads this hidden layer (transformers numbering; -1 = final-normed)
    predictions: str = "model"  # "model" (PLP head), "oracle" (needs true lengths), "noise" (do-no-harm check)
    cost_profile: str | None = None  # YAML (see costmodel.py); None: the measured CPU profile shipped here
    online_refit: bool = True
    refit_epochs: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_workers", "slots_per_worker", "every", "threads_per_worker", "refit_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RolloutConfig.{name} must be an int >= 1, got {value!r}")


@dataclass
class StepResult:
    samples: list[Sample]  # finished, in the order the caller gave them
    metrics: dict[str, float]
    timeline: Timeline
    policy: str
    plans: list[dict] = field(default_factory=list)  # the policy's plan comparisons, when it makes any

    def groups(self) -> dict[str, list[Sample]]:
        """Samples by group id (a sample without one is its own group), in first-appearance order."""
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            out.setdefault(s.group_id or s.sample_id, []).append(s)
        return out


class LocalCluster:
    """Workers in this process, one chunk at a time (sequential; for tests and debugging)."""

    def __init__(self, workers: list[RolloutWorker]):
        self.workers = workers
        self._queue: deque = deque()
        self._clock = time.perf_counter

    def now(self) -> float:
        return self._clock()

    def submit(self, worker_id: int, orders: Orders) -> None:
        self._queue.append((worker_id, orders, self._clock()))

    def wait_any(self):
        worker_id, orders, sent = self._queue.popleft()
        return worker_id, self.workers[worker_id].run(orders), sent, self._clock()


class RayCluster:
    """Ray actors; `wait_any` returns whichever chunk finishes first. A dead actor -> WorkerDied."""

    def __init__(self, actors: list):
        import ray

        self.ray, self.actors = ray, actors
        self._pending: dict = {}

    def now(self) -> float:
        return time.perf_counter()

    def submit(self, worker_id: int, orders: Orders) -> None:
        ref = self.actors[worker_id].run.remote(orders)
        self._pending[ref] = (worker_id, time.perf_counter())

    def wait_any(self):
        ready, _ = self.ray.wait(list(self._pending), num_returns=1)
        worker_id, sent = self._pending.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except self.ray.exceptions.RayActorError as err:
            result = WorkerDied(f"worker {worker_id}: {err}")
        return worker_id, result, sent, time.perf_counter()


class Coordinator:
    def __init__(self, model: str = "smollm2-135m", config: RolloutConfig | None = None):
        self.model, self.config = model, config or RolloutConfig()
        c = self.config
        if c.predictions not in PREDICTION_SOURCES:
            raise ValueError(
                f"RolloutConfig.predictions must be one of {list(PREDICTION_SOURCES)}, got {c.predictions!r}"
            )
        self.cost = CostModel.from_yaml(c.cost_profile or DEFAULT_COST_PROFILE)
        self.quality = PredictionQuality()
        self.head: SoftLabelHead | None = None
        self.trainer: OnlineTrainer | None = None
        self._head_state: dict | None = None
        args = dict(
            model=model,
            slots=c.slots_per_worker,
            every=c.every,
            tap_layer=c.tap_layer,
            dtype=c.dtype,
            device=c.device,
            threads=c.threads_per_worker,
        )
        if c.use_ray:
            import ray

            if not ray.is_initialized():
                ray.init(address=c.ray_address, include_dashboard=False, log_to_driver=False)
            remote = ray.remote(RolloutWorker).options(num_cpus=c.threads_per_worker, num_gpus=c.gpus_per_worker)
            self.workers = [remote.remote(worker_id=w, **args) for w in range(c.num_workers)]
            ray.get([a.ping.remote() for a in self.workers])  # model loaded everywhere before any step
        else:
            self.workers = [RolloutWorker(worker_id=w, **args) for w in range(c.num_workers)]
        self.steps = 0

    # ------------------------------------------------------------------ weights

    def update_weights(self, state: dict | str) -> None:
        """Send new policy weights (state dict or safetensors path) to every worker."""
        if self.config.use_ray:
            import ray

            ref = ray.put(state)
            ray.get([a.load_weights.remote(ref) for a in self.workers])
        else:
            for w in self.workers:
                w.load_weights(state)

    def worker_logits(self, prompt_ids: list[int]) -> list[torch.Tensor]:
        if self.config.use_ray:
            import ray

            return ray.get([a.logits.remote(prompt_ids) for a in self.workers])
        return [w.logits(prompt_ids) for w in self.workers]

    def kill_worker(self, index: int) -> None:
        """Kill one worker's actor now (fault-tolerance drills); the step in flight carries on."""
        import ray

        ray.kill(self.workers[index], no_restart=True)

    # ------------------------------------------------------------------ one step

    def run_step(
        self,
        samples: list[Sample],
        policy: str = "length_aware",
        true_lengths: dict[str, int] | None = None,
        on_report=None,
    ) -> StepResult:
        """Generate the given samples with a policy; returns them finished, in the same order.

        Each sample brings its identity (`sample_id`, unique in the step; `group_id`, its prompt's
        group) and its seed; its RNG comes from (seed, sample id), so two policies run on the same
        samples draw the same random numbers (the comparison is like for like). `true_lengths`
        (sample id -> tokens) feeds the oracle. `on_report(coordinator, worker_id, report)` is called
        after each chunk (fault drills, progress).
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid: {sorted(POLICIES)}")
        if not samples:
            raise ValueError("run_step needs at least one sample")
        bad = [type(s).__name__ for s in samples if not isinstance(s, Sample)]
        if bad:
            raise TypeError(f"run_step takes rollout_len.sample.Sample objects, got {bad[0]}")
        ids = [s.sample_id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"sample ids must be unique within a step; {dup!r} appears {ids.count(dup)} times")
        started = [s.sample_id for s in samples if s.num_output or s.status.is_finished]
        if started:
            raise ValueError(f"samples must be fresh (no output, not finished): {started[:3]}")
        work = [s.copy() for s in samples]  # the caller's objects are filled in only when the step succeeds
        seed = self.config.seed + self.steps
        manager = BucketManager(
            make_policy(policy),
            len(self.workers),
            self.config.slots_per_worker,
            self.cost,
            quality=self.quality,
            predictions=self.config.predictions,
            true_lengths=true_lengths,
            head_state=self._head_state,
            seed=seed,
        )
        manager.submit(work)
        cluster = RayCluster(self.workers) if self.config.use_ray else LocalCluster(self.workers)
        if on_report is not None:
            cluster = _Observed(cluster, on_report, self)
        start = time.perf_counter()
        timeline = drive(manager, cluster, self.config.every)
        wall = time.perf_counter() - start
        dead = {w.worker_id for w in manager.workers if not w.alive}
        if dead:
            self.workers = [a for i, a in enumerate(self.workers) if i not in dead]
        refit_s = self._refit(manager) if self.config.online_refit and manager.predictions == "model" else 0.0
        self.steps += 1
        done = {s.sample_id: s for s in manager.finished}
        for s in samples:
            f = done[s.sample_id]
            s.output_ids, s.logprobs, s.status, s.rng_state = f.output_ids, f.logprobs, f.status, None
        metrics = self._metrics(manager, timeline, wall, refit_s)
        plans = getattr(manager.policy, "plans", [])
        return StepResult(list(samples), metrics, timeline, policy, plans)

    def _refit(self, manager: BucketManager) -> float:
        start = time.perf_counter()
        if not manager.training:
            return 0.0
        z = torch.cat([x for x, _ in manager.training])
        y = torch.cat([r for _, r in manager.training])
        if self.head is None:
            budget = max(t.sample.params.max_new_tokens for t in manager.samples.values())
            self.head = SoftLabelHead(
                HeadConfig(in_dim=z.shape[1], hidden_dim=64, dropout=0.2), LengthBins.log_spaced(budget, num_bins=20)
            )
            self.head.set_standardization(z)
            self.trainer = OnlineTrainer(
                self.head, buffer_size=8192, lr=1e-3, epochs=self.config.refit_epochs, seed=self.config.seed
            )
        self.trainer.add(z, y)
        self.trainer.refit()
        self._head_state = self.head.to_state()
        return time.perf_counter() - start

    def _metrics(self, manager: BucketManager, timeline: Timeline, wall: float, refit_s: float) -> dict[str, float]:
        errors = []
        for t in manager.samples.values():  # every prediction made in the step, scored on the true length
            for done, predicted in t.history:
                errors.append(abs(predicted - (t.sample.num_output - done)))
        lengths = [s.num_output for s in manager.finished]
        busy = sum(w.busy_s for w in manager.workers)
        return {
            "step_time_s": wall,
            "decode_tokens": float(manager.decode_tokens),
            "tokens_per_s": manager.decode_tokens / max(wall, 1e-9),
            "padded_fraction": manager.padded_fraction(),
            "migrations": float(len(manager.migration_log)),
            "worker_idle_fraction": timeline.idle_fraction(),
            "predictor_mae": float(np.mean(errors)) if errors else float("nan"),
            "predictions": float(len(errors)),
            "manager_overhead_fraction": manager.policy_s / max(wall, 1e-9),
            "plp_overhead_fraction": manager.plp_s / max(busy, 1e-9),
            "refit_s": refit_s,
            "response_length_mean": float(np.mean(lengths)),
            "response_length_max": float(np.max(lengths)),
            "response_length_min": float(np.min(lengths)),
            "dead_workers": float(len(timeline.deaths)),
        }

    def shutdown(self) -> None:
        if self.config.use_ray:
            import ray

            for a in self.workers:
                ray.kill(a)
        self.workers = []


class _Observed:
    """A cluster wrapper that calls on_report(coordinator, worker_id, result) after each chunk."""

    def __init__(self, inner, on_report, coordinator):
        self.inner, self.on_report, self.coordinator = inner, on_report, coordinator

    def now(self) -> float:
        return self.inner.now()

    def submit(self, worker_id: int, orders: Orders) -> None:
        self.inner.submit(worker_id, orders)

    def wait_any(self):
        out = self.inner.wait_any()
        self.on_report(self.coordinator, out[0], out[1])
        return out
