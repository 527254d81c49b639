import json

import pytest
import torch
from safetensors.torch import load_file

from rollout_len.baselines import BASELINES
from rollout_len.cli import main
from rollout_len.data import encode_prompt
from rollout_len.forelen.attribution import attribution
from rollout_len.forelen.evaluate import METHODS, PLP_METHODS
from rollout_len.model import load_policy

PROGRESSIVE = {"survival", "survival_group", *PLP_METHODS, "trail", "tpv", "siblings"}
IN_FLIGHT_ONLY = {"survival", "survival_group"}  # at t = 0 they are `constant`


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
    card = json.loads((tiny_rl / "card.json").read_text())
    budget = card["sampling"]["max_new_tokens"]
    test = [p["split"] == "test" for p in (json.loads(x) for x in (tiny_rl / "prompts.jsonl").read_text().splitlines())]
    sample_test = torch.tensor(test).repeat_interleave(8)
    tensors = load_file(str(tiny_rl / "data.safetensors"))
    lengths = tensors["sample/length"][sample_test]
    capped = float(tensors["sample/capped"][sample_test].float().mean())
    for method, m in rows.items():
        assert ("admission" in m) == (method not in IN_FLIGHT_ONLY), method
        assert ("by_t" in m) == ("in_flight" in m) == (method in PROGRESSIVE), method
        if "admission" in m:
            a = m["admission"]
            assert a["n"] == len(lengths) and a["capped_fraction"] == pytest.approx(capped), method
            assert 0 <= a["mae"] <= budget and a["rmse"] >= a["mae"], method
        if "in_flight" in m:
            running = sum(len(range(0, int(n), card["every"])) - 1 for n in lengths)  # checkpoints at t > 0
            flight = m["in_flight"]
            assert flight["n"] == running and flight["samples"] == int((lengths > card["every"]).sum()), method
            assert m["by_t"]["0"]["n"] == len(lengths), method
    for method in PROGRESSIVE - IN_FLIGHT_ONLY:
        assert rows[method]["by_t"]["0"]["mae"] == pytest.approx(rows[method]["admission"]["mae"], abs=1e-4), method
    # At t = 0 siblings, tpv and survival are all the train median, as constant.
    at_start = [rows[m]["admission"]["mae"] for m in ("constant", "siblings", "tpv")] + [
        rows["survival"]["by_t"]["0"]["mae"]
    ]
    assert at_start == pytest.approx([at_start[0]] * 4)
    assert rows["trail"]["selected"]["layer"] == 1 and "parsed_fraction_test" in rows["pia"]["selected"]
    printed = capsys.readouterr().out
    for method in METHODS:
        assert f"\n  {method:14s} " in printed
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
