"""Sampling numerics: tiny temperatures are greedy with finite log-probs; non-finite logits name the sample."""

import math

import pytest
import torch
from helpers import make_samples, mixed_prompts, tiny

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import tiny_policy
from rollout_len.sample import Sample, SampleStatus, SamplingParams
from rollout_len.sampling import GREEDY_TEMPERATURE, sample_next

# Down to the smallest float: 1e-39 is subnormal in float32, 5e-324 is the smallest double (0 in float32).
TEMPERATURES = [1.0, 0.5, 1e-2, 1e-4, 1e-5, 1e-6, 1e-10, 1e-30, 1e-38, 1e-39, 5e-324, 0.0]


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_the_threshold_is_documented_and_inclusive_above():
    assert GREEDY_TEMPERATURE == 1e-5
    assert sum(t < GREEDY_TEMPERATURE for t in TEMPERATURES) == 7  # 1e-5 itself samples


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sample_next_sweep_gives_vocabulary_tokens_and_finite_logprobs(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 259, generator=g) * 4  # (B, V)
    logits[0, 3] = 60.0  # a clear argmax far from the last id (the old tiny-T bug picked V - 1)
    logits[1] = torch.linspace(-1e30, 1e30, 259).flip(0)  # huge but finite: x / T must not overflow
    logits[2, :] = 0.0  # a flat row: every token ties
    n = logits.shape[0]
    tokens, logp = sample_next(logits, [temperature] * n, [1.0] * n, [0] * n, _gens(n))
    assert ((0 <= tokens) & (tokens < logits.shape[1])).all()
    assert torch.isfinite(logp).all(), logp
    if temperature < GREEDY_TEMPERATURE:
        assert tokens.tolist() == logits.argmax(-1).tolist()
        # greedy rows follow temperature 0's convention: the log-prob of the untempered distribution
        torch.testing.assert_close(logp, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])
    elif temperature <= 1e-4:
        # far below the logit gaps of these rows: the draw is the argmax wherever one is clear
        assert tokens[[0, 1]].tolist() == [3, 0]


def test_issue_input_tiny_subnormal_temperature_is_greedy_with_a_finite_logprob():
    logits = torch.tensor([[0.5, 2.0, -1.0, 0.1]])
    tokens, logp = sample_next(logits, [1e-39], [1.0], [0], _gens(1))
    assert tokens.item() == 1  # was 3 (the last id) with a NaN log-prob
    assert logp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())


def test_a_draw_that_rounds_up_to_the_total_mass_stays_in_the_filtered_support(monkeypatch):
    # u = rand * total can round to the total in float32; the token must still carry mass (here: be in the
    # top-2), not the clamped last vocabulary id with -inf filtered log-prob.
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.ones(1))
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    tokens, logp = sample_next(logits, [1.0], [1.0], [2], _gens(1))
    assert tokens.item() == 1
    assert math.isfinite(logp.item())


def test_non_finite_logits_name_the_rows_or_samples():
    logits = torch.zeros(3, 5)
    logits[1, 2] = float("nan")
    logits[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of 3 rows: \[1, 2\]"):
        sample_next(logits, [1.0] * 3, [1.0] * 3, [0] * 3, _gens(3))
    with pytest.raises(ValueError, match=r"2 of 3 samples: \['b', 'c'\]"):
        sample_next(logits, [0.0] * 3, [1.0] * 3, [0] * 3, _gens(3), sample_ids=["a", "b", "c"])


def _min_top2_gap(policy, samples) -> float:
    """The smallest gap between the two largest logits at every position a sample's tokens came from."""
    gaps = []
    with torch.inference_mode():
        for s in samples:
            ids = torch.tensor([s.prompt_ids + s.output_ids[:-1]])
            logits = policy.model(ids).logits[0, len(s.prompt_ids) - 1 :].float()  # (T_out, V)
            top = logits.topk(2, dim=-1).values
            gaps.append(float((top[:, 0] - top[:, 1]).min()))
    return min(gaps)


def test_engine_sweep_over_temperatures_down_to_the_smallest_float():
    policy = tiny("llama")
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    prompts = mixed_prompts(3, seed=5)
    greedy = make_samples(prompts, temperature=0.0, max_new_tokens=8, ignore_stop=True)
    DecodeEngine(policy, EngineConfig(max_batch_size=3)).run(greedy)
    # At T = 1e-5 a gap of 1e-3 already scales the runner-up to exp(-100): the draw is the argmax.
    assert _min_top2_gap(policy, greedy) > 1e-3
    for temperature in TEMPERATURES:
        samples = make_samples(prompts, seed=1, temperature=temperature, max_new_tokens=8, ignore_stop=True)
        DecodeEngine(policy, EngineConfig(max_batch_size=3)).run(samples)
        for got, ref in zip(samples, greedy):
            assert all(0 <= t < vocab for t in got.output_ids), temperature
            assert all(math.isfinite(lp) for lp in got.logprobs), (temperature, got.logprobs)
            if temperature <= GREEDY_TEMPERATURE:
                assert got.output_ids == ref.output_ids, temperature
            if temperature < GREEDY_TEMPERATURE:
                assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-5), temperature


def test_nan_weights_raise_naming_the_samples():
    policy = tiny_policy("llama")  # a private copy: its weights are broken below
    with torch.no_grad():
        policy.model.get_output_embeddings().weight[7] = float("nan")  # logit 7 is NaN for every row
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=4))
    samples = make_samples(mixed_prompts(2), prefix="nan-", max_new_tokens=4)
    for s in samples:
        engine.add(s)
    with pytest.raises(ValueError, match=r"non-finite logits .*2 of 2 samples: \['nan-0', 'nan-1'\]"):
        engine.step()
    # nothing was sampled: the samples wait again, untouched, and can be aborted
    assert engine.num_waiting == 2 and all(s.status == SampleStatus.WAITING and not s.output_ids for s in samples)
    assert engine.abort("nan-0").status == SampleStatus.FINISHED_ABORTED


def test_a_nan_row_in_decode_names_its_sample_and_the_engine_carries_on(monkeypatch):
    policy = tiny("llama")
    prompts = mixed_prompts(3, seed=4)
    params = dict(temperature=1.0, max_new_tokens=10, ignore_stop=True)
    reference = make_samples(prompts, seed=2, **params)
    DecodeEngine(policy, EngineConfig(max_batch_size=3)).run(reference)

    samples = make_samples(prompts, seed=2, **params)
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=3))
    for s in samples:
        engine.add(s)
    for _ in range(4):
        engine.step()
    real = engine._logits

    def poisoned(hidden):  # decode rows are slots 0..R-1, in engine order
        out = real(hidden).clone()
        slot = [r.sample.sample_id for r in engine._running].index("s1")
        out[slot] = float("nan")
        return out

    monkeypatch.setattr(engine, "_logits", poisoned)
    with pytest.raises(ValueError, match=r"1 of 3 samples: \['s1'\]"):
        engine.step()
    monkeypatch.setattr(engine, "_logits", real)
    assert [s.num_output for s in samples] == [4, 4, 4]  # the failed step gave nobody a token
    engine.abort("s1")
    while engine.has_unfinished():
        engine.step()
    assert samples[0].output_ids == reference[0].output_ids
    assert samples[2].output_ids == reference[2].output_ids
    assert samples[1].output_ids == reference[1].output_ids[:4]
    assert all(math.isfinite(lp) for s in samples for lp in s.logprobs)


def test_a_nan_row_in_prefill_sends_the_samples_back_to_waiting(monkeypatch):
    policy = tiny("llama")
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=2))
    samples = [Sample(f"p{i}", p, SamplingParams(max_new_tokens=3), seed=0) for i, p in enumerate(mixed_prompts(2))]
    for s in samples:
        engine.add(s)
    real = engine._logits

    def poisoned(hidden):  # prefill rows are the admitted samples, in order: p1 is row 1
        out = real(hidden).clone()
        out[1] = float("nan")
        return out

    monkeypatch.setattr(engine, "_logits", poisoned)
    with pytest.raises(ValueError, match=r"\['p1'\]"):
        engine.step()
    monkeypatch.setattr(engine, "_logits", real)
    assert engine.num_waiting == 2 and engine.num_running == 0
    engine.abort("p1")
    while engine.has_unfinished():
        engine.step()
    assert samples[0].status.is_finished and samples[0].num_output == 3
    assert samples[1].status == SampleStatus.FINISHED_ABORTED and not samples[1].output_ids
