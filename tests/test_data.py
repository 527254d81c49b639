import json

import pytest
from helpers import tiny

from rollout_len.data import encode_prompt, gsm8k_prompts, read_prompts_jsonl


def _write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_prompts_and_messages(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = _write(tmp_path, [json.dumps({"prompt": "What is 2+2?"}), "", json.dumps({"messages": messages})])
    assert read_prompts_jsonl(path) == ["What is 2+2?", messages]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"prompt": "a", "messages": []}), "exactly one of"),
        (json.dumps({"text": "a"}), "exactly one of"),
        (json.dumps({"prompt": ""}), "non-empty string"),
        (json.dumps({"messages": [{"role": "user"}]}), "message 0"),
        (json.dumps(["a"]), "exactly one of"),
    ],
)
def test_bad_line_names_its_number(tmp_path, bad_line, message):
    path = _write(tmp_path, [json.dumps({"prompt": "ok"}), json.dumps({"prompt": "ok"}), bad_line])
    with pytest.raises(ValueError, match=rf"prompts\.jsonl:3: .*{message}"):
        read_prompts_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts_jsonl(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts_jsonl(_write(tmp_path, [""]))


def test_gsm8k_is_the_full_test_set():
    rows = gsm8k_prompts()
    assert len(rows) == 1319
    assert rows[0]["question"].startswith("Janet")
    assert rows[0]["answer"].endswith("#### 18")
    assert rows[0]["prompt"].startswith(rows[0]["question"])
    assert len(gsm8k_prompts(limit=5)) == 5


def test_encode_prompt_applies_the_chat_template():
    tokenizer = tiny("llama").tokenizer
    ids = encode_prompt(tokenizer, "12*7?")
    assert tokenizer.decode(ids) == "<|im_start|>user\n12*7?<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(tokenizer, [{"role": "user", "content": "12*7?"}]) == ids
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(tokenizer, "   ")


def test_strict_json_writes_undefined_figures_as_null():
    from rollout_len.data import strict_json

    text = strict_json({"tau": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}], "n": 3})
    assert json.loads(text) == {"tau": None, "rows": [1.5, None, {"x": None}], "n": 3}
    assert "NaN" not in text and "Infinity" not in text
