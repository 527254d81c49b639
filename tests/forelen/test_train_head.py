"""A trained PLP head as an artifact: `forelen train` saves it, `forelen eval --head` scores it without
fitting, and a head that does not fit the dataset is refused naming what differs."""

import json

import pytest
import torch

import rollout_len.forelen.evaluate as evaluate_module
import rollout_len.forelen.train as train_module
from rollout_len.baselines.base import ForeLenData
from rollout_len.forelen.dataset import TEST, TRAIN, VAL, load_dataset
from rollout_len.forelen.evaluate import CURVE_METHODS, PCA_RANK, PLP_METHODS, evaluate_methods, plp_curve
from rollout_len.forelen.train import load_head, plp_examples, plp_scores, train_head
from rollout_len.predictor.head import SoftLabelHead
from rollout_len.predictor.train import FitConfig


@pytest.fixture(scope="module")
def saved(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("head")
    return out, train_head([str(synthetic)], out)


def test_the_card_says_what_the_head_was_trained_on(saved, synthetic):
    out, card = saved
    data_card, _ = load_dataset(synthetic)
    assert card == json.loads((out / "card.json").read_text())
    assert (card["model"], card["layer"], card["num_layers"]) == ("tiny-llama", 2, 2)
    assert card["in_dim"] == 2 * data_card["hidden_size"] + 2 == 130
    assert card["every"] == [8] and card["num_bins"] == len(card["bins"]) - 1
    (entry,) = card["data"]
    assert entry["path"] == str(synthetic.resolve()) and entry["samples"] == 96
    assert (
        entry["train_checkpoints"] + entry["val_checkpoints"]
        < entry["checkpoints"]
        == data_card["counts"]["checkpoints"]
    )
    assert card["val"]["synthetic"]["in_flight"]["n"] > 0 and card["fit"]["seed"] == 0


def test_the_saved_head_predicts_as_it_did_before_saving(saved, synthetic):
    """The card's val scores were computed with the head in memory; the loaded head gives them again,
    and the same predictions as a head rebuilt from its state."""
    out, card = saved
    head, loaded_card = load_head(out)
    assert loaded_card == card
    data = ForeLenData(*load_dataset(synthetic), synthetic)
    again = json.loads(json.dumps(plp_scores(head, data, VAL)))
    assert again == card["val"]["synthetic"]
    z = plp_examples(data)
    torch.testing.assert_close(SoftLabelHead.from_state(head.to_state()).predict(z)[0], head.predict(z)[0])


def test_eval_with_a_saved_head_does_not_fit(saved, synthetic, monkeypatch):
    """Fit on the dataset itself, the head is the one `forelen eval` fits for its plp row (same examples,
    same seed), so scoring the saved head without fitting gives that row exactly."""
    out, _ = saved
    fitted = evaluate_methods([str(synthetic)], ["plp"])["synthetic"]["plp"]

    def no_fit(*args, **kwargs):
        raise AssertionError("eval --head must not fit a head")

    monkeypatch.setattr(evaluate_module, "fit_head", no_fit)
    monkeypatch.setattr(train_module, "fit_head", no_fit)
    rows = evaluate_methods([str(synthetic)], ["survival", "plp"], head=str(out))["synthetic"]
    assert rows["plp"].pop("head") == str(out)
    assert rows["plp"] == fitted
    assert "in_flight" in rows["survival"]


def test_a_head_that_does_not_fit_the_dataset_is_refused(saved, synthetic, make_synthetic, tmp_path):
    out, _ = saved
    other = make_synthetic(tmp_path / "other", model="tiny-qwen2", layer=1, hidden_size=32)
    with pytest.raises(ValueError) as err:
        evaluate_methods([str(synthetic), str(other)], ["plp"], head=str(out))
    message = str(err.value)
    assert f"does not fit dataset {other}" in message
    assert "model: the head's 'tiny-llama', dataset" in message and "'tiny-qwen2'" in message
    assert "layer: the head's 2" in message and "in_dim: the head's 130" in message and "66" in message
    with pytest.raises(ValueError, match="layer: the head's 2, dataset .*'s 1$"):
        train_head([str(synthetic), str(make_synthetic(tmp_path / "layer1", layer=1))], tmp_path / "h")
    with pytest.raises(ValueError, match="include plp"):
        evaluate_methods([str(synthetic)], ["survival"], head=str(out))
    with pytest.raises(FileNotFoundError, match="card.json is missing"):
        evaluate_methods([str(synthetic)], ["plp"], head=str(tmp_path))


def test_cli_train_then_eval_with_the_head(synthetic, tmp_path, capsys):
    from rollout_len.cli import main

    head = tmp_path / "head"
    assert main(["forelen", "train", "--data", str(synthetic), "--out", str(head)]) == 0
    assert "val synthetic: admission MAE" in capsys.readouterr().out
    assert {p.name for p in head.iterdir()} == {"card.json", "head.json", "head.safetensors"}
    out = tmp_path / "eval.json"
    args = ["forelen", "eval", "--head", str(head), "--data", str(synthetic), "--methods", "plp,survival"]
    assert main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["synthetic"]
    assert rows["plp"]["head"] == str(head) and rows["plp"]["in_flight"]["n"] > 0
    assert main(["forelen", "eval", "--head", str(tmp_path / "none"), "--data", str(synthetic)]) == 2
    assert "card.json is missing" in capsys.readouterr().err


def test_plp_rows_report_q90_coverage_and_the_ablations(synthetic, monkeypatch):
    """The plp row scores the median point and the q90 calibration; plp_mean is the same fit with the
    mean point, plp_pca with the features projected onto PCA_RANK components. Survival's q90 stands beside."""
    fits = []
    real_fit = evaluate_module.fit_head

    def recording_fit(*args):
        fits.append(args[-1])
        return real_fit(*args)

    monkeypatch.setattr(evaluate_module, "fit_head", recording_fit)
    rows = evaluate_methods([str(synthetic)], ["survival", "survival_group", *PLP_METHODS])["synthetic"]
    assert [(c.point, c.project, c.calibrate) for c in fits] == [
        ("median", None, True),
        ("median", None, False),
        ("mean", None, True),
        ("median", PCA_RANK, True),
    ]
    for method in PLP_METHODS:
        row = rows[method]
        for m in (row["admission"], row["in_flight"], *row["by_t"].values()):
            assert 0.0 <= m["q90_coverage"] <= 1.0 and m["n"] > 0
        assert row["admission"] == row["by_t"][0]
    assert all("q90_coverage" in m for m in (rows["survival"]["in_flight"], *rows["survival"]["by_t"].values()))
    assert "q90_coverage" not in rows["survival_group"]["in_flight"]
    assert rows["plp"] != rows["plp_raw"] != rows["plp_mean"] != rows["plp_pca"]
    # the plp row's coverage by hand: true remaining <= the head's q90 capped at the budget left
    data = ForeLenData(*load_dataset(synthetic), synthetic)
    head = real_fit(*_plp_split(data), FitConfig())
    test = data.checkpoints(TEST)
    _, q = head.predict(plp_examples(data)[test], quantiles=(0.9,))
    covered = data.ckpt_remaining[test] <= torch.minimum(q[:, 0], data.ckpt_budget_left[test].float())
    later = data.ckpt_t[test] > 0
    assert rows["plp"]["in_flight"]["q90_coverage"] == pytest.approx(float(covered[later].float().mean()))


def _plp_split(data):
    x, y = plp_examples(data), data.ckpt_remaining
    train, val = data.ckpt_split == TRAIN, data.ckpt_split == VAL
    return x[train], y[train], x[val], y[val]


def test_plp_curve_has_every_curve_method_with_q90_coverage(synthetic):
    curve = plp_curve(str(synthetic))
    assert 0 in curve and 8 in curve
    for row in curve.values():
        assert set(row) == set(CURVE_METHODS) == {"plp", "plp_raw", "plp_mean", "plp_pca", "survival", "survival_group"}
        assert len({m["n"] for m in row.values()}) == 1
        for method in ("plp", "plp_raw", "plp_mean", "plp_pca", "survival"):
            assert 0.0 <= row[method]["q90_coverage"] <= 1.0
        assert "q90_coverage" not in row["survival_group"]


def test_a_trained_heads_card_records_its_point(saved):
    out, card = saved
    assert card["fit"]["point"] == "median" and card["fit"]["project"] is None
    head, _ = load_head(out)
    assert head.config.point == "median"
    assert "q90_coverage" in card["val"]["synthetic"]["in_flight"]


def test_cli_curve_and_eval_json_carry_the_new_rows(synthetic, tmp_path):
    from rollout_len.cli import main

    curve = tmp_path / "curve.json"
    assert main(["forelen", "plp-curve", "--data", str(synthetic), "--json", str(curve)]) == 0
    saved = json.loads(curve.read_text())
    for row in saved.values():
        assert set(row) == set(CURVE_METHODS)
        assert all({"mae", "n"} <= set(m) for m in row.values())
        assert all("q90_coverage" in row[m] for m in ("plp", "plp_mean", "plp_pca", "survival"))
    out = tmp_path / "eval.json"
    methods = "constant,survival,plp,plp_mean,plp_pca"
    assert main(["forelen", "eval", "--data", str(synthetic), "--methods", methods, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["synthetic"]
    assert list(rows) == methods.split(",") and set(rows["constant"]) == {"admission"}
    assert "q90_coverage" in rows["survival"]["in_flight"] and "q90_coverage" in rows["plp_pca"]["by_t"]["8"]


def test_plp_curve_ratios_to_survival_have_a_prompt_bootstrap_interval(synthetic):
    from rollout_len.forelen.evaluate import paired_ratio_ci

    curve = plp_curve(str(synthetic), rounds=500)
    for row in curve.values():
        assert "vs_survival" not in row["survival"]
        for method in ("plp", "plp_raw", "plp_mean", "plp_pca", "survival_group"):
            vs = row[method]["vs_survival"]
            assert vs["ratio"] == pytest.approx(row[method]["mae"] / row["survival"]["mae"], rel=1e-4)
            if vs["prompts"] >= 2:
                assert vs["ci95"][0] <= vs["ratio"] <= vs["ci95"][1]
    # by hand: two prompts whose error ratios are 1 and 3; resampling prompts spans both extremes
    a, b, groups = torch.tensor([1.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([7, 7, 9])
    got = paired_ratio_ci(a, b, groups, 2000, torch.Generator().manual_seed(0))
    assert got["ratio"] == pytest.approx(5 / 3) and got["prompts"] == 2
    assert got["ci95"][0] == pytest.approx(1.0) and got["ci95"][1] == pytest.approx(3.0)
    assert paired_ratio_ci(a, torch.zeros(3), groups, 10, torch.Generator())["ratio"] is None
    # a prompt where survival made no error: resamples of only that prompt have no ratio and are left out
    got = paired_ratio_ci(
        torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), torch.tensor([1, 2]), 2000, torch.Generator()
    )
    assert got["ratio"] == pytest.approx(3.0) and 1.0 <= got["ci95"][0] <= got["ci95"][1] <= 3.0
