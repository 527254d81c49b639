"""The three ForeLen-lite scenarios: prompts, sampling and budgets."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from rollout_len.data import gsm8k_prompts

__all__ = ["Scenario", "SCENARIOS", "longseq_prompts"]


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int  # samples per prompt
    temperature: float
    max_new_tokens: int
    num_prompts: int  # default count for a full build
    quick_prompts: int
    quick_max_new_tokens: int


SCENARIOS = {
    # Open-ended writing with diverse requested lengths: heavy-tailed outputs.
    "longseq": Scenario(
        "longseq", n=1, temperature=0.8, max_new_tokens=1024, num_prompts=240, quick_prompts=32, quick_max_new_tokens=48
    ),
    # GSM8K chain of thought, one sample per prompt.
    "reasoning": Scenario(
        "reasoning",
        n=1,
        temperature=0.8,
        max_new_tokens=512,
        num_prompts=320,
        quick_prompts=32,
        quick_max_new_tokens=48,
    ),
    # The one-to-many RL case: GSM8K, n=8 at temperature 1.0.
    "rl": Scenario(
        "rl", n=8, temperature=1.0, max_new_tokens=512, num_prompts=64, quick_prompts=8, quick_max_new_tokens=48
    ),
}

_FORMS = [
    "story",
    "poem",
    "essay",
    "letter",
    "product description",
    "dialogue",
    "news report",
    "recipe",
    "speech",
    "review",
    "blog post",
    "list of tips",
]
_TOPICS = [
    "the sea",
    "a lost key",
    "city gardens",
    "learning to cook",
    "a rainy Monday",
    "space travel",
    "an old library",
    "friendship",
    "mountain hiking",
    "a small bakery",
    "the first snow",
    "robots at home",
    "a train journey",
    "saving money",
    "a chess match",
    "night markets",
    "a broken phone",
    "bees",
    "a school play",
    "moving house",
]
_LENGTHS = [
    "in one sentence",
    "in two sentences",
    "in about 50 words",
    "in about 100 words",
    "in about 200 words",
    "in about 400 words",
    "in at least 600 words, in detail",
    "briefly",
]


def longseq_prompts(count: int, seed: int = 0) -> list[str]:
    """Writing prompts (form × topic × requested length), shuffled deterministically."""
    combos = list(itertools.product(_FORMS, _TOPICS, _LENGTHS))
    random.Random(seed).shuffle(combos)
    if count > len(combos):
        raise ValueError(f"longseq has {len(combos)} distinct prompts, {count} requested")
    return [f"Write a {form} about {topic}, {length}." for form, topic, length in combos[:count]]


def scenario_prompts(name: str, count: int, seed: int = 0) -> list[str]:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {sorted(SCENARIOS)}")
    if name == "longseq":
        return longseq_prompts(count, seed)
    rows = gsm8k_prompts()
    random.Random(seed).shuffle(rows)
    return [r["prompt"] for r in rows[:count]]
