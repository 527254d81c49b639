import json

import pytest
import torch

from rollout_len.baselines import BASELINES
from rollout_len.cli import main
from rollout_len.data import encode_prompt
from rollout_len.forelen.attribution import attribution
from rollout_len.forelen.evaluate import METHODS
from rollout_len.model import load_policy

PROGRESSIVE = {"constant", "plp", "trail", "tpv", "siblings"}


def test_eval_all_runs_every_method_end_to_end(tiny_rl, tmp_path, capsys):
    assert set(BASELINES) < set(METHODS)
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "forelen",
                "eval",
                "--data",
                str(tiny_rl),
                "--methods",
                "all",
                "--encoder",
                "tiny-bert",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rl"]
    assert list(rows) == list(METHODS)
    prompts = [json.loads(line) for line in (tiny_rl / "prompts.jsonl").read_text().splitlines()]
    test_samples = 8 * sum(p["split"] == "test" for p in prompts)
    for method, m in rows.items():
        assert m["n"] == test_samples, method
        assert 0 <= m["mae"] <= 48 and m["rmse"] >= m["mae"], method  # quick builds stop at 48 tokens
        assert ("by_t" in m) == (method in PROGRESSIVE), method
    for method in PROGRESSIVE:
        assert rows[method]["by_t"]["0"]["mae"] == pytest.approx(rows[method]["mae"], abs=1e-4), method
    assert rows["siblings"]["mae"] == rows["constant"]["mae"] == rows["tpv"]["mae"]  # all the train median at t = 0
    assert rows["trail"]["selected"]["layer"] == 1 and "parsed_fraction_test" in rows["pia"]["selected"]
    printed = capsys.readouterr().out
    for method in METHODS:
        assert f"\n  {method:9s} " in printed
    assert "remaining-length MAE at decode step t" in printed


def test_bad_eval_arguments(tiny_rl, capsys):
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", "ssjf_reg", "--encoder", "bert-huge"]) == 2
    assert "unknown proxy encoder 'bert-huge'" in capsys.readouterr().err
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", "trail,ssjf"]) == 2
    assert "unknown methods ['ssjf']" in capsys.readouterr().err


def test_attribution_on_tiny_data(tiny_rl, tmp_path, capsys):
    result = attribution(str(tiny_rl))
    policy = load_policy("tiny-llama")
    prompts = [json.loads(line) for line in (tiny_rl / "prompts.jsonl").read_text().splitlines()]
    tokens = sum(len(encode_prompt(policy.tokenizer, p["prompt"])) for p in prompts if p["split"] == "test")
    assert result["layer"] == 1 and result["feature_layer"] == 2
    assert result["tokens"] == tokens == len(result["importance"]) == len(result["entropy"])
    importance = torch.tensor(result["importance"])
    assert (importance > 0).all() and importance.std() > 0  # per-token gradients, not one shared value
    assert -1 <= result["pearson_r"] <= 1
    with pytest.raises(ValueError, match="below the feature layer 2"):
        attribution(str(tiny_rl), layer=2)
    out, png = tmp_path / "attr.json", tmp_path / "attr.png"
    assert main(["forelen", "attribution", "--data", str(tiny_rl), "--json", str(out), "--png", str(png)]) == 0
    saved = json.loads(out.read_text())
    assert saved["pearson_r"] == pytest.approx(result["pearson_r"]) and "importance" not in saved
    assert png.stat().st_size > 1000 and "Pearson r(importance, entropy)" in capsys.readouterr().out
