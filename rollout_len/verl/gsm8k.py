"""GSM8K as verl's RL parquet: one row per problem in the layout verl's RLHFDataset reads.

    python -m rollout_len.verl.gsm8k DIR      # writes DIR/train.parquet and DIR/test.parquet

`gsm8k_batch` builds the same records straight into a verl generation batch;
`records_batch(task_records(items, source), n)` does the same for any task's prompts (recipes/grpo_demo).

Columns, as verl's reward code expects them: `data_source` ("openai/gsm8k", which selects verl's
GSM8K checker), `prompt` (chat messages), `ability`, `reward_model` ({"style": "rule",
"ground_truth": the final number}) and `extra_info` ({"split", "index", "question", "answer"}).
The prompt is the question plus this project's instruction (`rollout_len.data.GSM8K_INSTRUCTION`),
which asks for the final answer after '####' as verl's checker requires.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from rollout_len.data import GSM8K_INSTRUCTION

__all__ = [
    "DATA_SOURCE",
    "final_answer",
    "gsm8k_records",
    "write_gsm8k_parquet",
    "gsm8k_batch",
    "task_records",
    "records_batch",
]

DATA_SOURCE = "openai/gsm8k"


def final_answer(answer: str) -> str:
    """The number after '####' in a GSM8K reference answer, without thousands separators."""
    match = re.search(r"####\s*(-?[0-9.,]+)", answer)
    if match is None:
        raise ValueError(f"GSM8K answer has no final '#### <number>': {answer[-80:]!r}")
    return match.group(1).replace(",", "")


def gsm8k_records(rows: list[dict], split: str, instruction: str = GSM8K_INSTRUCTION) -> list[dict]:
    """verl records from GSM8K rows ({"question", "answer"}, as in the dataset and `gsm8k_prompts`)."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"{row['question']}\n{instruction}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": final_answer(row["answer"])},
            "extra_info": {"split": split, "index": index, "question": row["question"], "answer": row["answer"]},
        }
        for index, row in enumerate(rows)
    ]


def write_gsm8k_parquet(rows: list[dict], path: str | Path, split: str) -> Path:
    """Write GSM8K rows as a verl RL parquet file; returns its path."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(gsm8k_records(rows, split)).to_parquet(path)
    return path


def gsm8k_batch(rows: list[dict], n: int, uid_prefix: str = ""):
    """A verl generation batch (DataProto) of GSM8K problems (rows {"question", "answer"}), as `records_batch`
    makes it; raises ValueError for an answer without a final '#### <number>' too."""
    return records_batch(gsm8k_records(rows, "test"), n, uid_prefix)


def task_records(items: list, data_source: str) -> list[dict]:
    """verl records of a task's prompts: items with `.prompt` (the user message) and `.answer` (the final
    number as text), e.g. `rollout_len.tasks.task_prompts`; `data_source` names the task."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": item.prompt}],
            "reward_model": {"style": "rule", "ground_truth": item.answer},
        }
        for item in items
    ]


def records_batch(records: list[dict], n: int, uid_prefix: str = ""):
    """A verl generation batch (DataProto) of records, each repeated n times in a row, as verl's trainer
    repeats prompts (`DataProto.repeat(n, interleave=True)`).

    Args:
        records: P records with `prompt` (chat messages), `data_source` and `reward_model`
            ({"ground_truth", ...}), as `gsm8k_records` and `task_records` make them.
        n: samples per record (the GRPO group size), >= 1.
        uid_prefix: prepended to each record's uid, `{uid_prefix}prompt{i}` (e.g. the step, so uids
            differ between steps).

    Returns P * n rows with non-tensor fields `raw_prompt`, `data_source`, `reward_model` and `uid`
    (shared by the n rows of a record). Raises ValueError for n < 1 or no records.
    """
    from verl import DataProto

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (samples per problem) must be an int >= 1, got {n!r}")
    if not records:
        raise ValueError("a generation batch needs at least one record")

    def column(values) -> np.ndarray:
        return np.fromiter(values, dtype=object, count=len(records))

    batch = DataProto.from_single_dict(
        {
            "raw_prompt": column(r["prompt"] for r in records),
            "data_source": column(r["data_source"] for r in records),
            "reward_model": column(r["reward_model"] for r in records),
            "uid": column(f"{uid_prefix}prompt{i}" for i in range(len(records))),
        }
    )
    return batch.repeat(repeat_times=n, interleave=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for train.parquet and test.parquet")
    parser.add_argument("--dataset", default="openai/gsm8k", help="Hugging Face dataset id (config 'main')")
    args = parser.parse_args(argv)

    from datasets import load_dataset  # a verl dependency; downloads from the Hugging Face hub

    dataset = load_dataset(args.dataset, "main")
    for split in ("train", "test"):
        path = write_gsm8k_parquet(list(dataset[split]), args.out / f"{split}.parquet", split)
        print(f"{path}: {len(dataset[split])} problems")


if __name__ == "__main__":
    main()
