"""GSM8K as verl's RL parquet: one row per problem in the layout verl's RLHFDataset reads.

    python -m rollout_len.verl.gsm8k DIR      # writes DIR/train.parquet and DIR/test.parquet

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

from rollout_len.data import GSM8K_INSTRUCTION

__all__ = ["DATA_SOURCE", "final_answer", "gsm8k_records", "write_gsm8k_parquet"]

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
