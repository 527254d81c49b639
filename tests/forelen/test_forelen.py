import json

import numpy as np
import pytest
import torch
from helpers import mixed_prompts, tiny
from safetensors.torch import load_file

from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.forelen.build import _generate, build, split_prompts
from rollout_len.forelen.dataset import load_dataset, save_dataset
from rollout_len.forelen.evaluate import METHODS, evaluate_methods, format_table, plp_curve
from rollout_len.forelen.scenarios import QUICK_GSM8K_INSTRUCTION, SCENARIOS, scenario_prompts
from rollout_len.predictor.plp import checkpoint_steps
from rollout_len.predictor.pooling import pool
from rollout_len.sample import Sample, SamplingParams


def test_build_writes_a_consistent_dataset(tiny_rl):
    card = json.loads((tiny_rl / "card.json").read_text())
    t = load_file(str(tiny_rl / "data.safetensors"))
    assert card["counts"]["samples"] == 64 and card["sampling"]["n"] == 8
    assert card["sampling"]["max_new_tokens"] == SCENARIOS["rl"].quick_max_new_tokens == 128
    lengths = t["sample/length"]
    assert lengths.shape == (64,) and int(lengths.max()) <= card["sampling"]["max_new_tokens"]
    assert card["lengths"]["capped_fraction"] == pytest.approx(t["sample/capped"].float().mean().item())
    # PLP checkpoints: t = 0, k, 2k, ... strictly before each sample's end.
    for s in range(64):
        steps = sorted(t["ckpt/t"][t["ckpt/sample"] == s].tolist())
        assert steps == list(range(0, int(lengths[s]), 8))
    # n samples of one prompt stay in one split.
    prompts = [json.loads(line) for line in (tiny_rl / "prompts.jsonl").read_text().splitlines()]
    assert {p["split"] for p in prompts} == {"train", "val", "test"}
    assert t["prompt/2/egtp"].shape == (8, 64)


@pytest.mark.parametrize("every", [1, 3])
def test_checkpoints_pool_the_decode_taps_before_t(every):
    """Checkpoints at t = 0, k, 2k, ... < length (t: tokens generated). pool_t is zero at t = 0 and at
    t = 1 (only the prefill's token out); after that it is EGTP over the tap-layer states of generated
    tokens 1 .. t-1, fed by t-1 decode steps, each weighted by the entropy of the distribution it
    produced. Reference: the same samples decoded again, their decode taps pooled from scratch.
    Two shards of 2 and 1 prompts share the engine (4 slots for 9 samples), each saved with its own
    sample indices."""
    policy, layer, n = tiny("llama"), 2, 3
    prompts, params = mixed_prompts(3, seed=1), SamplingParams(temperature=1.0, max_new_tokens=24)
    saved = {}
    todo = [(0, range(0, 2)), (1, range(2, 3))]
    _generate(policy, prompts, todo, n, params, 0, (layer,), layer, every, 4, lambda i, t, _: saved.update({i: t}))
    assert sorted(saved) == [0, 1] and [len(saved[i]["sample/length"]) for i in (0, 1)] == [6, 3]

    engine = DecodeEngine(policy, EngineConfig(max_batch_size=9, tap_layer=layer, tap_entropy=True))
    again = [Sample(f"p{p}-s{j}", prompts[p], params, seed=0, group_id=f"p{p}") for p in range(3) for j in range(n)]
    taps: dict[str, list] = {s.sample_id: [] for s in again}
    for s in again:
        engine.add(s)
    while engine.has_unfinished():
        out = engine.step()
        for row, sid in enumerate(out.sample_ids[: out.num_decode_rows]):
            taps[sid].append((out.hidden[row], out.entropy[row]))

    for i, s in enumerate(again):
        shard = saved[0] if i < 6 else saved[1]
        local = i if i < 6 else i - 6
        assert int(shard["sample/length"][local]) == s.num_output
        assert int(shard["sample/prompt"][local]) == (i // n if i < 6 else 0)
        mine = shard["ckpt/sample"] == local
        steps, pools = shard["ckpt/t"][mine].tolist(), shard["ckpt/pool"][mine]
        assert steps == checkpoint_steps(s.num_output, every)
        for t, pooled in zip(steps, pools):
            assert pooled.dtype == torch.float16 and pooled.shape == (policy.hidden_size,)
            fed = taps[s.sample_id][: max(t - 1, 0)]  # tokens 1 .. t-1
            expected = (
                pool(torch.stack([h for h, _ in fed]), torch.stack([e for _, e in fed]))
                if fed
                else torch.zeros(policy.hidden_size)
            )
            torch.testing.assert_close(pooled.float(), expected, atol=2e-3, rtol=2e-3)


def test_an_interrupted_build_resumes_at_the_first_missing_shard(tmp_path, monkeypatch):
    import rollout_len.forelen.build as build_module

    out = tmp_path / "rl"
    whole = build("rl", tmp_path / "whole", model="tiny-llama", quick=True, every=8, max_batch_size=16, shard_prompts=3)
    saves = []
    real_save_file = build_module.save_file

    def fail_on_second_shard(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(build_module, "save_file", fail_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16, shard_prompts=3)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.safetensors", "plan.json"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="every: 4 here, 8 there"):
        build("rl", out, model="tiny-llama", quick=True, every=4, max_batch_size=16, shard_prompts=3)
    card = build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16, shard_prompts=3)
    assert not (out / "shards").exists() and card["counts"] == whole["counts"]
    _, resumed = load_dataset(out)
    _, reference = load_dataset(tmp_path / "whole")
    assert resumed.keys() == reference.keys()
    for key in ("sample/prompt", "sample/length", "prompt/split"):
        assert torch.equal(resumed[key], reference[key]), key
    # checkpoints arrive in step order, which depends on what else the engine ran: compare by (sample, t)
    order = [(t["ckpt/sample"] * 10_000 + t["ckpt/t"]).argsort() for t in (resumed, reference)]
    for key in ("ckpt/sample", "ckpt/t"):
        assert torch.equal(resumed[key][order[0]], reference[key][order[1]]), key
    pools = [t["ckpt/pool"][o].float() for t, o in zip((resumed, reference), order)]
    torch.testing.assert_close(pools[0], pools[1], atol=2e-3, rtol=2e-3)
    assert build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16, shard_prompts=3) == card
    with pytest.raises(ValueError, match="different finished dataset"):
        build("rl", out, model="tiny-llama", quick=True, every=4, max_batch_size=16, shard_prompts=3)
    with pytest.raises(ValueError, match=r"sampling.temperature: 1.3 here, 0.7 there"):
        build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16, shard_prompts=3, temperature=1.3)


def test_quick_prompts_ask_for_short_answers():
    quick, full = scenario_prompts("reasoning", 3, quick=True), scenario_prompts("reasoning", 3)
    assert all(q.endswith(QUICK_GSM8K_INSTRUCTION) for q in quick)
    assert [q.rsplit("\n", 1)[0] for q in quick] == [f.rsplit("\n", 1)[0] for f in full]  # same problems
    assert all(
        "in one sentence" in p or "two sentences" in p or "50 words" in p or "briefly" in p
        for p in scenario_prompts("longseq", 20, quick=True)
    )


def test_eval_reports_every_method(tiny_rl):
    results = evaluate_methods([str(tiny_rl)], list(METHODS))
    rows = results["rl"]
    for method in METHODS:
        scores = [rows[method][k] for k in ("admission", "in_flight") if k in rows[method]]
        assert scores and all(m["n"] > 0 and torch.isfinite(torch.tensor(m["mae"])) for m in scores), method
    curve = plp_curve(str(tiny_rl))
    assert 0 in curve
    for t, row in curve.items():
        assert set(row) == {"plp", "plp_raw", "plp_mean", "plp_pca", "survival", "survival_group"}
        assert row["plp"]["n"] == row["survival"]["n"] == row["survival_group"]["n"] > 0
        assert row["survival"]["mae"] == pytest.approx(rows["survival"]["by_t"][t]["mae"])


def test_plp_curve_survival_matches_a_direct_count(tiny_rl):
    """survival's MAE at each t, recomputed from the built lengths alone: train samples with L > t give
    median(L - t) (half the budget left when none), clipped to [1, budget left], scored on the test
    samples still running at t."""
    card, t = load_dataset(tiny_rl)
    budget, every = card["sampling"]["max_new_tokens"], card["every"]
    lengths = t["sample/length"].double()
    split = t["prompt/split"][t["sample/prompt"]]
    train, test = lengths[split == 0], lengths[split == 2]
    curve = plp_curve(str(tiny_rl))
    for step in range(0, int(test.max()), every):
        past = (train[train > step] - step).numpy()
        guess = float(np.clip(np.median(past) if len(past) else (budget - step) / 2, 1, budget - step))
        running = test[test > step] - step
        entry = curve[step]["survival"]
        assert entry["n"] == len(running)
        assert entry["mae"] == pytest.approx(float((running - guess).abs().mean()))
        capped = t["sample/capped"][split == 2][test > step].float().mean()
        assert entry["capped_fraction"] == pytest.approx(float(capped))


def test_a_method_that_cannot_be_fit_is_skipped_with_its_reason(tiny_rl, tmp_path):
    card, t = load_dataset(tiny_rl)
    t = dict(t)
    t["sample/length"] = torch.full_like(t["sample/length"], 20)  # one length: no bins can be formed
    prompts = [json.loads(line)["prompt"] for line in (tiny_rl / "prompts.jsonl").read_text().splitlines()]
    save_dataset(tmp_path, card, t, prompts, t["prompt/split"].numpy())
    results = evaluate_methods([str(tmp_path)], ["constant", "egtp"])
    rows = results["rl"]
    assert rows["constant"]["admission"]["mae"] == 0.0
    assert rows["egtp"]["skipped"].startswith("cannot be fit on this dataset: lengths are (nearly) all equal")
    assert "  egtp           n/a: cannot be fit on this dataset" in format_table(results)


def test_splits_are_by_prompt_and_cover_all():
    split = split_prompts(10, seed=0)
    assert sorted(set(split.tolist())) == [0, 1, 2] and (split == 0).sum() == 7
    with pytest.raises(ValueError, match="at least 3 prompts"):
        split_prompts(2, seed=0)


def test_bad_datasets_are_clear_errors(tmp_path, tiny_rl):
    with pytest.raises(FileNotFoundError, match="card.json is missing"):
        load_dataset(tmp_path)
    (tmp_path / "card.json").write_text("{}")
    (tmp_path / "data.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt dataset"):
        load_dataset(tmp_path)
    card, tensors = load_dataset(tiny_rl)
    del card["plp_layer"], card["hidden_size"]
    prompts = [json.loads(line)["prompt"] for line in (tiny_rl / "prompts.jsonl").read_text().splitlines()]
    save_dataset(tmp_path / "old", card, dict(tensors), prompts, tensors["prompt/split"].numpy())
    with pytest.raises(ValueError, match=r"card.json lacks \['plp_layer', 'hidden_size'\]"):
        evaluate_methods([str(tmp_path / "old")], ["constant"])
    with pytest.raises(ValueError, match="unknown methods \\['median'\\]"):
        evaluate_methods([str(tiny_rl)], ["median"])
    with pytest.raises(ValueError, match="unknown scenario"):
        build("chat", tmp_path / "x", model="tiny-llama")


def test_cli_eval_curve_and_plots(tiny_rl, tmp_path, capsys):
    from rollout_len.cli import main

    out = tmp_path / "eval.json"
    methods = "constant,survival,egtp,plp"
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", methods, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rl"]
    assert list(rows) == methods.split(",")
    assert set(rows["constant"]) == {"admission"} and set(rows["survival"]) == {"in_flight", "by_t"}
    assert set(rows["plp"]) == {"admission", "in_flight", "by_t"}
    for m in (rows["constant"]["admission"], rows["survival"]["in_flight"], rows["plp"]["by_t"]["8"]):
        assert {"mae", "n", "capped_fraction"} <= set(m)
    assert "averaged" in rows["survival"]["in_flight"]
    printed = capsys.readouterr().out
    assert "  survival " in printed and "MAE t>0" in printed and "capped" in printed
    curve, png = tmp_path / "curve.json", tmp_path / "curve.png"
    assert main(["forelen", "plp-curve", "--data", str(tiny_rl), "--json", str(curve), "--png", str(png)]) == 0
    saved = json.loads(curve.read_text())
    assert "0" in saved and png.stat().st_size > 1000
    for row in saved.values():
        assert {"plp", "survival"} <= set(row)
        assert all({"mae", "n", "capped_fraction"} <= set(m) for m in row.values())
    assert saved["8"]["survival"]["mae"] == pytest.approx(rows["survival"]["by_t"]["8"]["mae"])
    lengths_png = tmp_path / "lengths.png"
    assert main(["forelen", "plots", "--data", str(tiny_rl), "--png", str(lengths_png)]) == 0
    assert lengths_png.stat().st_size > 1000
    assert main(["forelen", "eval", "--data", str(tmp_path / "missing")]) == 2


def test_build_refuses_a_folder_of_other_files_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from rollout_len.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "prompts.jsonl").write_text('{"prompt": "What is 2 + 2?"}\n' * 3)
    before = (mine / "prompts.jsonl").read_text()
    with pytest.raises(ValueError, match="not a ForeLen-lite build"):
        build("rl", mine, model="tiny-llama", quick=True, prompts_file=str(mine / "prompts.jsonl"))
    assert (mine / "prompts.jsonl").read_text() == before and sorted(p.name for p in mine.iterdir()) == [
        "prompts.jsonl"
    ]

    import rollout_len.forelen.build as build_module

    def interrupted(*args, **kwargs):
        (tmp_path / "out" / "shards").mkdir(parents=True)
        (tmp_path / "out" / "shards" / "00000.safetensors").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "build", interrupted)
    argv = ["forelen", "build", "--scenario", "rl", "--model", "tiny-llama", "--out", str(tmp_path / "out")]
    assert main(argv) == 130
    assert "interrupted: 1 finished shard(s) kept" in capsys.readouterr().err


def test_eval_checks_its_output_and_layer_first_and_writes_strict_json(tiny_rl, tmp_path, capsys):
    from rollout_len.cli import main

    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", "constant", "--json", str(folder)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", "mean", "--layer", "7"]) == 2
    assert "--layer 7" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["forelen", "eval", "--data", str(tiny_rl), "--methods", "constant,survival", "--json", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["rl"]["constant"]["admission"]["kendall_tau"] is None


def test_a_limit_beyond_the_prompts_is_refused_not_cut(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 2 + 2?"}\n' * 4)
    with pytest.raises(ValueError, match=r"limit 10 prompts, but .*prompts.jsonl has only 4"):
        build("rl", tmp_path / "out", model="tiny-llama", prompts_file=str(prompts), limit=10)
    with pytest.raises(ValueError, match=r"must be >= 3 .*got 0"):
        build("rl", tmp_path / "out", model="tiny-llama", prompts_file=str(prompts), limit=0)
    assert not (tmp_path / "out").exists()


def test_a_build_samples_with_its_scenarios_settings_and_records_them(tmp_path, monkeypatch):
    """longseq samples with top-p and a repetition penalty (scenarios.py says why); the engine gets
    both, and the plan a resumed build must match records them."""
    import rollout_len.forelen.build as build_module

    seen = []

    def stop(policy, prompt_ids, todo, n, params, *rest):
        seen.append(params)
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_generate", stop)
    with pytest.raises(KeyboardInterrupt):
        build("longseq", tmp_path / "ls", model="tiny-llama", quick=True, limit=3)
    spec = SCENARIOS["longseq"]
    assert (seen[0].top_p, seen[0].repetition_penalty) == (spec.top_p, spec.repetition_penalty) == (0.9, 1.1)
    plan = json.loads((tmp_path / "ls" / "shards" / "plan.json").read_text())
    assert plan["sampling"] == {
        "n": 1,
        "temperature": 0.8,
        "top_p": 0.9,
        "max_new_tokens": spec.quick_max_new_tokens,
        "repetition_penalty": 1.1,
    }
    # --temperature replaces the scenario's (the drift study) and is part of the plan.
    with pytest.raises(KeyboardInterrupt):
        build("rl", tmp_path / "hot", model="tiny-llama", quick=True, limit=3, temperature=1.0)
    assert seen[1].temperature == 1.0 != SCENARIOS["rl"].temperature
    assert json.loads((tmp_path / "hot" / "shards" / "plan.json").read_text())["sampling"]["temperature"] == 1.0
    with pytest.raises(ValueError, match="greedy: the 8 samples of each rl prompt would be identical"):
        build("rl", tmp_path / "cold", model="tiny-llama", quick=True, limit=3, temperature=0.0)
