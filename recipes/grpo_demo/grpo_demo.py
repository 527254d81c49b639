"""GRPO on GSM8K with length-aware rollouts: rollout_len's demo, small enough for a 2-core CPU.

    make grpo-demo GRPO_ARGS="--steps 5 --out runs/grpo"
    .venv/bin/python recipes/grpo_demo/grpo_demo.py --config recipes/grpo_demo/grpo_demo.yaml [--key value ...]

Every key of the YAML is also a flag (`max_new_tokens` -> `--max-new-tokens`). One GRPO step:

  gen            LengthAwareRollout.generate_sequences (rollout_len.verl) on a verl DataProto of GSM8K chat
                 prompts, samples_per_prompt rows each: its Coordinator schedules them on Ray rollout workers
                 around predicted lengths and re-fits the length predictor from the finished samples
  gen_fcfs       the same batch and seed with the length-blind policy (meta_info asks for fcfs), as a
                 measurement only (responses discarded); the two alternate which goes first from step to step
  reward         verl's DAPO reward manager: verl's GSM8K checker on the decoded response plus the overlong
                 penalty near max_new_tokens (rollout_len.verl.reward)
  adv            verl's GRPO outcome advantage (core_algos.compute_grpo_outcome_advantage)
  update_actor   one AdamW step on verl's PPO clipped policy loss, one forward/backward per prompt group
                 (rollout_len.verl.actor: ratio 1, as verl with ppo_epochs=1 and one mini-batch); the last
                 `train_layers` decoder layers and the final norm are trained (0: every weight)
  update_weights the trainer's weights to every rollout worker, then a check that the workers' logits on a
                 prompt match the trainer's

Timings follow verl's names (timing_s/gen, ..., timing_s/step = the step without gen_fcfs). The rollout
times compared (timing_s/gen, timing_s/gen_fcfs) are driver wall times of the two rollouts, each with its
tokenization and packing; the length-aware one also pays the predictor's re-fit. Writes `out/summary.json`,
PNG charts (`step_time_saving.png`, `timeline_step<k>.png`), the responses with their rewards
(`responses.jsonl`) and a wandb run (offline unless WANDB_MODE says otherwise) under `out/wandb`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import yaml

DEFAULT_CONFIG = Path(__file__).with_name("grpo_demo.yaml")
ACTOR_KEYS = ("train_layers", "lr", "weight_decay", "grad_clip", "clip_ratio", "loss_agg_mode", "temperature")


def load_config(argv: list[str] | None = None) -> dict:
    """The YAML (--config) with any `--key value` flag on top; every YAML key is a flag."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    known, rest = pre.parse_known_args(argv)
    cfg = yaml.safe_load(known.config.read_text(encoding="utf-8"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[pre])
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=value)
        elif value is None or isinstance(value, str):  # "none" clears a setting (e.g. --out none: no files)
            parser.add_argument(flag, dest=key, default=value, type=_none_or_str)
        else:
            parser.add_argument(flag, dest=key, default=value, type=type(value))
    args = vars(parser.parse_args(rest))
    args.pop("config")
    for key in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "num_workers", "slots_per_worker"):
        if args[key] < 1:
            raise ValueError(f"{key} (--{key.replace('_', '-')}) must be >= 1, got {args[key]}")
    if args["samples_per_prompt"] < 2:
        raise ValueError("samples_per_prompt (--samples-per-prompt) must be >= 2: GRPO compares a prompt's samples")
    if not 0 <= args["overlong_buffer"] <= args["max_new_tokens"]:
        raise ValueError(
            f"overlong_buffer (--overlong-buffer) must be in 0..max_new_tokens ({args['max_new_tokens']}), "
            f"got {args['overlong_buffer']}"
        )
    if args["train_layers"] < 0:
        raise ValueError(f"train_layers (--train-layers) must be >= 0 (0: every weight), got {args['train_layers']}")
    return args


def _none_or_str(text: str) -> str | None:
    return None if text.lower() in ("", "none", "null") else text


class GRPODemo:
    """setup() once, train_step(step) per step, cleanup() at the end (torchtune's recipe shape)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def setup(self) -> None:
        import ray

        from rollout_len.data import encode_prompt, gsm8k_prompts
        from rollout_len.model import load_policy
        from rollout_len.rollout.coordinator import RolloutConfig
        from rollout_len.verl import LengthAwareRollout
        from rollout_len.verl.actor import GRPOActor
        from rollout_len.verl.reward import gsm8k_reward_manager

        c = self.cfg
        start = time.perf_counter()
        # The trainer's copy first: the first load of the embedded model converts it once, and the
        # rollout workers then load the converted copy.
        policy = load_policy(c["model"], dtype=c["dtype"], device=c["device"])
        self.model, self.tokenizer = policy.model, policy.tokenizer
        self.actor = GRPOActor(self.model, **{key: c[key] for key in ACTOR_KEYS})
        penalty = {key: c[key] for key in ("format_score", "overlong_buffer", "overlong_penalty")}
        self.reward_manager = gsm8k_reward_manager(
            self.tokenizer, max_response_length=c["max_new_tokens"], method=c["reward_method"], **penalty
        )
        self.rows = gsm8k_prompts(c["steps"] * c["prompts_per_step"])
        if len(self.rows) < c["steps"] * c["prompts_per_step"]:
            raise ValueError(f"steps x prompts_per_step exceeds the {len(self.rows)} GSM8K test problems")
        self.started_ray = not ray.is_initialized()
        if self.started_ray:  # a local Ray counts CPUs: one per worker thread, one for the (mostly idle) Coordinator
            cpus = {} if c["ray_address"] else {"num_cpus": c["num_workers"] * c["threads_per_worker"] + 1}
            ray.init(address=c["ray_address"], include_dashboard=False, log_to_driver=False, **cpus)
        self.rollout = LengthAwareRollout.start(
            c["model"],
            self.tokenizer,
            prompt_length=c["max_prompt_length"],
            response_length=c["max_new_tokens"],
            temperature=c["temperature"],
            top_p=c["top_p"],
            hf_model_type=self.model.config.model_type,
            settings={f.name: c[f.name] for f in fields(RolloutConfig) if f.name in c},  # seed, workers, slots, ...
        )
        # The workers load the same weights by name; waiting for their logits also waits for them to start.
        self.probe = encode_prompt(self.tokenizer, "What is 12*7?")
        self.start_logit_diff = self.worker_logit_diff(self.probe)
        self.setup_s = time.perf_counter() - start

    def worker_logit_diff(self, prompt_ids: list[int]) -> float:
        """Largest |logit difference| between any rollout worker and the trainer on a prompt's next token."""
        from rollout_len.verl.actor import last_token_logits

        trainer = last_token_logits(self.model, prompt_ids)
        return max(float((logits - trainer).abs().max()) for logits in self.rollout.worker_logits(prompt_ids))

    def rollouts(self, batch, step: int):
        """Both rollouts of a step, same seed, alternating which goes first; (outputs by policy, times)."""
        from rollout_len.verl import POLICY_KEY, SEED_KEY

        outputs, times = {}, {}
        for policy in ("length_aware", "fcfs") if step % 2 == 0 else ("fcfs", "length_aware"):
            batch.meta_info.update({SEED_KEY: self.cfg["seed"] + step, POLICY_KEY: policy})
            start = time.perf_counter()
            outputs[policy] = self.rollout.generate_sequences(batch)
            times["gen" if policy == "length_aware" else "gen_fcfs"] = time.perf_counter() - start
        return outputs, times

    def rewards(self, data):
        """Token-level scores (the reward on each response's last token) and per-row details."""
        from rollout_len.verl.reward import score_batch

        return score_batch(self.reward_manager, data)

    def train_step(self, step: int) -> dict:
        """One GRPO step; returns its metrics (verl's names plus rollout_len/*) and the two timelines."""
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_timing_metrics
        from verl.utils.debug.metrics import calculate_debug_metrics

        from rollout_len.verl.demo_report import comparison_metrics, response_records, timelines
        from rollout_len.verl.gsm8k import gsm8k_batch

        c = self.cfg
        rows = self.rows[step * c["prompts_per_step"] : (step + 1) * c["prompts_per_step"]]
        batch = gsm8k_batch(rows, c["samples_per_prompt"], uid_prefix=f"step{step}-")
        outputs, timing = self.rollouts(batch, step)
        data, blind = outputs["length_aware"], outputs["fcfs"]

        start = time.perf_counter()
        data.non_tensor_batch.update(batch.non_tensor_batch)  # the dataset's fields next to the rollout's, row by row
        scores, details = self.rewards(data)
        timing["reward"] = time.perf_counter() - start

        start = time.perf_counter()
        data.batch["token_level_scores"] = data.batch["token_level_rewards"] = scores  # no KL penalty in the reward
        data.batch["advantages"], data.batch["returns"] = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=scores, response_mask=data.batch["response_mask"], index=data.non_tensor_batch["uid"]
        )
        timing["adv"] = time.perf_counter() - start

        start = time.perf_counter()
        actor_metrics = self.actor.update(data)
        timing["update_actor"] = time.perf_counter() - start

        start = time.perf_counter()
        self.rollout.update_weights(self.actor.trained_state_dict(), partial=True)  # frozen weights never change
        timing["update_weights"] = time.perf_counter() - start
        timing["step"] = sum(timing[k] for k in ("gen", "reward", "adv", "update_actor", "update_weights"))

        metrics = {
            **compute_data_metrics(data, use_critic=False),
            **compute_timing_metrics(data, timing),
            **{f"timing_s/{k}": v for k, v in data.meta_info["timing"].items()},  # as verl's trainer logs them
            **calculate_debug_metrics(data),
            **actor_metrics,
            **comparison_metrics(data, blind, timing),
            "rollout_len/sync_max_logit_diff": self.worker_logit_diff(self.probe),
            "reward/gsm8k_mean": float(np.mean([d["acc"] for d in details])),
            "reward/overlong_penalty_mean": float(np.mean([d["overlong_reward"] for d in details])),
            # Timings are wall times: other work on the machine shows here (1-minute load average).
            "system/load_average": os.getloadavg()[0],
        }
        return {
            "metrics": metrics,
            "timelines": timelines(data, blind),
            "first": "length_aware" if step % 2 == 0 else "fcfs",
            "step_fcfs_s": timing["step"] - timing["gen"] + timing["gen_fcfs"],
            "responses": response_records(data, details),
        }

    def cleanup(self) -> None:
        import ray

        self.rollout.shutdown()
        if self.started_ray:
            ray.shutdown()


def main(argv: list[str] | None = None) -> dict:
    from rollout_len.verl import demo_report as report

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cfg = load_config(argv)
    wall = time.perf_counter()
    out = Path(cfg["out"]) if cfg["out"] else None
    demo = GRPODemo(cfg)
    print(report.setup_line(cfg), flush=True)
    demo.setup()
    print(f"ready in {demo.setup_s:.1f} s (workers vs trainer: |logit diff| {demo.start_logit_diff:.2e})", flush=True)
    run = report.start_wandb(cfg, out)
    rows = []
    try:
        for step in range(cfg["steps"]):
            result = demo.train_step(step)
            rows.append(r := report.summary_row(step, result))
            print(report.step_line(r, result["metrics"]), flush=True)
            png = report.write_step(out, step, result, max_workers=cfg["num_workers"]) if out is not None else None
            report.log_step(run, step, result["metrics"], png)
    finally:
        demo.cleanup()
    wall = time.perf_counter() - wall
    print(report.format_table(rows))
    summary = report.write_summary(cfg, rows, out, run, setup_s=demo.setup_s, wall_time_s=wall)
    print(f"total wall time {wall:.0f} s")
    return summary


if __name__ == "__main__":
    try:
        load_config(sys.argv[1:])  # a bad flag: one line naming it, before the heavy imports
    except ValueError as err:
        sys.exit(f"grpo_demo.py: error: {err}")
    main(sys.argv[1:])
