"""PiA-style prediction (Perception in Advance, Zheng et al. 2023): ask the policy itself how long its
answer will be, and parse the number it states.

Each prompt gets INSTRUCTION appended (to the last message of a chat prompt), and the policy answers
greedily in at most 16 tokens; the first number in the answer is the stated length in words. The
published method instruction-tunes the model to do this; here the policy is used as it is, so a small
model may answer badly, and the result is reported as measured. A stated number becomes tokens by
one scale chosen on val between 4/3 tokens per word and the train samples' median ratio of true
length to stated number; a prompt whose answer holds no positive number gets the train median.
`selected` records the fraction of test prompts whose answer held a number, and the fraction of those
numbers that also occur in the prompt (a number copied from the question rather than a length).
"""

from __future__ import annotations

import re

import torch

from rollout_len.baselines.base import TEST, TRAIN, VAL, Baseline, ForeLenData, prompt_text
from rollout_len.data import encode_prompt
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.sample import Sample, SamplingParams

__all__ = ["PiA", "INSTRUCTION", "parse_stated_length", "ask_for_length"]

INSTRUCTION = "Before answering, estimate how many words your answer will have. Reply with the number only."
TOKENS_PER_WORD = 4 / 3
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def parse_stated_length(answer: str) -> float | None:
    """The first number in an answer ("About 1,200 words." -> 1200.0), or None if there is none."""
    match = _NUMBER.search(answer)
    return float(match.group().replace(",", "")) if match else None


def _numbers(text: str) -> set[float]:
    return {float(m.replace(",", "")) for m in _NUMBER.findall(text)}


def _with_instruction(prompt: str | list[dict]) -> str | list[dict]:
    if isinstance(prompt, str):
        return f"{prompt}\n\n{INSTRUCTION}"
    last = prompt[-1]
    return [*prompt[:-1], {**last, "content": f"{last['content']}\n\n{INSTRUCTION}"}]


def ask_for_length(policy, prompts: list, max_new_tokens: int = 16, max_batch_size: int = 64) -> list[str]:
    """The policy's greedy answer to each prompt followed by INSTRUCTION."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    samples = [
        Sample(f"pia{i}", encode_prompt(policy.tokenizer, _with_instruction(p)), params) for i, p in enumerate(prompts)
    ]
    DecodeEngine(policy, EngineConfig(max_batch_size=max_batch_size)).run(samples)
    return [policy.tokenizer.decode(s.output_ids, skip_special_tokens=True) for s in samples]


class PiA(Baseline):
    name = "pia"

    def fit(self, data: ForeLenData) -> None:
        self.answers = ask_for_length(data.policy, data.prompts)
        stated = [parse_stated_length(a) for a in self.answers]
        self.stated = torch.tensor([s if s is not None and s > 0 else float("nan") for s in stated])
        train = data.samples(TRAIN)
        self.fallback = float(data.lengths[train].median())
        self.budget = data.budget
        ratios = data.lengths[train] / self.stated[data.sample_prompt[train]]
        scales = {"4/3 tokens per word": TOKENS_PER_WORD}
        if not ratios.isnan().all():
            scales["train median ratio"] = float(ratios.nanmedian())
        val = data.samples(VAL)
        errors = {
            label: float((self._lengths(data, VAL, scale) - data.lengths[val]).abs().mean())
            for label, scale in scales.items()
        }
        chosen = min(errors, key=errors.get)
        self.scale = scales[chosen]
        test_prompts = torch.unique(data.sample_prompt[data.samples(TEST)]).tolist()
        parsed = [p for p in test_prompts if not self.stated[p].isnan()]
        copied = [p for p in parsed if float(self.stated[p]) in _numbers(prompt_text(data.prompts[p]))]
        self.selected = {
            "scale": chosen,
            "tokens_per_stated": round(self.scale, 3),
            "parsed_fraction_test": len(parsed) / len(test_prompts),
            "copied_from_prompt_fraction": len(copied) / len(parsed) if parsed else float("nan"),
        }

    def _lengths(self, data: ForeLenData, split: int, scale: float) -> torch.Tensor:
        stated = self.stated[data.sample_prompt[data.samples(split)]]
        return torch.where(stated.isnan(), torch.tensor(self.fallback), (scale * stated).clamp(1, self.budget))

    def predict(self, data: ForeLenData, split: int) -> torch.Tensor:
        return self._lengths(data, split, self.scale)
