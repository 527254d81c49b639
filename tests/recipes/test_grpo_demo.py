"""The GRPO demo recipe (recipes/grpo_demo/) on the tiny random model: one real step each."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import ray
import torch
from wandb_offline import history

from rollout_len.model import tiny_policy
from rollout_len.verl.actor import last_token_logits

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "grpo_demo" / "grpo_demo.py"
TINY = [
    "--model",
    "tiny-llama",
    "--steps",
    "1",
    "--prompts-per-step",
    "2",
    "--samples-per-prompt",
    "4",
    "--max-new-tokens",
    "6",
    "--num-workers",
    "2",
    "--slots-per-worker",
    "2",
    "--every",
    "2",
    "--train-layers",
    "1",
    "--overlong-buffer",
    "2",
]


def load_recipe():
    spec = importlib.util.spec_from_file_location("grpo_demo", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grpo_demo = load_recipe()


@pytest.fixture(scope="module")
def ray_session():
    ray.shutdown()  # a Ray left by another module may have too few CPUs: Coordinator + 2 workers need 3
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class TokenSumRewardDemo(grpo_demo.GRPODemo):
    """A random-weight model never answers right, and with every response at the budget every overlong
    penalty is the same: all rewards equal, all advantages 0. This reward from the response's token ids
    differs within a group."""

    def rewards(self, data):
        verl_scores, details = super().rewards(data)
        assert verl_scores.sum(dim=1).tolist() == [-1.0] * len(data)  # the answer checker's 0 plus the full penalty
        mask = data.batch["response_mask"]
        scores = torch.zeros_like(mask, dtype=torch.float32)
        for row, length in enumerate(mask.sum(dim=1).tolist()):
            scores[row, length - 1] = (sum(data.batch["responses"][row, :length].tolist()) % 97) / 97
        return scores, details


def test_flags_override_the_yaml_and_bad_values_name_the_key():
    cfg = grpo_demo.load_config(["--max-new-tokens", "70", "--no-use-ray", "--out", "none", "--lr", "0.5"])
    assert cfg["max_new_tokens"] == 70 and cfg["use_ray"] is False and cfg["out"] is None and cfg["lr"] == 0.5
    assert cfg["model"] == "smollm2-135m" and cfg["task"] == "arith" and cfg["samples_per_prompt"] == 8  # the YAML
    with pytest.raises(ValueError, match="samples_per_prompt"):
        grpo_demo.load_config(["--samples-per-prompt", "1"])
    with pytest.raises(ValueError, match="train_layers"):
        grpo_demo.load_config(["--train-layers", "-1"])
    with pytest.raises(ValueError, match="overlong_buffer"):
        grpo_demo.load_config(["--max-new-tokens", "32", "--overlong-buffer", "64"])
    with pytest.raises(ValueError, match=r"task \(--task\) 'poems' is unknown; valid: .*arith"):
        grpo_demo.load_config(["--task", "poems"])
    bad = {
        "--wandb-mode": ("nope", "wandb_mode"),
        "--lr": ("nan", "lr"),
        "--temperature": ("0", "temperature"),
        "--reward-method": ("nope", "reward_method"),
        "--config": ("/nonexistent.yaml", "config"),
        "--out": ("README.md", "is a file"),
        "--mode": ("async", "mode"),
        "--over-sample-rate": ("1.0", "over_sample_rate"),
        "--max-staleness": ("-1", "max_staleness"),
        "--on-stale": ("ignore", "on_stale"),
        "--rollout-is-threshold": ("0", "rollout_is_threshold"),
    }
    for flag, (value, match) in bad.items():  # refused up front, before Ray, wandb or torch see them
        with pytest.raises(ValueError, match=match):
            grpo_demo.load_config([flag, value, "--out", "none"] if flag != "--out" else [flag, value])


def test_a_model_that_does_not_load_is_one_line_naming_the_flag(tmp_path):
    import subprocess
    import sys

    args = [sys.executable, str(RECIPE), "--model", "/nonexistent", "--out", str(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("grpo_demo.py: error: model (--model): unknown model")


def test_one_step_trains_and_the_workers_get_the_new_weights(ray_session):
    flags = ["--mode", "sync", "--lr", "1e-3", "--no-use-ray", "--out", "none", "--wandb-mode", "disabled"]
    cfg = grpo_demo.load_config(TINY + flags)
    demo = TokenSumRewardDemo(cfg)
    demo.setup()
    try:
        assert demo.start_logit_diff == 0.0  # the workers start from the trainer's weights
        trained = {name: p.detach().clone() for name, p in demo.model.named_parameters() if p.requires_grad}
        frozen = {name: p.detach().clone() for name, p in demo.model.named_parameters() if not p.requires_grad}
        assert trained and frozen and all(name.startswith(("model.layers.1.", "model.norm.")) for name in trained)

        result = demo.train_step(0)
        m = result["metrics"]
        assert m["critic/advantages/max"] > 0 > m["critic/advantages/min"]
        # The trainer's log-probs of the sampled tokens equal the sampler's: the rollout ran the trainer's weights.
        assert m["training/rollout_probs_diff_max"] < 1e-4
        params = dict(demo.model.named_parameters())
        assert all(not torch.equal(params[name], before) for name, before in trained.items())
        assert all(torch.equal(params[name], before) for name, before in frozen.items())
        assert m["actor/param_update_norm"] > 0

        # After the sync, each worker's logits on a prompt are the trainer's, and differ from the old model's.
        prompt = [ord(c) for c in "What is 12*7?"]
        trainer = last_token_logits(demo.model, prompt)
        workers = demo.rollout.worker_logits(prompt)
        assert len(workers) == 2
        for logits in workers:
            torch.testing.assert_close(logits, trainer, rtol=0, atol=1e-5)
        old = last_token_logits(tiny_policy("llama").model, prompt)
        assert (trainer - old).abs().max() > 1e-4
        assert m["rollout_len/sync_max_logit_diff"] <= 1e-5

        # Both rollouts ran on the same prompts with the same seed: same responses, token for token.
        assert m["rollout_len/same_responses_fraction"] == 1.0
        assert set(result["timelines"]) == {"length_aware", "fcfs"}
    finally:
        demo.cleanup()


STEP_KEYS = {"step_time_s", "rollout_time_s", "fcfs_rollout_time_s", "saving", "reward_mean", "predictor_mae"}
STEP_KEYS |= {"sim_s", "sim_saving", "oracle_saving", "sim_floor_s", "floor_s", "ratio_to_floor", "oracle_gain_share"}
SUMMARY_KEYS = {"steps", "median_saving", "saving_ci95", "oracle_saving", "capped_fraction", "reward_slope"}
SUMMARY_KEYS |= {"partial_throughput_ratio", "reward_slope_ci95"}
WANDB_KEYS = {
    "timing_s/gen",
    "timing_s/gen_fcfs",
    "timing_s/reward",
    "timing_s/adv",
    "timing_s/update_actor",
    "timing_s/update_weights",
    "timing_s/step",
    "response_length/mean",
    "response_length/max",
    "response_length/min",
    "response_length/clip_ratio",
    "critic/score/mean",
    "critic/advantages/mean",
    "rollout_len/step_time_s",
    "rollout_len/saving_vs_fcfs",
    "rollout_len/predictor_mae",
    "rollout_len/padding_fraction",
    "rollout_len/migrations",
    "rollout_len/worker_idle_fraction",
    "timing_s/rollout_len/generate_s",
    "rollout_len/timeline/path",
}


def test_sync_mode_writes_summary_charts_and_an_offline_wandb_run(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    summary = grpo_demo.main(TINY + ["--mode", "sync", "--out", str(out)])  # Ray workers, wandb offline: the defaults

    printed = capsys.readouterr().out
    assert "median rollout saving vs fcfs" in printed and "(95% bootstrap, 1 steps)" in printed
    written = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(written)
    (step,) = written["steps"]
    assert STEP_KEYS <= set(step)
    assert written["saving_ci95"] == [step["saving"], step["saving"]]  # one step: the interval is the point
    assert written["oracle_saving"] == step["oracle_saving"] == 1 - step["sim_s"]["oracle"] / step["sim_s"]["fcfs"]
    assert written["capped_fraction"] == 1.0 and written["partial_throughput_ratio"] is None
    assert written["reward_slope"] is None  # one step has no slope
    assert sorted(len(g) for g in step["lengths"]) == [4, 4]
    assert "<svg" in (out / "report.html").read_text()
    assert step["rollout_time_s"] > 0 and step["fcfs_rollout_time_s"] > 0
    assert step["saving"] == pytest.approx(1 - step["rollout_time_s"] / step["fcfs_rollout_time_s"])
    assert step["step_time_s"] > step["rollout_time_s"]
    assert (
        step["reward_mean"] == -1.0
    )  # the answer checker's 0, the full overlong penalty: every response at the budget
    assert step["predictor_mae"] is None  # no predictor before the first re-fit
    for png in ("step_time_saving.png", "timeline_step0.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_dir = Path(summary["wandb_run_dir"])
    assert run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    assert str(run_dir) in printed
    (row,) = history(run_dir)
    assert WANDB_KEYS <= set(row)
    assert row["timing_s/gen"] == pytest.approx(step["rollout_time_s"])
    assert row["timing_s/gen_fcfs"] == pytest.approx(step["fcfs_rollout_time_s"])
    assert row["timing_s/step"] == pytest.approx(step["step_time_s"])
    assert row["rollout_len/saving_vs_fcfs"] == pytest.approx(step["saving"])
    assert row["critic/score/mean"] == pytest.approx(step["reward_mean"])
    assert row["response_length/max"] <= 6 and row["response_length/min"] >= 1
    assert math.isnan(row["rollout_len/predictor_mae"])
    assert row["rollout_len/timeline/_type"] == "image-file"  # wandb.Image, stored with the run
    assert (run_dir / "files" / row["rollout_len/timeline/path"]).read_bytes()[:4] == b"\x89PNG"
    assert row["demo/saving"] == pytest.approx(step["saving"])  # the dashboard's panels, in the same row
    assert row["demo/steps/_type"] == "table-file" and row["demo/report/_type"] == "html-file"
    assert row["demo/saving_per_step_table/_type"] == "table-file" and row["demo/response_lengths/_type"] == "histogram"


def test_partial_mode_trains_on_whole_carried_groups_beside_fcfs(ray_session, tmp_path, monkeypatch, capsys):
    """--mode partial: every step trains on prompts_per_step whole groups out of twice as many in
    flight; the rest is carried (tokens made by earlier weights: staleness 1), and the throughput
    ratio to the fcfs measurement comes with its interval."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    flags = TINY + ["--steps", "3", "--mode", "partial", "--max-staleness", "1", "--out", str(out)]
    summary = grpo_demo.main(flags)
    printed = capsys.readouterr().out
    assert "throughput x fcfs so far" in printed
    written = json.loads((out / "summary.json").read_text())
    rows = written["steps"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert sorted(len(g) for g in r["lengths"]) == [4, 4], "two whole groups of 4 per step"
        assert r["trained_tokens"] == sum(r["staleness_tokens"].values()) == sum(map(sum, r["lengths"]))
        assert r["rollout_time_s"] > 0 and r["fcfs_rollout_time_s"] > 0 and r["fcfs_tokens"] == 8 * 6
    assert rows[0]["launched_groups"] == 4 and rows[0]["carried_samples"] > 0
    assert any(int(k) == 1 for r in rows for k in r["staleness_tokens"]), "no carried token was trained"
    assert all(int(k) <= 1 for r in rows for k in r["staleness_tokens"]), "the bound is 1 step"
    assert written["fresh_token_share"] == 1.0
    lo, hi = written["partial_throughput_ratio_ci95"]
    assert lo <= written["partial_throughput_ratio"] <= hi
    expected = (sum(r["trained_tokens"] for r in rows) / sum(r["rollout_time_s"] for r in rows)) / (
        sum(r["fcfs_tokens"] for r in rows) / sum(r["fcfs_rollout_time_s"] for r in rows)
    )
    assert written["partial_throughput_ratio"] == pytest.approx(expected)
    assert all(r["rollout_is_mean"] is not None for r in rows)  # verl's rollout correction ran
    assert len((out / "responses.jsonl").read_text().splitlines()) == 3 * 8
    page = (out / "report.html").read_text()
    assert 'id="throughput-chart"' in page and 'id="saving-chart"' not in page  # no synchronous comparison ran
    rows_logged = history(Path(summary["wandb_run_dir"]))
    assert [r["demo/partial_throughput_ratio"] for r in rows_logged][-1] == pytest.approx(
        written["partial_throughput_ratio"]
    )
    assert rows_logged[-1]["demo/staleness_table/_type"] == "table-file"


def test_default_mode_trains_on_partial_steps_beside_both_synchronous_rollouts(
    ray_session, tmp_path, monkeypatch, capsys
):
    """The default --mode both: each step trains on a partial step and measures length_aware and fcfs
    synchronous rollouts of the step's batch beside it, in a rotating order; summary.json, the HTML
    report and the wandb run hold both comparisons."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert grpo_demo.load_config(["--out", "none"])["mode"] == "both"
    summary = grpo_demo.main(TINY + ["--steps", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "median rollout saving vs fcfs" in printed and "throughput x fcfs so far" in printed
    written = json.loads((out / "summary.json").read_text())
    rows = written["steps"]
    assert [r["rollout_order"] for r in rows] == [list(order) for order in grpo_demo.ROLLOUT_ORDERS[:2]]
    for r in rows:
        p = r["partial"]
        assert sorted(len(g) for g in p["lengths"]) == [4, 4], "two whole groups of 4 trained per step"
        assert sorted(len(g) for g in r["lengths"]) == [4, 4], "the synchronous batch: 2 groups of 4"
        assert p["trained_tokens"] == sum(p["staleness_tokens"].values()) == sum(map(sum, p["lengths"]))
        # one fcfs rollout serves both comparisons
        assert p["fcfs_rollout_time_s"] == r["fcfs_rollout_time_s"] and p["fcfs_tokens"] == 8 * 6
        assert r["saving"] == pytest.approx(1 - r["rollout_time_s"] / r["fcfs_rollout_time_s"])
        assert r["reward_mean"] == p["reward_mean"]  # the trained run's reward
    assert rows[0]["partial"]["launched_groups"] == 4 and rows[1]["partial"]["carried_samples"] > 0
    expected = (
        sum(r["partial"]["trained_tokens"] for r in rows) / sum(r["partial"]["rollout_time_s"] for r in rows)
    ) / (sum(r["partial"]["fcfs_tokens"] for r in rows) / sum(r["fcfs_rollout_time_s"] for r in rows))
    assert written["partial_throughput_ratio"] == pytest.approx(expected)
    lo, hi = written["partial_throughput_ratio_ci95"]
    assert lo <= written["partial_throughput_ratio"] <= hi
    assert written["saving_ci95"][0] <= written["median_saving"] <= written["saving_ci95"][1]
    assert "partial_throughput_note" not in written
    page = (out / "report.html").read_text()
    assert all(f'id="{chart}"' in page for chart in ("saving-chart", "throughput-chart", "staleness-chart"))

    logged = history(Path(summary["wandb_run_dir"]))
    assert [r["timing_s/gen"] for r in logged] == pytest.approx([r["partial"]["rollout_time_s"] for r in rows])
    assert [r["timing_s/gen_length_aware"] for r in logged] == pytest.approx([r["rollout_time_s"] for r in rows])
    assert [r["rollout_len/saving_vs_fcfs"] for r in logged] == pytest.approx([r["saving"] for r in rows])
    assert logged[-1]["demo/partial_throughput_ratio"] == pytest.approx(written["partial_throughput_ratio"])
    assert logged[-1]["demo/staleness_table/_type"] == "table-file" and logged[-1]["demo/report/_type"] == "html-file"
