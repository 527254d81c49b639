"""`rollout-len bench lengths`: the figures on hand-computed lengths, the JSON (a trace), bad flags."""

import json

import pytest

from rollout_len.bench.lengths import length_stats, run, solve_stats
from rollout_len.cli import main
from rollout_len.data import answer_correct
from rollout_len.sched.simulator import load_trace
from rollout_len.tasks import task_prompts


def test_length_stats_on_known_lengths():
    # 10 lengths, sorted: 2 4 6 8 10 | 12 14 16 18 100; cap 100 (one capped).
    groups = [[2, 4, 6, 8, 10], [12, 14, 16, 18, 100]]
    s = length_stats(groups, max_new_tokens=100)
    assert s["samples"] == 10
    assert s["capped_fraction"] == pytest.approx(0.1)
    assert s["median"] == pytest.approx(11.0)  # (10 + 12) / 2
    assert s["p90"] == pytest.approx(26.2)  # position 8.1: 18 + 0.1 * (100 - 18)
    assert s["p90_over_median"] == pytest.approx(26.2 / 11.0)
    assert s["mean"] == pytest.approx(19.0)
    assert s["max"] == 100
    assert (s["group_median_min"], s["group_median_max"]) == (6.0, 16.0)
    # Group means 6 and 32 around the mean 19: between-prompt variance 13^2 = 169; total variance
    # (885 + 6645) / 10 = 753.
    assert s["between_prompt_variance"] == pytest.approx(169 / 753)


def test_solve_stats_counts_mixed_groups():
    s = solve_stats([[True, False], [False, False], [True, True], [True, False]])
    assert s["solve_rate"] == pytest.approx(4 / 8)
    assert s["mixed_group_fraction"] == pytest.approx(2 / 4)
    assert s["group_solved"] == [1, 0, 2, 1]


@pytest.mark.parametrize(
    "text, answer, right",
    [
        ("so 23 + 48 = 71.", "71", True),
        ("It is 1,200 dollars", "1200", True),
        ("8 + 8 = 17", "16", False),
        ("", "3", False),
    ],
)
def test_answer_correct_reads_the_last_number(text, answer, right):
    assert answer_correct(text, answer) is right


def test_arith_tasks_have_exact_answers():
    items = task_prompts("arith-mix", 8, seed=1)
    assert len(items) == 8 and items == task_prompts("arith-mix", 8, seed=1)
    first = items[0]  # level 0: "What is a + b?"
    a, b = (int(x) for x in first.prompt.split("?")[0].removeprefix("What is ").split(" + "))
    assert first.answer == str(a + b)


def test_run_writes_figures_and_a_trace_the_simulator_reads(tmp_path):
    out = tmp_path / "lengths.json"
    result = run("arith", prompts=2, n=3, max_new_tokens=6, seed=0, batch=4, model="tiny-llama", json_path=str(out))
    data = json.loads(out.read_text())
    for key in ("samples", "capped_fraction", "median", "p90", "p90_over_median", "mean", "max", "tokens_per_s"):
        assert data[key] == pytest.approx(result[key])
    assert data["samples"] == 6 and 0.0 <= data["solve_rate"] <= 1.0
    groups, cap = load_trace(out)
    assert cap == 6 and len(groups) == 2 and all(len(g) == 3 and all(1 <= x <= 6 for x in g) for g in groups)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n", "0"], "--n"),
        (["--prompts", "0"], "--prompts"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--batch", "0"], "--batch"),
        (["--task", "nope"], "--task"),
    ],
)
def test_bad_flags_are_named_before_the_model_loads(flags, message, capsys):
    assert main(["bench", "lengths", "--model", "no-such-model", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "unknown model" not in err
