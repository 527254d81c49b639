"""Transactional steps: whatever phase of a step fails, in-process or on Ray, the Coordinator comes
back ready for the next step and the next weight update, and the next step's tokens are exactly
those of a Coordinator that never failed."""

import sys
from collections import Counter

import pytest
import torch

from rollout_len.model import load_policy
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig, StepFailed
from rollout_len.rollout.worker import RolloutWorker
from rollout_len.sample import Sample, SamplingParams, expand_prompts
from rollout_len.sched.messages import Progress
from rollout_len.sched.policies import LengthAware, register_policy
from rollout_len.sched.view import Migration

PROMPTS = [[5 + i, 6, 7, 8 + i, 9] for i in range(4)]
PARAMS = SamplingParams(max_new_tokens=12, ignore_stop=True)


class FaultyWorker(RolloutWorker):
    """A RolloutWorker that raises once, in one phase, on the `nth` call of that phase on worker `worker`."""

    phase: str | None = None
    nth = 1
    worker = 0

    def __init__(self, *args, **kwargs):
        self._calls: Counter = Counter()
        super().__init__(*args, **kwargs)

    def arm(self, phase: str | None, nth: int = 1, worker: int = 0) -> None:
        """Fail once in `phase`, on its `nth` call from now, on worker `worker`."""
        self.phase, self.nth, self.worker = phase, nth, worker
        self._calls.clear()

    def _fire(self, phase: str) -> None:
        if self.worker_id == self.worker and phase == self.phase:
            self._calls[phase] += 1
            if self._calls[phase] == self.nth:
                raise RuntimeError(f"injected fault in {phase}")

    def reset(self) -> None:
        super().reset()
        engine = self.engine
        add, step, export = engine.add, engine.step, engine.export

        def faulty_add(sample):
            self._fire("import" if sample.num_output else "admit")
            return add(sample)

        def faulty_step():
            self._fire("decode" if engine.running() else "prefill")
            return step()

        def faulty_export(sample_id):
            self._fire("export")
            return export(sample_id)

        engine.add, engine.step, engine.export = faulty_add, faulty_step, faulty_export

    def _score(self, score, report):
        self._fire("score")
        return super()._score(score, report)

    def run(self, orders):
        report = super().run(orders)
        if self.worker_id == 0 and self.phase == "report":
            self._calls["report"] += 1
            if self._calls["report"] == self.nth:  # a report the scheduler cannot apply
                report.progress["no-such-sample"] = Progress([1], [0.0])
        return report


@register_policy("test_move_one")
class MoveOne(LengthAware):
    """Moves running samples from worker 0 to worker 1 (one per report): exercises export/import."""

    def migrate(self, m, w, now):
        self._moved = getattr(self, "_moved", set())
        workers = m.alive_workers()
        if len(workers) < 2 or workers[0].worker_id != 0:
            return []
        src, dst = workers[0], workers[1]
        for sid in sorted(src.running):
            t = m.samples[sid]
            if (
                sid not in self._moved
                and t.migrating_to is None
                and t.sample.num_output > 2
                and dst.committed < dst.slots
            ):
                self._moved.add(sid)
                return [Migration(sid, 0, dst.worker_id)]
        return []


# phase -> (policy that reaches it, nth call that fails)
PHASES = {
    "admit": ("fcfs", 2),
    "score": ("length_aware", 1),
    "prefill": ("fcfs", 1),
    "decode": ("fcfs", 3),
    "export": ("test_move_one", 1),
    "import": ("test_move_one", 1),
    "report": ("fcfs", 2),
}


def config(use_ray: bool) -> RolloutConfig:
    return RolloutConfig(num_workers=2, slots_per_worker=3, every=2, use_ray=use_ray)


@pytest.fixture(scope="module")
def reference():
    """Tokens of the check step on a Coordinator that never failed."""
    coord = Coordinator("tiny-llama", config(False))
    return [s.output_ids for s in coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=7), "fcfs").samples]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault class travels to the actors
    started = not ray.is_initialized()
    if started:
        # Logical CPUs: the shared Coordinator's 2 actors plus a test's own must all be placeable.
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def coordinators(ray_session):
    """One Coordinator of FaultyWorkers per cluster kind, shared by the phases (each test re-arms it)."""
    made = {}

    def get(use_ray: bool) -> Coordinator:
        if use_ray not in made:
            made[use_ray] = Coordinator("tiny-llama", config(use_ray), worker_cls=FaultyWorker)
        return made[use_ray]

    yield get
    for coord in made.values():
        coord.shutdown()


def arm(coord: Coordinator, phase: str | None, nth: int = 1) -> None:
    worker = 1 if phase == "import" else 0  # MoveOne moves samples from worker 0 to worker 1
    if coord.config.use_ray:
        import ray

        ray.get([a.arm.remote(phase, nth, worker) for a in coord.workers])
    else:
        for w in coord.workers:
            w.arm(phase, nth, worker)


def check_ready(coord: Coordinator, reference) -> None:
    """The next weight update and the next step work, and the step's tokens are the reference's."""
    coord.update_weights(load_policy("tiny-llama").model.state_dict())
    again = coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=7), "fcfs")
    assert [s.output_ids for s in again.samples] == reference


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("use_ray", [False, True], ids=["in-process", "ray"])
def test_a_failed_step_leaves_the_coordinator_ready(phase, use_ray, reference, coordinators):
    coord = coordinators(use_ray)
    policy, nth = PHASES[phase]
    arm(coord, phase, nth)
    steps = coord.steps
    with pytest.raises(StepFailed, match=f"injected fault in {phase}" if phase != "report" else "no-such-sample"):
        # 4 samples on 2 x 3 slots: spread 2 + 2, so worker 1 has a free slot for MoveOne's moves
        coord.run_step(expand_prompts(PROMPTS[:2], 2, PARAMS, seed=1), policy)
    assert coord.steps == steps and len(coord.workers) == 2
    arm(coord, None)
    check_ready(coord, reference)


def test_a_failed_refit_leaves_the_coordinator_ready(reference, monkeypatch):
    coord = Coordinator("tiny-llama", config(False))
    monkeypatch.setattr(coord, "_refit", lambda manager: (_ for _ in ()).throw(RuntimeError("refit broke")))
    with pytest.raises(StepFailed, match="re-fit failed: refit broke"):
        coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=1), "length_aware")
    monkeypatch.undo()
    check_ready(coord, reference)


def test_the_issue_inputs_are_refused_up_front_and_leave_it_ready(reference):
    """An over-long prompt and an out-of-vocabulary id are refused before any worker starts, naming
    the sample's index; the Coordinator then runs the next step and the next weight update."""
    coord = Coordinator("tiny-llama", RolloutConfig(num_workers=1, slots_per_worker=4, every=2, use_ray=False))
    context = coord.limits["context_length"]
    params = SamplingParams(max_new_tokens=4, ignore_stop=True)
    too_long = [Sample("ok", [5, 6, 7], params), Sample("long", [9] * context, params)]
    with pytest.raises(ValueError, match=r"sample 1 \('long'\).*context of"):
        coord.run_step(too_long, "fcfs")
    vocab = coord.limits["vocab_size"]
    oov = [Sample("a", [5, 6, 7], params), Sample("b", [8, vocab + 3], params)]
    with pytest.raises(ValueError, match=rf"sample 1 \('b'\).*\[{vocab + 3}\] outside the vocabulary"):
        coord.run_step(oov, "fcfs")
    good = coord.run_step([Sample("a", [5, 6, 7], params), Sample("b", [8, 9], params)], "fcfs")
    assert [s.num_output for s in good.samples] == [4, 4]
    coord.update_weights(load_policy("tiny-llama").model.state_dict())


def test_worker_errors_name_the_sample_and_its_index():
    coord = Coordinator("tiny-llama", config(False))
    coord.workers[0].engine.add = lambda sample: (_ for _ in ()).throw(ValueError(f"sample {sample.sample_id!r}: bad"))
    rows = [Sample(f"row{i}", p, PARAMS, seed=1) for i, p in enumerate(PROMPTS)]
    with pytest.raises(StepFailed, match=r"'row0' \(sample 0\): bad"):
        coord.run_step(rows, "fcfs")


def test_fault_classes_fire_once():
    """The injector itself: the phase fires on its nth call only (so the next step is clean)."""
    worker = FaultyWorker(worker_id=0, model="tiny-llama", slots=2, every=2)
    worker.arm("decode", 3)
    worker.engine.add(Sample("s", [5, 6, 7], PARAMS))
    worker.engine.step()  # prefill
    worker.engine.step()  # decode 1
    worker.engine.step()  # decode 2
    with pytest.raises(RuntimeError, match="injected fault in decode"):
        worker.engine.step()
    worker.reset()
    worker.engine.add(Sample("s", [5, 6, 7], PARAMS))
    for _ in range(4):
        worker.engine.step()
    assert torch.is_tensor(worker.logits([5, 6]))


def test_an_interrupted_step_is_cleaned_up_too(reference):
    """KeyboardInterrupt is not wrapped, but the workers are reset before it propagates."""
    coord = Coordinator("tiny-llama", config(False))

    def interrupt(c, worker_id, report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=1), "fcfs", on_report=interrupt)
    check_ready(coord, reference)


def test_a_refused_update_reaches_no_worker(ray_session):
    """Two phases: every worker checks, then every worker copies, so a refusal changes no worker."""
    coord = Coordinator("tiny-llama", config(True))
    try:
        prompt = [5, 6, 7]
        before = coord.worker_logits(prompt)
        bad = {k: v + 0.1 for k, v in load_policy("tiny-llama").model.state_dict().items()}
        bad[next(iter(bad))] = bad[next(iter(bad))].flatten()  # one mis-shaped tensor
        with pytest.raises(ValueError, match="wrong shape"):
            coord.update_weights(bad)
        nan = {k: torch.full_like(v, float("nan")) for k, v in list(bad.items())[1:2]}
        with pytest.raises(ValueError, match="non-finite"):
            coord.update_weights(nan, partial=True)
        for got, old in zip(coord.worker_logits(prompt), before):
            assert torch.equal(got, old)
    finally:
        coord.shutdown()


def test_a_failed_first_refit_does_not_break_the_next_one(monkeypatch):
    import rollout_len.rollout.coordinator as coordinator

    coord = Coordinator("tiny-llama", config(False))
    real = coordinator.OnlineTrainer
    monkeypatch.setattr(coordinator, "OnlineTrainer", lambda *a, **k: (_ for _ in ()).throw(MemoryError("no room")))
    with pytest.raises(StepFailed, match="re-fit failed"):
        coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=1), "length_aware")
    monkeypatch.setattr(coordinator, "OnlineTrainer", real)
    coord.run_step(expand_prompts(PROMPTS, 2, PARAMS, seed=2), "length_aware")
    assert coord.head is not None and coord.trainer is not None
