"""`rollout-len bench rollout` end to end on a tiny model, in-process (the same samples for every policy)."""

import json

from rollout_len.bench.rollout import run


def test_bench_rollout_runs_every_policy_on_the_same_samples(tmp_path):
    out = tmp_path / "rollout.json"
    result = run(
        ("fcfs", "length_aware", "oracle"),
        workers=2,
        prompts=2,
        n=2,
        slots=2,
        max_new_tokens=12,
        warmup_steps=1,
        model="tiny-llama",
        json_path=str(out),
        use_ray=False,
    )
    assert json.loads(out.read_text())["policies"].keys() == {"fcfs", "length_aware", "oracle"}
    lengths = {name: p["lengths"] for name, p in result["policies"].items()}
    assert lengths["fcfs"] == lengths["length_aware"] == lengths["oracle"]  # per-sample RNG: same samples
    assert all(p["step_time_s"] > 0 for p in result["policies"].values())
