"""bench soak on the tiny model: every step re-fits the PLP head on the same fixed budget, in the
background, while the replay buffer grows."""

import json

import pytest

from rollout_len.bench.soak import run

STEPS_PER_REFIT = 64  # RolloutConfig.refit_steps
BATCH = 64  # OnlineTrainer's batch_size in the Coordinator


@pytest.mark.parametrize("lag", [0, 1])
def test_the_refit_costs_the_same_as_the_buffer_grows(lag, tmp_path, capsys):
    out = tmp_path / "soak.json"
    result = run(steps=6, prompts=2, n=3, max_new_tokens=10, every=4, refit_lag=lag, json_path=str(out), window=2)
    assert json.loads(out.read_text())["config"]["refit_lag"] == lag
    rows = result["steps"]
    buffer = [r["buffer"] for r in rows]
    assert all(b > a for a, b in zip(buffer, buffer[1:]))  # every step adds its finished samples' checkpoints
    # The re-fits that finished by step i: lag 0 waits for the previous one at the start, lag 1 at the end.
    fitted = [r["refit_examples"] for r in rows[1 + lag :]]
    assert fitted == [STEPS_PER_REFIT * BATCH] * len(fitted)
    assert rows[0]["refit_examples"] == 0
    assert all(r["rss_mb"] > 0 and r["wall_s"] >= r["rollout_s"] > 0 for r in rows)
    assert [w["steps"] for w in result["windows"]] == [[0, 1], [2, 3], [4, 5]]
    assert result["step_time_change"] == pytest.approx(
        result["windows"][-1]["wall_s"] / result["windows"][1]["wall_s"] - 1
    )
    assert "re-fit on the critical path" in capsys.readouterr().out


def test_bad_soak_settings_are_refused():
    with pytest.raises(ValueError, match="--steps must be >= 30"):
        run(steps=20)  # 20 would compare steps 10-19 with themselves
    with pytest.raises(ValueError, match="--update-s must be >= 0"):
        run(steps=30, update_s=-1)
