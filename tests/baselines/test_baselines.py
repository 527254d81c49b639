import pytest
import torch

from rollout_len.baselines import BASELINES, ForeLenData, evaluate_baseline
from rollout_len.baselines.base import TEST, TRAIN, remaining_metrics
from rollout_len.baselines.pia import parse_stated_length
from rollout_len.baselines.proxy import list_mle
from rollout_len.baselines.trail import shift_down
from rollout_len.forelen.evaluate import format_table


def _run(name, data):
    return evaluate_baseline(BASELINES[name](), data)


# The bin classifiers overfit the embedding's noise coordinates more than the regressors do.
@pytest.mark.parametrize("name, ratio", [("ssjf_reg", 0.3), ("ssjf_mc", 0.6), ("s3", 0.6), ("ltr_c", 0.3)])
def test_proxy_heads_learn_the_prompt_signal(synthetic, name, ratio):
    data = synthetic()
    constant, result = _run("constant", data)["admission"], _run(name, data)["admission"]
    assert result["n"] == len(data.samples(TEST))
    assert result["mae"] < ratio * constant["mae"]
    assert result["kendall_tau"] > 0.6


def test_trail_picks_the_informative_layer_and_refines(synthetic):
    data = synthetic()
    constant, survival, trail = _run("constant", data), _run("survival", data), _run("trail", data)
    assert trail["selected"]["layer"] == 1  # layer 2 holds only noise
    assert trail["selected"]["refine"] in ("bayes", "latest")
    assert trail["admission"]["mae"] < 0.5 * constant["admission"]["mae"]
    assert trail["in_flight"]["mae"] < 0.6 * survival["in_flight"]["mae"]
    assert set(trail["by_t"]) == set(data.ckpt_t[data.checkpoints(TEST)].tolist())


def test_tpv_reads_progress_and_falls_back_at_t0(synthetic):
    data = synthetic()
    constant, survival, tpv = _run("constant", data), _run("survival", data), _run("tpv", data)
    # t = 0: nothing generated, the train median
    assert tpv["admission"]["mae"] == pytest.approx(constant["admission"]["mae"])
    later = [t for t in tpv["by_t"] if t >= 64]
    for t in later:
        assert tpv["by_t"][t]["mae"] < 0.3 * survival["by_t"][t]["mae"]


def _hand_data(lengths, prompts, split, every=10, budget=100):
    sample_prompt = torch.tensor(prompts)
    lengths = torch.tensor(lengths)
    ckpt = [(s, t) for s, length in enumerate(lengths.tolist()) for t in range(0, length, every)]
    tensors = {
        "sample/prompt": sample_prompt,
        "sample/length": lengths,
        "prompt/split": torch.tensor(split),
        "ckpt/sample": torch.tensor([s for s, _ in ckpt]),
        "ckpt/t": torch.tensor([t for _, t in ckpt]),
        "ckpt/pool": torch.zeros(len(ckpt), 4),
    }
    card = {
        "scenario": "hand",
        "model": "none",
        "layers": [1],
        "plp_layer": 1,
        "sampling": {"n": int(torch.bincount(sample_prompt).max()), "max_new_tokens": budget},
    }
    return ForeLenData(card, tensors)


def _hand_rl(budget=100):
    # prompt 0 (train): 10, 30, 50; prompt 1 (val): 40, 40, 40; prompt 2 (test): 5, 25, 90
    lengths, prompts = [10, 30, 50, 40, 40, 40, 5, 25, 90], [0, 0, 0, 1, 1, 1, 2, 2, 2]
    return _hand_data(lengths, prompts, [TRAIN, 1, TEST], budget=budget)


def test_constant_survival_history_and_siblings_by_hand():
    data = _hand_rl()
    constant = BASELINES["constant"]()
    constant.fit(data)
    assert constant.predict(data, TEST).tolist() == [30.0] * 3
    assert not constant.progressive  # admission time only
    idx = data.checkpoints(TEST)
    steps = data.ckpt_t[idx]
    survival = BASELINES["survival"]()
    survival.fit(data)
    left = survival.predict_remaining(data, TEST)
    # t = 0: every train sample ran past it, the median length (constant's 30).
    assert left[steps == 0].tolist() == [30.0] * 3
    # Train samples that ran past t = 20: 30 and 50 -> remaining 10 and 30, median 20.
    assert left[steps == 20].tolist() == [20.0, 20.0]
    # t = 60 is past every train sample: half of the budget left, (100 - 60) / 2.
    assert left[steps == 60].tolist() == [20.0]

    history = BASELINES["history"]()
    history.fit(data)
    assert history.predict(data, TEST).tolist() == [57.5, 47.5, 15.0]

    siblings = BASELINES["siblings"]()
    siblings.fit(data)
    assert siblings.predict(data, TEST).tolist() == [30.0] * 3
    pred = siblings.predict_remaining(data, TEST)
    samples = data.ckpt_sample[idx]
    # Sample 6 (length 5) finishes first: from t = 10 on, samples 7 and 8 have a finished sibling whose
    # length (5) is below t, so the estimate of their remaining length collapses to 1 token.
    some_finished = steps >= 10
    assert pred[some_finished].tolist() == [1.0] * int(some_finished.sum())
    # Until then nothing has finished: the survival estimate (at t = 0, the train median).
    assert pred[~some_finished].tolist() == left[~some_finished].tolist() == [30.0] * 3
    assert samples[~some_finished].tolist() == [6, 7, 8]


def test_survival_and_survival_group_scores_by_hand():
    # Budget 90: the test sample of length 90 is capped.
    data = _hand_rl(budget=90)
    idx = data.checkpoints(TEST)
    samples, steps = data.ckpt_sample[idx].tolist(), data.ckpt_t[idx].tolist()
    group = BASELINES["survival_group"]()
    group.fit(data)
    pred = dict(zip(zip(samples, steps), group.predict_remaining(data, TEST).tolist()))
    # Sample 6 (length 5) at t = 0: its siblings 25 and 90 ran past 0 -> median of 25, 90.
    assert pred[6, 0] == 57.5
    # Sample 7 (25): siblings 5, 90 at t = 0; from t = 10 only 90 ran past t.
    assert [pred[7, t] for t in (0, 10, 20)] == [47.5, 80.0, 70.0]
    # Sample 8 (90): siblings 5, 25 until t = 20; then none, so `survival`: train 50 -> 50 - t at
    # t = 30, 40; past every train sample, half the budget left (90 - t) / 2.
    assert [pred[8, t] for t in range(0, 90, 10)] == [15.0, 15.0, 5.0, 20.0, 10.0, 20.0, 15.0, 10.0, 5.0]

    result = _run("survival", data)
    assert "admission" not in result  # at t = 0 it is `constant`
    # t = 20: samples 7 and 8 run (remaining 5 and 70), survival says median(30 - 20, 50 - 20) = 20,
    # and its q90 is 10 + 0.9 x (30 - 10) = 28: it covers 5, not 70.
    at20 = {k: v for k, v in result["by_t"][20].items() if k != "kendall_tau"}  # tau: a tie, NaN
    assert at20 == pytest.approx(
        {
            "mae": 32.5,
            "rmse": (0.5 * (15**2 + 50**2)) ** 0.5,
            "acc50": 1.0,
            "acc100": 1.0,
            "n": 2,
            "capped_fraction": 0.5,
            "q90_coverage": 0.5,
        }
    )
    # In flight: samples 7 (t = 10, 20) and 8 (t = 10 .. 80), ten checkpoints, eight of the capped one.
    # Errors: 15, 15 (sample 7); 50, 50, 40, 40, 20, 15, 10, 5 (sample 8): 260 / 10.
    flight = result["in_flight"]
    assert (flight["mae"], flight["n"], flight["samples"]) == (26.0, 10, 2)
    assert flight["capped_fraction"] == pytest.approx(0.8)
    # q90 at t = 10, 20, 30, 40: 38, 28, 20, 10 (train residuals); from t = 50 none ran past t: 0.9 x the
    # budget left, 36, 27, 18, 9. Sample 7's 15 and 5 are covered; none of sample 8's 80, 70, .., 10.
    q90 = BASELINES["survival"]()
    q90.fit(data)
    by_step = dict(zip(zip(samples, steps), q90.remaining_q90(data, TEST).tolist()))
    assert [by_step[8, t] for t in range(10, 90, 10)] == pytest.approx([38, 28, 20, 10, 36, 27, 18, 9])
    assert flight["q90_coverage"] == pytest.approx(2 / 10)
    constant = _run("constant", data)
    assert "by_t" not in constant
    # Test lengths 5, 25, 90 against the train median 30; one of three capped.
    assert constant["admission"]["mae"] == 30.0 and constant["admission"]["capped_fraction"] == pytest.approx(1 / 3)


def test_q90_coverage_is_the_share_of_true_remaining_within_the_clamped_q90():
    # budget 90; test samples 6 (length 5), 7 (21), 8 (90, capped), checkpoints every 10 tokens
    data = _hand_data([10, 30, 50, 40, 40, 40, 5, 21, 90], [0, 0, 0, 1, 1, 1, 2, 2, 2], [TRAIN, 1, TEST], budget=90)
    idx = data.checkpoints(TEST)
    keys = list(zip(data.ckpt_sample[idx].tolist(), data.ckpt_t[idx].tolist()))
    true = dict(zip(keys, data.ckpt_remaining[idx].tolist()))
    assert (true[6, 0], true[7, 0], true[7, 10], true[7, 20], true[8, 0], true[8, 40]) == (5, 21, 11, 1, 90, 50)
    q90 = {(6, 0): 5.0, (7, 0): 20.0, (7, 10): 11.0, (7, 20): 0.3, (8, 0): 1000.0}  # 0.3 is clamped up to 1
    q90.update({(8, t): 50.0 for t in range(10, 90, 10)})
    result = remaining_metrics(torch.zeros(len(idx)), data, idx, torch.tensor([q90[k] for k in keys]))
    # t = 0: 5 <= 5 yes, 21 <= 20 no, 90 <= min(1000, 90) yes. t = 10: 11 <= 11 yes, 80 <= 50 no. t = 20:
    # 1 <= 1 yes (clamped), 70 no. Sample 8 from t = 30 on: remaining 60, 50, .., 10 against 50.
    expected = {0: 2 / 3, 10: 1 / 2, 20: 1 / 2, 30: 0.0, 40: 1.0, 50: 1.0, 60: 1.0, 70: 1.0, 80: 1.0}
    assert {t: m["q90_coverage"] for t, m in result["by_t"].items()} == pytest.approx(expected)
    # in flight (t > 0): sample 7 twice (both covered), sample 8 eight times (five covered)
    assert result["in_flight"]["q90_coverage"] == pytest.approx(7 / 10)
    assert "q90_coverage" not in remaining_metrics(torch.zeros(len(idx)), data, idx)["in_flight"]
    with pytest.raises(ValueError, match="q90 must be one per checkpoint"):
        remaining_metrics(torch.zeros(len(idx)), data, idx, torch.zeros(3))


def test_rl_native_methods_need_groups(synthetic, tiny_rl):
    data = synthetic(n=1)
    for name in ("history", "siblings", "survival_group"):
        assert "n=1" in _run(name, data)["skipped"]
    constant, survival = _run("constant", data), _run("survival", data)
    results = {
        "synthetic": {
            "_card": {"lengths": {"mean": 1.0, "capped_fraction": 0.0}},
            "_layer": 2,
            "constant": constant,
            "survival": survival,
            "history": _run("history", data),
        }
    }
    table = format_table(results).splitlines()
    assert "  history        n/a: history needs several samples per prompt; this dataset has n=1" in table
    a, f = constant["admission"], survival["in_flight"]
    row = next(line for line in table if line.startswith("  constant "))
    assert row.split()[1:3] == [f"{a['mae']:.1f}", "0%"] and row.split()[-4:] == ["-", "-", "-", "-"]
    row = next(line for line in table if line.startswith("  survival "))
    cover = f"{f['q90_coverage']:.0%}"
    assert row.split()[1] == "-" and row.split()[-4:] == [f"{f['mae']:.1f}", "0%", str(f["n"]), cover]
    assert any(line.startswith("  remaining-length MAE at decode step t") for line in table)


def test_shift_down_moves_mass_toward_shorter_remaining():
    probs = torch.tensor([0.0, 0.2, 0.3, 0.5])
    centers = torch.tensor([5.0, 15.0, 25.0, 35.0])  # width 10
    moved = shift_down(probs, 4, 10.0)
    assert moved.sum().item() == pytest.approx(1.0)
    assert (moved @ centers).item() == pytest.approx((probs @ centers).item() - 4)
    far = shift_down(probs, 25, 10.0)  # more than two whole bins
    assert far.sum().item() == pytest.approx(1.0) and far[0] > 0.5


def test_list_mle_prefers_the_true_order():
    lengths = torch.tensor([10.0, 200.0, 50.0, 120.0])
    right = torch.tensor([0.0, 3.0, 1.0, 2.0])
    assert list_mle(right, lengths) < list_mle(-right, lengths)
    scores = torch.zeros(4, requires_grad=True)
    list_mle(scores, lengths).backward()
    assert scores.grad[1] < 0 < scores.grad[0]  # descending the loss raises the longest, lowers the shortest


def test_pia_parses_and_calibrates(synthetic, monkeypatch):
    assert parse_stated_length("About 1,200 words.") == 1200.0
    assert parse_stated_length("12.5") == 12.5
    assert parse_stated_length("no idea") is None
    data = synthetic()
    data.policy = None
    mean = torch.zeros(len(data.prompt_split)).index_add_(0, data.sample_prompt, data.lengths) / 4
    test_prompts = torch.unique(data.sample_prompt[data.samples(TEST)]).tolist()
    # The "policy" states half its mean length in words, except for two test prompts and every tenth
    # prompt, whose answers hold no number.
    silent = set(test_prompts[:2]) | set(range(0, len(mean), 10))
    answers = [
        f"Roughly {int(m / 2)} words." if p not in silent else "I cannot say." for p, m in enumerate(mean.tolist())
    ]
    monkeypatch.setattr("rollout_len.baselines.pia.ask_for_length", lambda policy, prompts: answers)
    result = _run("pia", data)
    assert result["selected"]["scale"] == "train median ratio"
    assert result["selected"]["tokens_per_stated"] == pytest.approx(2.0, rel=0.05)
    assert result["selected"]["parsed_fraction_test"] == sum(p not in silent for p in test_prompts) / len(test_prompts)
    assert result["admission"]["mae"] < 0.5 * _run("constant", data)["admission"]["mae"]


def test_bad_prompts_file_is_a_clear_error(tiny_rl, tmp_path):
    for name in ("card.json", "data.safetensors"):
        (tmp_path / name).write_bytes((tiny_rl / name).read_bytes())
    lines = (tiny_rl / "prompts.jsonl").read_text().splitlines()
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="has 7 prompts, data.safetensors has 8"):
        _ = ForeLenData.load(tmp_path).prompts
    (tmp_path / "prompts.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="prompts.jsonl is missing"):
        _ = ForeLenData.load(tmp_path).prompts
