import torch
from helpers import hf_greedy, make_samples, mixed_prompts, tiny

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.kv_cache import SlotKVCache


def test_capacity_growth_and_slot_moves_keep_generation_exact():
    # A 4-position initial capacity forces several doublings; finishing samples at different times
    # forces slot compaction (the last slot moves into each hole).
    policy = tiny("llama")
    prompts = mixed_prompts(5, seed=11)
    lengths = [9, 30, 4, 17, 25]
    samples = [
        make_samples([p], prefix=f"s{i}-", temperature=0.0, max_new_tokens=n, ignore_stop=True)[0]
        for i, (p, n) in enumerate(zip(prompts, lengths))
    ]
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=3, initial_kv_capacity=4))
    engine.run(samples)
    assert engine.cache.capacity >= max(len(p) + n for p, n in zip(prompts, lengths))
    for sample, prompt, n in zip(samples, prompts, lengths):
        assert sample.output_ids == hf_greedy(policy, prompt, n)


def test_grow_and_move_slot_preserve_contents():
    cache = SlotKVCache(num_layers=1, num_slots=3, max_length=64, initial_capacity=4)
    layer = cache.layers[0]
    with torch.inference_mode():
        keys = torch.randn(3, 2, 4, 5)
        cache.plan_prefill(0, 4)
        layer.update(keys, keys + 1)
    cache.ensure_capacity(9)
    assert cache.capacity == 16 and layer.keys.shape == (3, 2, 16, 5)
    torch.testing.assert_close(layer.keys[:, :, :4], keys)
    cache.move_slot(2, 0, 4)
    torch.testing.assert_close(layer.keys[0, :, :4], keys[2])
    torch.testing.assert_close(layer.values[0, :, :4], keys[2] + 1)


def test_cache_refuses_more_than_max_length():
    cache = SlotKVCache(num_layers=1, num_slots=1, max_length=8)
    try:
        cache.ensure_capacity(9)
    except ValueError as err:
        assert "max_length 8" in str(err)
    else:
        raise AssertionError("no error for a sequence longer than max_length")
