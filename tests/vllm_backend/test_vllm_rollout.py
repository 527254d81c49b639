"""The vLLM backend in the live rollout: real Ray actors, the scheduler's policies unchanged, samples
moved between two vLLM workers, weight updates (runs in .venv-vllm; skipped elsewhere)."""

import pytest
import torch

pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

from rollout_len.data import encode_prompt, gsm8k_prompts  # noqa: E402
from rollout_len.engine import DecodeEngine, EngineConfig  # noqa: E402
from rollout_len.model import load_policy  # noqa: E402
from rollout_len.predictor.features import prompt_features  # noqa: E402
from rollout_len.rollout.coordinator import Coordinator, RolloutConfig  # noqa: E402
from rollout_len.rollout.worker import RolloutWorker  # noqa: E402
from rollout_len.sample import Sample, SampleStatus, SamplingParams  # noqa: E402
from rollout_len.sched.messages import Admission, Orders  # noqa: E402

pytestmark = pytest.mark.embedded
MODEL = "smollm2-135m"
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=40)


@pytest.fixture(scope="module")
def policy():
    return load_policy(MODEL)


@pytest.fixture(scope="module")
def prompts(policy):
    return [encode_prompt(policy.tokenizer, p["prompt"]) for p in gsm8k_prompts(limit=6)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def hf_greedy(policy, prompts, params=GREEDY):
    samples = [Sample(f"h{i}", p, params) for i, p in enumerate(prompts)]
    return DecodeEngine(policy, EngineConfig(max_batch_size=8)).run(samples)


def test_sample_moved_between_two_vllm_workers_continues(policy, prompts, cluster):
    """Worker 0 decodes 6 steps and exports the sample (abort); worker 1 imports it with its PLP state
    (re-prefill of prompt + tokens so far) and finishes it: the greedy tokens are the uninterrupted ones."""
    remote = ray.remote(RolloutWorker).options(num_cpus=1)
    a, b = (remote.remote(w, MODEL, slots=4, engine="vllm", eager=True) for w in (0, 1))
    (feature,) = prompt_features(policy, [prompts[0]], layers=(-1,), methods=("egtp",)).values()
    sample = Sample("m", prompts[0], GREEDY)
    report = ray.get(a.run.remote(Orders(admit=[Admission(sample, feature[0])], max_steps=6)))
    moved = ray.get(a.run.remote(Orders(export=["m"], max_steps=0)))
    tokens = report.progress["m"].new_tokens + moved.progress["m"].new_tokens
    assert 0 < len(tokens) < GREEDY.max_new_tokens and moved.exported["m"] is not None
    carried = Sample("m", prompts[0], GREEDY, output_ids=list(tokens), logprobs=[0.0] * len(tokens))
    orders = Orders(admit=[Admission(carried, feature[0], plp_state=moved.exported["m"])], max_steps=100)
    done = ray.get(b.run.remote(orders))
    assert done.finished["m"].is_finished
    (whole,) = hf_greedy(policy, prompts[:1])
    assert tokens + done.progress["m"].new_tokens == whole.output_ids
    for actor in (a, b):
        ray.kill(actor)


@pytest.mark.parametrize("name", ["fcfs", "pool", "length_aware"])
def test_policies_run_unchanged_on_the_vllm_backend(policy, prompts, cluster, coordinator, name):
    """Same policy objects, vLLM workers: every sample ends with the HF engine's greedy tokens,
    wherever the scheduler placed or moved it."""
    samples = [Sample(f"{name}{i}", p, GREEDY, group_id=str(i // 2)) for i, p in enumerate(prompts)]
    result = coordinator.run_step(samples, name)
    want = hf_greedy(policy, prompts)
    for got, ref in zip(samples, want):
        assert got.output_ids == ref.output_ids
        assert got.status == ref.status and got.status in (SampleStatus.FINISHED_STOPPED, SampleStatus.FINISHED_LENGTH)
    assert result.metrics["decode_tokens"] == sum(s.num_output for s in samples)


def test_engines_alone_give_the_same_greedy_lengths(policy, prompts, coordinator):
    """run_alone (the benchmark baseline: vLLM's own requests, no taps or scheduler) decodes the same
    samples; the caller's samples stay untouched."""
    samples = [Sample(f"a{i}", p, GREEDY) for i, p in enumerate(prompts)]
    lengths, seconds = coordinator.run_alone(samples)
    assert seconds > 0 and all(s.num_output == 0 for s in samples)
    assert [lengths[s.sample_id] for s in samples] == [len(w.output_ids) for w in hf_greedy(policy, prompts)]


@pytest.fixture(scope="module")
def coordinator(cluster):
    config = RolloutConfig(num_workers=2, slots_per_worker=4, engine="vllm", engine_eager=True, every=8)
    coord = Coordinator(MODEL, config)
    yield coord
    coord.shutdown()


def test_weight_update_reaches_vllm(policy, prompts, coordinator):
    """Weights go in by their Hugging Face names (q/k/v stacked as vLLM keeps them): after a partial
    update the vLLM workers decode what the HF engine decodes with the same weights."""
    state = {
        name: (tensor * 1.5).contiguous()
        for name, tensor in policy.model.state_dict().items()
        if ".layers.3.self_attn." in name or ".layers.5.mlp." in name
    }
    assert any("q_proj" in k for k in state) and any("gate_proj" in k for k in state)
    coordinator.update_weights(state, partial=True)
    changed = load_policy(MODEL)
    changed.model.load_state_dict(state, strict=False)
    samples = [Sample(f"w{i}", p, GREEDY) for i, p in enumerate(prompts[:4])]
    coordinator.run_step(samples, "fcfs")
    want = hf_greedy(changed, prompts[:4])
    assert [s.output_ids for s in samples] == [w.output_ids for w in want]
    assert [s.output_ids for s in samples] != [w.output_ids for w in hf_greedy(policy, prompts[:4])]
    with pytest.raises(ValueError, match="static batches"):  # refused before any worker starts
        coordinator.run_step([Sample("s", prompts[0], GREEDY)], "static_padded")
    assert torch.equal(changed.model.lm_head.weight, policy.model.lm_head.weight)  # untouched by the update
