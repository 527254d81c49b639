"""The three ForeLen-lite scenarios: prompts, sampling and budgets.

`rl` is the one-to-many RL case on the workload the GRPO demo trains on: the synthetic arithmetic
task (`rollout_len.tasks`, task `arith`) at temperature 0.7 with 256 new tokens, n = 8. Its
lengths are long-tailed and end on their own (docs/results/workload.md: 3-4% capped, p90 / median
2.5-3.1). GSM8K with step-by-step working, the first choice, ran 40% of its samples into a 512-token
cap at temperature 1.0 (the small model rambles), which leaves little to predict and flatters any
predictor clamped to the budget.

A quick build (`forelen build --quick`) asks for short answers under a 128-token budget: GSM8K
problems with QUICK_GSM8K_INSTRUCTION instead of step-by-step working, and longseq prompts with the
short requested lengths only; `rl` keeps its task (most answers are already short). Full-length
answers would hit so small a budget nearly every time (a constant length leaves nothing to
predict); these mostly end on their own, at lengths that vary.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from rollout_len.data import GSM8K_INSTRUCTION, gsm8k_prompts

__all__ = ["Scenario", "SCENARIOS", "QUICK_GSM8K_INSTRUCTION", "longseq_prompts", "scenario_prompts"]

QUICK_GSM8K_INSTRUCTION = "Answer in one or two short sentences, ending with the number after '####'."


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int  # samples per prompt
    temperature: float
    max_new_tokens: int
    num_prompts: int  # default count for a full build
    quick_prompts: int
    quick_max_new_tokens: int
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # SamplingParams.repetition_penalty; 1 is off


SCENARIOS = {
    # Open-ended writing with diverse requested lengths: heavy-tailed outputs. Plain sampling at T 0.8 ran
    # 38% of probes into the cap in repetition loops; a repetition penalty of 1.1 alone turned the long
    # ones into drifting garbage (21% capped); with top-p 0.9 as well, 12.5% (48 probes).
    "longseq": Scenario(
        "longseq",
        n=1,
        temperature=0.8,
        max_new_tokens=1024,
        num_prompts=400,
        quick_prompts=32,
        quick_max_new_tokens=128,
        top_p=0.9,
        repetition_penalty=1.1,
    ),
    # GSM8K chain of thought, one sample per prompt.
    "reasoning": Scenario(
        "reasoning",
        n=1,
        temperature=0.8,
        max_new_tokens=512,
        num_prompts=400,
        quick_prompts=32,
        quick_max_new_tokens=128,
    ),
    # The one-to-many RL case: the demo's arithmetic task, n=8 at temperature 0.7 (module docstring).
    "rl": Scenario(
        "rl", n=8, temperature=0.7, max_new_tokens=256, num_prompts=180, quick_prompts=8, quick_max_new_tokens=128
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
_SHORT_LENGTHS = ["in one sentence", "in two sentences", "in about 50 words", "briefly"]  # quick builds


def longseq_prompts(count: int, seed: int = 0, short: bool = False) -> list[str]:
    """Writing prompts (form × topic × requested length), shuffled deterministically; `short`: only
    the short requested lengths (quick builds)."""
    combos = list(itertools.product(_FORMS, _TOPICS, _SHORT_LENGTHS if short else _LENGTHS))
    random.Random(seed).shuffle(combos)
    if count > len(combos):
        raise ValueError(f"longseq has {len(combos)} distinct prompts, {count} requested")
    return [f"Write a {form} about {topic}, {length}." for form, topic, length in combos[:count]]


def scenario_prompts(name: str, count: int, seed: int = 0, quick: bool = False) -> list[str]:
    """`count` prompts of a scenario, shuffled by `seed`; `quick`: the short-answer variants (module
    docstring). An unknown scenario is a ValueError."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {sorted(SCENARIOS)}")
    if name == "longseq":
        return longseq_prompts(count, seed, short=quick)
    if name == "rl":
        from rollout_len.tasks import task_prompts

        return [p.prompt for p in task_prompts("arith", count, seed)]
    rows = gsm8k_prompts(instruction=QUICK_GSM8K_INSTRUCTION if quick else GSM8K_INSTRUCTION)
    random.Random(seed).shuffle(rows)
    return [r["prompt"] for r in rows[:count]]
