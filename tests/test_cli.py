import json
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_len.cli import main


def test_generate_with_a_tiny_model_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = main(
        [
            "generate",
            "--model",
            "tiny-llama",
            "--prompt",
            "hi",
            "--prompt",
            "yo",
            "--n",
            "2",
            "--max-new-tokens",
            "5",
            "--repetition-penalty",
            "1.2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["seed"] == 0 and saved["sampling"]["repetition_penalty"] == 1.2
    assert saved["sampling"]["max_new_tokens"] == 5
    records = saved["completions"]
    assert [r["group_id"] for r in records] == ["p0", "p0", "p1", "p1"]
    assert all(1 <= r["length"] <= 5 and r["finish_reason"] in ("stop", "length") for r in records)
    assert "4 completions" in capsys.readouterr().out


def test_generate_reads_jsonl_and_reports_the_bad_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    assert main(["generate", "--model", "tiny-llama", "--prompts", str(path)]) == 2
    assert "p.jsonl:2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "2"], "top_p"),
        (["--n", "0"], "--n"),
        (["--model", "nope"], "unknown model"),
    ],
)
def test_generate_rejects_bad_flags(flags, message, capsys):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "rollout-len"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout


@pytest.mark.embedded
def test_generate_with_the_embedded_model(capsys):
    rc = main(["generate", "--model", "smollm2-135m", "--prompt", "What is 12*7?", "--max-new-tokens", "32"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "=== p0-s0  length=" in out and "1 completions" in out
