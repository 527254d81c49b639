"""Shared factories for the tests: tiny policies and samples."""

from __future__ import annotations

import functools

import torch

from rollout_len.model import Policy, load_policy, tiny_policy
from rollout_len.sample import Sample, SamplingParams

ARCHS = ("llama", "qwen2")


@functools.cache
def tiny(arch: str = "llama") -> Policy:
    return tiny_policy(arch)


@functools.cache
def embedded() -> Policy:
    return load_policy("smollm2-135m")


def mixed_prompts(count: int, vocab: int = 256, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths (3, 7, 11, ... tokens) of byte tokens."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (3 + 4 * i,), generator=g).tolist() for i in range(count)]


def make_samples(prompts: list[list[int]], prefix: str = "s", seed: int = 0, **params) -> list[Sample]:
    sampling = SamplingParams(**params)
    return [Sample(f"{prefix}{i}", list(p), sampling, seed=seed) for i, p in enumerate(prompts)]


def hf_greedy(policy: Policy, prompt: list[int], max_new_tokens: int, repetition_penalty: float = 1.0) -> list[int]:
    """Greedy continuation from transformers' own `generate`, the reference."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = policy.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=None,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            pad_token_id=0,  # no stop: compare all tokens
        )
    return out[0, len(prompt) :].tolist()
