"""A trained PLP head as an artifact: `forelen train` saves it, `forelen eval --head` scores it without
fitting, and a head that does not fit the dataset is refused naming what differs."""

import json

import pytest
import torch

import rollout_len.forelen.evaluate as evaluate_module
import rollout_len.forelen.train as train_module
from rollout_len.baselines.base import ForeLenData
from rollout_len.forelen.dataset import VAL, load_dataset
from rollout_len.forelen.evaluate import evaluate_methods
from rollout_len.forelen.train import load_head, plp_examples, plp_scores, train_head
from rollout_len.predictor.head import SoftLabelHead


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
