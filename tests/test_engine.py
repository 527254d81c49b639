import pytest
import torch
from helpers import ARCHS, embedded, hf_greedy, make_samples, mixed_prompts, tiny

from rollout_len.data import encode_prompt
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.sample import Sample, SampleStatus, SamplingParams


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_matches_hf_generate(arch, batch):
    policy = tiny(arch)
    prompts = mixed_prompts(8)
    samples = make_samples(prompts, temperature=0.0, max_new_tokens=24, ignore_stop=True)
    DecodeEngine(policy, EngineConfig(max_batch_size=batch)).run(samples)
    for sample, prompt in zip(samples, prompts):
        assert sample.output_ids == hf_greedy(policy, prompt, 24)
        assert sample.status == SampleStatus.FINISHED_LENGTH


@pytest.mark.parametrize("arch", ARCHS)
def test_repetition_penalty_matches_hf_generate(arch):
    """Greedy decoding with a repetition penalty takes the tokens transformers' own penalty takes
    (prompt + generated ids penalized), and the penalty changes them."""
    policy = tiny(arch)
    prompts = mixed_prompts(4, seed=2)
    samples = make_samples(prompts, temperature=0.0, max_new_tokens=24, ignore_stop=True, repetition_penalty=1.5)
    DecodeEngine(policy, EngineConfig(max_batch_size=4)).run(samples)
    for sample, prompt in zip(samples, prompts):
        assert sample.output_ids == hf_greedy(policy, prompt, 24, repetition_penalty=1.5)
    assert any(s.output_ids != hf_greedy(policy, p, 24) for s, p in zip(samples, prompts))


@pytest.mark.embedded
def test_greedy_matches_hf_generate_embedded():
    policy = embedded()
    questions = ["What is 12*7?", "Name three colours.", "Write one sentence about the sea, please."]
    prompts = [encode_prompt(policy.tokenizer, q) for q in questions]
    samples = make_samples(prompts, temperature=0.0, max_new_tokens=16, ignore_stop=True)
    DecodeEngine(policy, EngineConfig(max_batch_size=3)).run(samples)
    for sample, prompt in zip(samples, prompts):
        assert sample.output_ids == hf_greedy(policy, prompt, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_export_import_continues_exactly(arch):
    policy = tiny(arch)
    prompts = mixed_prompts(4, seed=1)
    params = dict(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=30, ignore_stop=True)
    reference = make_samples(prompts, seed=7, **params)
    DecodeEngine(policy, EngineConfig(max_batch_size=4)).run(reference)

    moving = make_samples(prompts, seed=7, **params)
    first = DecodeEngine(policy, EngineConfig(max_batch_size=4))
    second = DecodeEngine(policy, EngineConfig(max_batch_size=2))
    for s in moving:
        first.add(s)
    for _ in range(11):
        first.step()
    exported = [first.export(s.sample_id) for s in moving[:2]]
    assert all(s.status == SampleStatus.MIGRATING and s.num_output == 11 for s in exported)
    for s in exported:
        second.add(s)
    while first.has_unfinished() or second.has_unfinished():
        if first.has_unfinished():
            first.step()
        if second.has_unfinished():
            second.step()
    for ref, got in zip(reference, moving):
        assert got.output_ids == ref.output_ids
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)


def test_sampled_tokens_do_not_depend_on_batch_mates():
    # Exact equality holds for this float32 model: a row's math does not mix with other rows, and
    # its single uniform draw per token comes from its own generator.
    policy = tiny("llama")
    prompts = mixed_prompts(6, seed=2)
    params = dict(temperature=1.0, max_new_tokens=25, ignore_stop=True)
    alone = []
    for i, prompt in enumerate(prompts):
        sample = Sample(f"s{i}", prompt, SamplingParams(**params), seed=3)
        DecodeEngine(policy, EngineConfig(max_batch_size=1)).run([sample])
        alone.append(sample.output_ids)
    together = make_samples(prompts, seed=3, **params)
    DecodeEngine(policy, EngineConfig(max_batch_size=6)).run(together)
    assert [s.output_ids for s in together] == alone
    # Different ids give different streams: the RNG really is per sample.
    assert len({tuple(s.output_ids) for s in together}) == len(together)


def test_static_mode_pads_to_the_longest_and_counts_it():
    policy = tiny("qwen2")
    prompts = mixed_prompts(4, seed=4)
    lengths = [3, 10, 5, 20]

    def build():
        return [
            Sample(f"s{i}", p, SamplingParams(max_new_tokens=n, ignore_stop=True), seed=1)
            for i, (p, n) in enumerate(zip(prompts, lengths))
        ]

    static, continuous = build(), build()
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=4, static_batching=True))
    engine.run(static)
    DecodeEngine(policy, EngineConfig(max_batch_size=4)).run(continuous)
    assert [s.num_output for s in static] == lengths
    assert [s.output_ids for s in static] == [s.output_ids for s in continuous]
    # Decode steps run max-1 times for 4 rows; useful decode tokens are sum(n - 1).
    padded = 4 * (max(lengths) - 1) - sum(n - 1 for n in lengths)
    assert engine.stats.padded_tokens == padded
    assert engine.stats.padded_fraction == pytest.approx(padded / (padded + sum(lengths)))


def test_kv_token_budget_makes_a_queue():
    policy = tiny("llama")
    prompts = [[7] * 10 for _ in range(5)]
    samples = make_samples(prompts, max_new_tokens=20, ignore_stop=True)
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=8, kv_token_budget=65))  # 30 tokens each
    for s in samples:
        engine.add(s)
    peak = 0
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, engine.num_running)
    assert peak == 2
    assert all(s.num_output == 20 for s in samples)


def test_stop_ids_end_a_sample():
    policy = tiny("llama")
    prompt = mixed_prompts(1, seed=5)[0]
    free = make_samples([prompt], temperature=0.0, max_new_tokens=12, ignore_stop=True)[0]
    DecodeEngine(policy).run([free])
    stop = free.output_ids[4]
    first = free.output_ids.index(stop)
    stopped = make_samples([prompt], temperature=0.0, max_new_tokens=12, stop_ids=(stop,))[0]
    DecodeEngine(policy).run([stopped])
    assert stopped.output_ids == free.output_ids[: first + 1]
    assert stopped.finish_reason == "stop"


@pytest.mark.parametrize("tap_layer, index", [(1, 1), (-1, 2)])
def test_taps_match_a_full_forward(tap_layer, index):
    policy = tiny("llama")
    prompts = mixed_prompts(3, seed=6)
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=3, tap_layer=tap_layer, tap_entropy=True))
    samples = make_samples(prompts, max_new_tokens=6, ignore_stop=True)
    for s in samples:
        engine.add(s)
    outputs = []
    while engine.has_unfinished():
        outputs.append(engine.step())
    prefill = {t.sample_id: t for t in outputs[0].prefills}
    for sample in samples:
        ids = torch.tensor([sample.prompt_ids + sample.output_ids])
        with torch.inference_mode():
            full = policy.model(ids, output_hidden_states=True)
        hidden = full.hidden_states[index][0]  # (T, d); index 2 = final-normed last layer
        logp = torch.log_softmax(full.logits[0].float(), -1)  # (T, V)
        entropy = -(logp.exp() * logp).sum(-1)  # (T,)
        n = len(sample.prompt_ids)
        tap = prefill[sample.sample_id]
        assert tap.num_prompt_tokens == n
        torch.testing.assert_close(tap.hidden, hidden[:n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tap.entropy, entropy[:n], atol=1e-4, rtol=1e-4)
        # The decode step that produced output token j ran at position n + j - 1.
        for j, out in enumerate(outputs[1:], start=1):
            row = out.sample_ids.index(sample.sample_id)
            torch.testing.assert_close(out.hidden[row], hidden[n + j - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.entropy[row], entropy[n + j - 1], atol=1e-4, rtol=1e-4)


def test_taps_off_return_nothing():
    engine = DecodeEngine(tiny("llama"))
    engine.add(make_samples(mixed_prompts(1), max_new_tokens=3)[0])
    out = engine.step()
    assert out.hidden is None and out.entropy is None and out.prefills == []


def test_abort_keeps_the_tokens_so_far():
    engine = DecodeEngine(tiny("llama"))
    samples = make_samples(mixed_prompts(2), max_new_tokens=20, ignore_stop=True)
    for s in samples:
        engine.add(s)
    for _ in range(5):
        engine.step()
    aborted = engine.abort("s0")
    assert aborted.status == SampleStatus.FINISHED_ABORTED and aborted.num_output == 5
    while engine.has_unfinished():
        engine.step()
    assert samples[1].num_output == 20
    with pytest.raises(KeyError, match="not in this engine"):
        engine.abort("s0")


# ---------------------------------------------------------------- bad input


def test_bad_samples_are_rejected_and_running_ones_are_unharmed():
    policy = tiny("llama")
    prompts = mixed_prompts(2, seed=8)
    reference = make_samples(prompts, seed=1, max_new_tokens=10, ignore_stop=True)
    DecodeEngine(policy).run(reference)

    engine = DecodeEngine(policy, EngineConfig(kv_token_budget=400))
    samples = make_samples(prompts, seed=1, max_new_tokens=10, ignore_stop=True)
    for s in samples:
        engine.add(s)
    engine.step()
    context = policy.context_length
    bad = {
        "do not fit the model's context": Sample("long", [5] * context, SamplingParams()),
        "outside the vocabulary": Sample("oov", [5, 10_000], SamplingParams()),
        "already in this engine": Sample("s0", [5], SamplingParams()),
        "more than kv_token_budget": Sample("big", [5] * 10, SamplingParams(max_new_tokens=500)),
    }
    for message, sample in bad.items():
        with pytest.raises(ValueError, match=message):
            engine.add(sample)
    while engine.has_unfinished():
        engine.step()
    assert [s.output_ids for s in samples] == [s.output_ids for s in reference]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="prompt is empty"):
        Sample("x", [], SamplingParams())


def test_bad_engine_config():
    with pytest.raises(ValueError, match="max_batch_size"):
        EngineConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="tap_layer"):
        DecodeEngine(tiny("llama"), EngineConfig(tap_layer=3))


def test_engines_sharing_a_model_leave_no_hooks_behind():
    policy = tiny("llama")
    layers = policy.model.get_decoder().layers
    hooks_before = [len(layer._forward_hooks) for layer in layers]  # transformers may keep its own
    prompt = mixed_prompts(1, seed=9)[0]
    taps = {}
    for layer in (1, 2):
        engine = DecodeEngine(policy, EngineConfig(tap_layer=layer, tap_entropy=True))
        engine.add(make_samples([prompt], max_new_tokens=2)[0])
        taps[layer] = engine.step().prefills[0].hidden
    assert not torch.allclose(taps[1], taps[2])
    assert [len(layer._forward_hooks) for layer in layers] == hooks_before


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefill_gives_each_sample_what_its_own_prefill_gives(arch):
    # 3 prompts x 4 samples admitted together, plus a sample that resumes with output tokens: with
    # share_prefill each distinct sequence is prefilled once, and every sample still draws its own
    # tokens from its own generator, exactly as without sharing.
    policy = tiny(arch)
    prompts = [p for p in mixed_prompts(3, seed=4) for _ in range(4)]
    params = dict(temperature=1.0, max_new_tokens=20, ignore_stop=True)

    def run(share: bool):
        samples = make_samples(prompts, seed=5, **params)
        resumed = Sample("resumed", prompts[0], SamplingParams(**params), seed=5)
        resumed.output_ids, resumed.logprobs = [3, 4], [-1.0, -1.0]
        config = EngineConfig(max_batch_size=13, share_prefill=share, tap_layer=-1, tap_entropy=True)
        engine = DecodeEngine(policy, config)
        for s in [*samples, resumed]:
            engine.add(s)
        first = engine.step()
        taps = {t.sample_id: (t.hidden, t.entropy) for t in first.prefills}
        while engine.has_unfinished():
            engine.step()
        return [*samples, resumed], taps, engine.stats.prefill_tokens

    shared, shared_taps, shared_tokens = run(True)
    alone, alone_taps, alone_tokens = run(False)
    for got, ref in zip(shared, alone):
        assert got.output_ids == ref.output_ids
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
        torch.testing.assert_close(shared_taps[got.sample_id][0], alone_taps[ref.sample_id][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared_taps[got.sample_id][1], alone_taps[ref.sample_id][1], atol=1e-5, rtol=1e-5)
    assert len({tuple(s.output_ids) for s in shared}) == len(shared)  # the samples of one prompt differ
    distinct = sum(len(p) for p in prompts[::4]) + len(prompts[0]) + 2
    assert (shared_tokens, alone_tokens) == (distinct, sum(len(p) for p in prompts) + len(prompts[0]) + 2)
