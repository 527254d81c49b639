import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rollout_len.data import encode_prompt
from rollout_len.forelen.ablation import (
    HEADS,
    SUBSETS,
    TEMPERATURES,
    ablate,
    check_stored_egtp,
    prefill_states,
    subset_egtp,
    subset_mask,
    tempered_egtp,
    variant_features,
)
from rollout_len.forelen.dataset import load_dataset, load_prompts
from rollout_len.model import load_policy
from rollout_len.predictor.pooling import pool_packed

ROW_FIELDS = {"method", "layer", "head", "mae", "rmse", "kendall_tau", "n", "capped_fraction", "mae_vs_constant"}


@pytest.fixture(scope="module")
def states(tiny_rl):
    """The tiny build's prefill, as `ablate` runs it, with the dataset's card and tensors."""
    card, tensors = load_dataset(tiny_rl)
    policy = load_policy(card["model"])
    ids = [encode_prompt(policy.tokenizer, p) for p in load_prompts(tiny_rl, tensors["prompt/split"])]
    return card, tensors, prefill_states(policy, ids, tuple(card["layers"]))


@pytest.fixture(scope="module")
def result(tiny_rl):
    return ablate([str(tiny_rl)])


def test_recomputed_exact_egtp_equals_the_stored_feature(states):
    card, tensors, packed = states
    feats, frac = variant_features(packed)
    for layer in card["layers"]:
        for pooling in ("egtp", "mean", "max", "last"):
            stored = tensors[f"prompt/{layer}/{pooling}"]
            torch.testing.assert_close(feats[(layer, pooling)], stored, rtol=1e-4, atol=1e-5)
    assert frac["egtp"] == 1.0 and frac["mean"] == 0.0
    plp = card["plp_layer"]
    assert check_stored_egtp(feats[(plp, "egtp")], tensors[f"prompt/{plp}/egtp"], "x") <= 1e-5
    # the check bites: another layer's (or model's) feature is refused
    other = feats[(plp, "mean")]
    with pytest.raises(ValueError, match="another model or code"):
        check_stored_egtp(other, tensors[f"prompt/{plp}/egtp"], "x")


def test_large_temperature_approaches_mean_pooling_and_small_sharpens(states):
    _, _, packed = states
    hidden, entropy, cu = next(iter(packed.hidden.values())), packed.entropy, packed.cu_seqlens
    mean = pool_packed(hidden, entropy, cu, "mean")
    egtp = pool_packed(hidden, entropy, cu, "egtp")
    assert not torch.allclose(egtp, mean, atol=1e-3)  # the test could fail: the weights are not uniform
    torch.testing.assert_close(tempered_egtp(hidden, entropy, cu, 1e7), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tempered_egtp(hidden, entropy, cu, 1.0), egtp)
    gaps = [float((tempered_egtp(hidden, entropy, cu, t) - mean).norm()) for t in (0.25, 1.0, 4.0, 64.0)]
    assert gaps == sorted(gaps, reverse=True)  # closer to the mean as τ grows
    with pytest.raises(ValueError, match="temperature"):
        tempered_egtp(hidden, entropy, cu, 0.0)


def test_subset_egtp(states):
    _, _, packed = states
    hidden, entropy, cu = next(iter(packed.hidden.values())), packed.entropy, packed.cu_seqlens
    exact = pool_packed(hidden, entropy, cu, "egtp")
    for kind in ("every", "last"):
        all_positions = subset_mask(cu, kind, 1 if kind == "every" else 10**6)
        assert bool(all_positions.all())
        torch.testing.assert_close(subset_egtp(hidden, entropy, cu, all_positions), exact)
    # by hand: positions T-1, T-1-k, ... of each prompt, softmax over their entropies only
    k = 4
    mask = subset_mask(cu, "every", k)
    pooled = subset_egtp(hidden, entropy, cu, mask)
    for b, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        keep = torch.arange(e - 1, s - 1, -k).flip(0)
        w = torch.softmax(entropy[keep], 0)
        torch.testing.assert_close(pooled[b], w @ hidden[keep])
        assert mask[s:e].sum() == len(keep) and bool(mask[e - 1])
    last = subset_mask(cu, "last", 3)
    assert last.sum() == 3 * (len(cu) - 1) and all(bool(last[e - 1]) for e in cu[1:].tolist())
    assert not torch.allclose(pooled, exact, atol=1e-4)
    with pytest.raises(ValueError, match="k >= 1"):
        subset_mask(cu, "every", 0)


def test_every_row_has_the_fields(tiny_rl, result):
    assert list(result) == ["rl"]
    scenario = result["rl"]
    card, layers, plp = scenario["card"], scenario["card"]["layers"], scenario["card"]["plp_layer"]
    assert card["model"] == "tiny-llama" and scenario["egtp_check"] <= 1e-5
    rows = scenario["rows"]
    for row in rows:
        assert ROW_FIELDS <= set(row) and "skipped" not in row, row
        assert row["n"] > 0 and 0 <= row["capped_fraction"] <= 1
        assert row["mae_vs_constant"] == pytest.approx(row["mae"] / rows[0]["mae"])
    assert rows[0]["method"] == "constant" and rows[0]["mae_vs_constant"] == pytest.approx(1.0)
    variants = ["egtp", *(f"egtp_t{t:g}" for t in TEMPERATURES), "mean", "max", "last", *SUBSETS]
    default = [(r["method"], r["layer"]) for r in rows if r["head"] == "default"]
    assert default == [(m, layer) for layer in layers for m in variants]
    heads = {(r["method"], r["head"]) for r in rows if r["head"] not in ("default", "-")}
    assert heads == {(m, h) for m in ("egtp", "mean") for h in HEADS}
    assert all(r["layer"] == plp for r in rows if r["head"] in HEADS)
    frac = {r["method"]: r["entropy_frac"] for r in rows if r["head"] == "default"}
    assert frac["egtp"] == frac["egtp_t4"] == 1.0 and frac["last"] == 0.0
    assert 0 < frac["egtp_every8"] < frac["egtp_every4"] < 1 and 0 < frac["egtp_last16"] < 1
    # the same test samples everywhere, and the exact egtp row is `forelen eval`'s egtp row
    assert len({r["n"] for r in rows}) == 1
    from rollout_len.forelen.evaluate import evaluate_methods

    evaluated = evaluate_methods([str(tiny_rl)], ["constant", "egtp"])["rl"]
    egtp_row = next(r for r in rows if (r["method"], r["layer"], r["head"]) == ("egtp", plp, "default"))
    assert egtp_row["mae"] == pytest.approx(evaluated["egtp"]["admission"]["mae"])
    assert rows[0]["mae"] == pytest.approx(evaluated["constant"]["admission"]["mae"])


def test_cli_writes_json_and_markdown(tiny_rl, tmp_path, capsys, monkeypatch, result):
    import rollout_len.forelen.ablation as ablation
    from rollout_len.cli import main

    monkeypatch.setattr(ablation, "ablate", lambda folders, device="cpu": result)  # the fits are tested above
    out, md = tmp_path / "a" / "ablate.json", tmp_path / "a" / "ablate.md"
    assert main(["forelen", "ablate", "--data", str(tiny_rl), "--json", str(out), "--md", str(md)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    text = md.read_text()
    assert text.startswith(f"`rollout-len forelen ablate --data {tiny_rl} --json {out} --md {md}`")
    assert "| method | layer | head | MAE |" in text and "| egtp_every4 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == len(result["rl"]["rows"])
    printed = capsys.readouterr().out
    assert "egtp_last16" in printed and "MAE/const" in printed and "constant" in printed


def test_bad_input_errors_are_clear(tiny_rl, tmp_path, capsys):
    from rollout_len.cli import main

    out = str(tmp_path / "x.json")
    assert main(["forelen", "ablate", "--data", str(tmp_path / "missing"), "--json", out]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    # an unwritable output is refused before any dataset is read
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["forelen", "ablate", "--data", str(tmp_path / "missing"), "--json", str(blocker / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["forelen", "ablate", "--data", str(tiny_rl), "--json", out, "--md", str(tmp_path)]) == 2
    assert "--md" in capsys.readouterr().err
    # an unknown model, and a dataset whose stored features another model made
    copy = tmp_path / "other"
    copy.mkdir()
    for name in ("prompts.jsonl", "data.safetensors"):
        (copy / name).write_bytes((tiny_rl / name).read_bytes())
    card = json.loads((tiny_rl / "card.json").read_text())
    (copy / "card.json").write_text(json.dumps({**card, "model": "no-such-model"}))
    assert main(["forelen", "ablate", "--data", str(copy), "--json", out]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    (copy / "card.json").write_text(json.dumps(card))
    tensors = load_file(str(tiny_rl / "data.safetensors"))
    key = f"prompt/{card['plp_layer']}/egtp"
    tensors[key] = tensors[key] + 0.1 * tensors[key].std()
    save_file(tensors, str(copy / "data.safetensors"))
    with pytest.raises(ValueError, match="another model or code"):
        ablate([str(copy)])
