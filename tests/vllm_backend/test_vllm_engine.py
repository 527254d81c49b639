"""The vLLM backend against the HF engine and a full forward of the same model (runs in .venv-vllm:
`make test` calls it there; elsewhere these tests are skipped)."""

import pytest
import torch

pytest.importorskip("vllm")

from rollout_len.data import encode_prompt, gsm8k_prompts  # noqa: E402
from rollout_len.engine import DecodeEngine, EngineConfig  # noqa: E402
from rollout_len.model import load_policy  # noqa: E402
from rollout_len.sample import Sample, SampleStatus, SamplingParams  # noqa: E402
from rollout_len.vllm_engine import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.embedded
MODEL = "smollm2-135m"
CONTEXT = 1024  # of the model's 8,192: a smaller KV cache, same weights


@pytest.fixture(scope="module")
def policy():
    return load_policy(MODEL)


@pytest.fixture(scope="module")
def prompts(policy):
    return [encode_prompt(policy.tokenizer, p["prompt"]) for p in gsm8k_prompts(limit=4)]


def make_engine(policy, tap_layer=-1, **kwargs) -> VLLMEngine:
    config = EngineConfig(max_batch_size=8, tap_layer=tap_layer, tap_entropy=True, tap_prefill=False)
    return VLLMEngine(
        MODEL,
        config,
        stop_ids=policy.stop_ids,
        context_length=CONTEXT,
        vocab_size=policy.model.get_output_embeddings().weight.shape[0],
        enforce_eager=True,
        threads=2,
        **kwargs,
    )


@pytest.fixture(scope="module")
def engine(policy):
    # One vLLM engine per process: vLLM's in-process engine sets process-wide state (its distributed group).
    return make_engine(policy, tap_layer=10)


def run(engine, samples):
    """Step until done; per sample, the (hidden, entropy) taps of its decode rows in order."""
    taps: dict[str, list] = {}
    for s in samples:
        engine.add(s)
    while engine.has_unfinished():
        out = engine.step()
        assert len(out.sample_ids) == len(out.tokens) == len(out.logprobs)
        for row, sid in enumerate(out.sample_ids[: out.num_decode_rows]):
            taps.setdefault(sid, []).append((out.hidden[row], out.entropy[row]))
    return taps


def fresh(prompts, params, tag):
    return [Sample(f"{tag}{i}", p, params, seed=0) for i, p in enumerate(prompts)]


def test_greedy_equals_hf_engine(policy, prompts, engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    ours, theirs = fresh(prompts, params, "g"), fresh(prompts, params, "g")
    run(engine, ours)
    hf = DecodeEngine(policy, EngineConfig(max_batch_size=8))
    hf.run(theirs)
    for a, b in zip(ours, theirs):
        assert a.output_ids == b.output_ids
        assert a.status == b.status
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_taps_and_logprobs_equal_a_full_forward(policy, prompts, engine):
    """Layer 10 (a hook on vLLM's decoder layer: hidden + residual) and the entropy of each decode
    step; sampled log-probs at T = 0.7 under the temperature-scaled distribution, as DecodeEngine's."""
    params = SamplingParams(temperature=0.7, max_new_tokens=20, repetition_penalty=1.1, top_p=0.9)
    samples = fresh(prompts[:2], params, "t")
    taps = run(engine, samples)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.output_ids])
        with torch.no_grad():
            out = policy.model(ids, output_hidden_states=True)
        n = len(s.prompt_ids)
        logits = out.logits[0, n - 1 : -1].float()  # the distribution of each output token
        want = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(s.output_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-4, rtol=0)
        # Decode rows: output token j >= 1 came from the position of output token j - 1.
        hidden = out.hidden_states[10][0, n:-1].float()
        entropy = -(torch.log_softmax(logits[1:], -1).exp() * torch.log_softmax(logits[1:], -1)).sum(-1)
        got_h = torch.stack([h for h, _ in taps[s.sample_id]])
        got_e = torch.stack([e for _, e in taps[s.sample_id]])
        assert got_h.shape == hidden.shape
        torch.testing.assert_close(got_h, hidden, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(got_e, entropy, atol=1e-3, rtol=0)


def test_exported_sample_continues_greedy_tokens(policy, prompts, engine):
    """Export mid-way (abort), import (re-prefill prompt + tokens so far): the greedy continuation is
    the uninterrupted one. Across workers: tests/vllm_backend/test_vllm_rollout.py."""
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    (whole,) = fresh(prompts[:1], params, "w")
    run(engine, [whole])
    (moved,) = fresh(prompts[:1], params, "m")
    engine.add(moved)
    for _ in range(10):
        engine.step()
    sample = engine.export("m0")
    assert sample.status == SampleStatus.MIGRATING and 0 < sample.num_output < 30 and not engine.has_unfinished()
    run(engine, [sample])
    assert sample.output_ids == whole.output_ids
    assert sample.status == whole.status


def test_stop_ids_and_lengths(policy, prompts, engine):
    """A stop token ends a sample (FINISHED_STOPPED, the stop token kept); ignore_stop runs to the budget."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    (probe,) = fresh(prompts[:1], greedy, "p")
    run(engine, [probe])
    stop = probe.output_ids[5]
    first = probe.output_ids.index(stop)
    (stopped,) = fresh(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=(stop,)), "s")
    (ignored,) = fresh(
        prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=(stop,), ignore_stop=True), "i"
    )
    run(engine, [stopped, ignored])
    assert stopped.output_ids == probe.output_ids[: first + 1] and stopped.status == SampleStatus.FINISHED_STOPPED
    assert ignored.output_ids == probe.output_ids and ignored.status == SampleStatus.FINISHED_LENGTH


@pytest.mark.parametrize(
    "case, message",
    [
        ("vocab", "outside the vocabulary"),
        ("context", "do not fit the model's context"),
        ("duplicate", "already in this engine"),
        ("finished", "already finished"),
        ("budget", "already has max_new_tokens"),
    ],
)
def test_bad_input_same_errors_as_hf_engine(policy, prompts, engine, case, message):
    hf = DecodeEngine(policy, EngineConfig(max_batch_size=8))
    hf.cache  # noqa: B018
    for eng in (engine, hf):
        context = CONTEXT if eng is engine else policy.context_length
        params = SamplingParams(max_new_tokens=4)
        sample = {
            "vocab": Sample("bad", [1, 10**7], params),
            "context": Sample("bad", [1] * context, params),
            "duplicate": Sample("bad", prompts[0], params),
            "finished": Sample("bad", prompts[0], params, status=SampleStatus.FINISHED_STOPPED),
            "budget": Sample("bad", prompts[0], params, output_ids=[1] * 4, logprobs=[0.0] * 4),
        }[case]
        if case == "duplicate":
            eng.add(Sample("bad", prompts[0], params))
        with pytest.raises(ValueError, match=message):
            eng.add(sample)
        if case == "duplicate":
            eng.abort("bad")
        assert not eng.has_unfinished()


def test_settings_it_cannot_honour_are_refused(policy):
    with pytest.raises(ValueError, match="static batching"):
        VLLMEngine(MODEL, EngineConfig(static_batching=True), stop_ids=[0], context_length=CONTEXT, vocab_size=49152)
    with pytest.raises(ValueError, match="kv_token_budget"):
        VLLMEngine(MODEL, EngineConfig(kv_token_budget=64), stop_ids=[0], context_length=CONTEXT, vocab_size=49152)
    with pytest.raises(ValueError, match="in-memory test model"):
        VLLMEngine("tiny-llama", EngineConfig(), stop_ids=[0], context_length=CONTEXT, vocab_size=259)
