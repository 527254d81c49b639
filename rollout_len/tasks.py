"""Named prompt sets with checkable answers: the tasks the benchmarks, the GRPO demo and ForeLen-lite's
`rl` scenario sample from.

    prompts = task_prompts("arith", count=16, seed=0)   # [TaskPrompt(prompt, answer), ...]
    TASKS["arith"][1]                                    # one line for --help

`gsm8k*`: the first GSM8K test problems with an instruction; `arith*`: synthetic arithmetic of four
difficulties (numbers drawn from the seed). The workload study that chose `arith` for the demo is
docs/results/workload.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from rollout_len.data import gsm8k_prompts

__all__ = ["TASKS", "TaskPrompt", "task_prompts"]

SHORT_INSTRUCTION = "Answer with the final number only."
STEP_INSTRUCTION = "Think step by step, then give the final answer after '####'."
EXPLAIN_INSTRUCTION = "Explain your steps briefly, then give the answer."


@dataclass(frozen=True)
class TaskPrompt:
    prompt: str  # the user message
    answer: str | None  # the exact answer as a number in text; None when the task has none to check


def _gsm8k(count: int, seed: int, instructions: tuple[str, ...]) -> list[TaskPrompt]:
    """The first `count` GSM8K test problems; prompt i carries instructions[i % len(instructions)]."""
    rows = gsm8k_prompts(limit=count)
    return [
        TaskPrompt(
            f"{row['question']}\n{instructions[i % len(instructions)]}",
            row["answer"].split("####")[-1].strip().replace(",", ""),
        )
        for i, row in enumerate(rows)
    ]


_NAMES = ("Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Zoe", "Ben")
_ITEMS = ("apples", "books", "coins", "stickers", "marbles", "pencils", "cards", "shells")


def _arith_problem(rng: random.Random, level: int) -> tuple[str, int]:
    """One arithmetic question of difficulty `level` (0..3) and its exact answer.

    Level 0: one-digit sum; 1: two-digit sum or difference; 2: two-digit by one-digit product;
    3: a two-step word problem (buy then give away) with two-digit numbers.
    """
    if level == 0:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"What is {a} + {b}?", a + b
    if level == 1:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", a + b
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    if level == 2:
        a, b = rng.randint(11, 49), rng.randint(2, 9)
        return f"What is {a} * {b}?", a * b
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(10, 60), rng.randint(5, 40)
    c = rng.randint(2, a + b - 1)
    question = (
        f"{name} has {a} {item}. {name} buys {b} more and then gives away {c}. How many {item} does {name} have now?"
    )
    return question, a + b - c


def _arith(count: int, seed: int, instructions: tuple[str, ...]) -> list[TaskPrompt]:
    """Synthetic arithmetic, difficulty cycling 0, 1, 2, 3 over the prompts; numbers drawn from `seed`.

    Prompt i carries instructions[(i // 4) % len(instructions)] (every difficulty meets every
    instruction), or none when `instructions` is empty.
    """
    rng = random.Random(seed)
    out = []
    for i in range(count):
        question, answer = _arith_problem(rng, i % 4)
        instruction = instructions[(i // 4) % len(instructions)] if instructions else ""
        out.append(TaskPrompt(f"{question}\n{instruction}".strip(), str(answer)))
    return out


# name -> (prompts(count, seed), one line for --help)
TASKS: dict[str, tuple[Callable[[int, int], list[TaskPrompt]], str]] = {
    "gsm8k": (lambda c, s: _gsm8k(c, s, (STEP_INSTRUCTION,)), "GSM8K, think step by step (the demo's prompt)"),
    "gsm8k-short": (lambda c, s: _gsm8k(c, s, (SHORT_INSTRUCTION,)), "GSM8K, the final number only"),
    "gsm8k-mix": (
        lambda c, s: _gsm8k(c, s, (SHORT_INSTRUCTION, STEP_INSTRUCTION)),
        "GSM8K, number-only and step-by-step prompts alternating",
    ),
    "arith": (lambda c, s: _arith(c, s, ()), "synthetic arithmetic of 4 difficulties, no instruction"),
    "arith-explain": (
        lambda c, s: _arith(c, s, (EXPLAIN_INSTRUCTION,)),
        "synthetic arithmetic, explain the steps briefly",
    ),
    "arith-mix": (
        lambda c, s: _arith(c, s, (SHORT_INSTRUCTION, EXPLAIN_INSTRUCTION)),
        "synthetic arithmetic, number-only and explain-your-steps prompts",
    ),
}


def task_prompts(task: str, count: int, seed: int = 0) -> list[TaskPrompt]:
    """The first `count` prompts of a named task (TASKS). Raises ValueError naming --task or --prompts."""
    if task not in TASKS:
        raise ValueError(f"--task: unknown task {task!r}; valid: {sorted(TASKS)}")
    if count < 1:
        raise ValueError(f"--prompts must be >= 1, got {count}")
    prompts = TASKS[task][0](count, seed)
    if len(prompts) < count:
        raise ValueError(f"--prompts: task {task!r} has only {len(prompts)} prompts, asked for {count}")
    return prompts
