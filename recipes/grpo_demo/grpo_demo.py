"""GRPO with length-aware rollouts: rollout_len's demo, small enough for a 2-core CPU.

    make grpo-demo GRPO_ARGS="--steps 5 --out runs/grpo"
    .venv/bin/python recipes/grpo_demo/grpo_demo.py --config recipes/grpo_demo/grpo_demo.yaml [--key value ...]

Every key of the YAML is also a flag (`max_new_tokens` -> `--max-new-tokens`). The prompts are a task of
`rollout_len.tasks` (`--task arith`: synthetic arithmetic of four difficulties, the workload
chosen in docs/results/workload.md; `--task gsm8k`: GSM8K, step by step). One GRPO step:

  gen            LengthAwareRollout.generate_sequences (rollout_len.verl) on a verl DataProto of the task's chat
                 prompts, samples_per_prompt rows each: its Coordinator schedules them on Ray rollout workers
                 around predicted lengths and re-fits the length predictor from the finished samples
  gen_fcfs       the same batch and seed with the length-blind policy (meta_info asks for fcfs), as a
                 measurement only (responses discarded); the two alternate which goes first from step to step
  replay         the simulator's replay of the step's recorded lengths with fcfs, pool, length_aware and the
                 oracle (rollout_len.verl.demo_report.SimReplay): the noise-free saving, the floor and the
                 oracle's saving (what exact lengths give the same planner) beside the live one
  reward         verl's DAPO reward manager: 1 for a right final number (rollout_len.data.answer_correct, or
                 verl's GSM8K checker), plus the overlong penalty near max_new_tokens when overlong_buffer > 0
                 (rollout_len.verl.reward)
  adv            verl's GRPO outcome advantage (core_algos.compute_grpo_outcome_advantage)
  update_actor   one AdamW step on verl's PPO clipped policy loss, one forward/backward per prompt group
                 (rollout_len.verl.actor: ratio 1, as verl with ppo_epochs=1 and one mini-batch); the last
                 `train_layers` decoder layers and the final norm are trained (0: every weight)
  update_weights the trainer's weights to every rollout worker, then a check that the workers' logits on a
                 prompt match the trainer's

Three modes (`--mode`):

  both (default) each step runs three rollouts on the same weights, in one of the six orders in turn: the
                 partial run's step (trained on), and length_aware and fcfs on the step's synchronous batch
                 (measured only; the replay and savings above compare these two). The partial step
                 (LengthAwareRollout.generate_partial) returns prompts_per_step complete groups out of
                 prompts_per_step / (1 - over_sample_rate) in flight and carries the rest, with their tokens, into
                 the next step (a carried sample older than max_staleness steps is restarted or its group dropped:
                 on_stale); the actor weights stale tokens by verl's truncated importance ratio
                 (rollout_is_threshold). Its figure: trained tokens per second against the fcfs synchronous
                 rollout's, their ratio with a 95% bootstrap interval over steps, and the staleness histogram
                 (rollout_len.verl.partial_report)
  sync           the synchronous comparison alone: length_aware and fcfs, trained on length_aware's rollout
  partial        the partial run alone, each step beside an fcfs synchronous rollout of the step's batch

Timings follow verl's names (timing_s/gen, ..., timing_s/step = the step without gen_fcfs). The rollout
times compared (timing_s/gen, timing_s/gen_fcfs) are driver wall times of the two rollouts, each with its
tokenization and packing; the length-aware one also pays the predictor's re-fit. Over the steps: the median
saving with a 95% bootstrap interval (`rollout_len.bench.rollout.bootstrap_median_ci`), the replays' oracle
saving, the capped share and the reward's slope with its interval (`measure`). Writes `out/summary.json`,
the dashboard `out/report.html` (self-contained), PNG charts (`step_time_saving.png`,
`timeline_step<k>.png`), the responses with their rewards (`responses.jsonl`) and a wandb run with the
same panels (offline unless WANDB_MODE says otherwise) under `out/wandb`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import yaml

DEFAULT_CONFIG = Path(__file__).with_name("grpo_demo.yaml")
ACTOR_KEYS = ("train_layers", "lr", "weight_decay", "grad_clip", "clip_ratio", "loss_agg_mode", "temperature")
PARTIAL_NOTE = "not measured: --mode sync runs no stall-free steps (the default --mode both does)"


def load_config(argv: list[str] | None = None) -> dict:
    """The YAML (--config) with any `--key value` flag on top; every YAML key is a flag."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    known, rest = pre.parse_known_args(argv)
    if not known.config.is_file():
        raise ValueError(f"config (--config) {str(known.config)!r} is not a file")
    cfg = yaml.safe_load(known.config.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise ValueError(f"config (--config) {str(known.config)!r} is not a YAML mapping of settings")
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
    from rollout_len.tasks import TASKS

    if args["task"] not in TASKS:
        raise ValueError(f"task (--task) {args['task']!r} is unknown; valid: {sorted(TASKS)}")
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
    if args["mode"] not in MODES:
        raise ValueError(f"mode (--mode) {args['mode']!r} is unknown; valid: {MODES}")
    if not 0 <= args["over_sample_rate"] < 1:
        raise ValueError(f"over_sample_rate (--over-sample-rate) must be in [0, 1), got {args['over_sample_rate']}")
    if args["max_staleness"] < 0:
        raise ValueError(f"max_staleness (--max-staleness) must be >= 0, got {args['max_staleness']}")
    from rollout_len.sched.partial import ON_STALE

    if args["on_stale"] not in ON_STALE:
        raise ValueError(f"on_stale (--on-stale) {args['on_stale']!r} is unknown; valid: {list(ON_STALE)}")
    if args["train_layers"] < 0:
        raise ValueError(f"train_layers (--train-layers) must be >= 0 (0: every weight), got {args['train_layers']}")
    _check_numbers(args)
    from rollout_len.verl.reward import ANSWER_METHODS

    if args["reward_method"] not in ANSWER_METHODS:
        raise ValueError(
            f"reward_method (--reward-method) {args['reward_method']!r} is unknown; valid: {ANSWER_METHODS}"
        )
    if args["wandb_mode"] not in WANDB_MODES:
        raise ValueError(f"wandb_mode (--wandb-mode) {args['wandb_mode']!r} is unknown; valid: {WANDB_MODES}")
    out = args["out"]
    if out is not None:  # every file goes there, and wandb starts late: make the folder now
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"out (--out) {out!r} is a file, not a folder")
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"out (--out) {out!r} cannot be created: {err.strerror}") from None
    return args


WANDB_MODES = ("offline", "online", "disabled")
MODES = ("both", "sync", "partial")
# both: the three rollouts of a step run in each of the six orders in turn, so over six steps every policy
# runs first, second and third twice and each pair runs in each order three times (the machine's load drifts)
ROLLOUT_ORDERS = tuple(itertools.permutations(("length_aware", "fcfs", "partial")))


def _check_numbers(args: dict) -> None:
    """Finite numbers in range, named by their flag (torch and the actor would raise much later)."""
    ranges = {  # key: (is the finite value valid?, what it must be)
        "temperature": (lambda v: v > 0, "> 0"),
        "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "lr": (lambda v: v > 0, "> 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "grad_clip": (lambda v: v > 0, "> 0"),
        "clip_ratio": (lambda v: v > 0, "> 0"),
        "format_score": (lambda v: True, "a finite number"),
        "overlong_penalty": (lambda v: True, "a finite number"),
        "rollout_is_threshold": (lambda v: v > 0, "> 0"),
    }
    for key, (valid, what) in ranges.items():
        value = float(args[key])
        if not (math.isfinite(value) and valid(value)):
            what = what if what.startswith("a finite") else f"a finite number {what}"
            raise ValueError(f"{key} (--{key.replace('_', '-')}) must be {what}, got {args[key]}")


def _first(order: tuple[str, ...], a: str, b: str) -> str:
    """Which of rollouts `a` and `b` ran first in `order`."""
    return a if order.index(a) < order.index(b) else b


class UsageError(ValueError):
    """Bad input found after the flags were read (a model that does not load): one line, no traceback."""


def _none_or_str(text: str) -> str | None:
    return None if text.lower() in ("", "none", "null") else text


class GRPODemo:
    """setup() once, train_step(step) per step, cleanup() at the end (torchtune's recipe shape)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def setup(self) -> None:
        import ray

        from rollout_len.data import encode_prompt
        from rollout_len.model import load_policy
        from rollout_len.rollout.coordinator import RolloutConfig
        from rollout_len.tasks import task_prompts
        from rollout_len.verl import LengthAwareRollout
        from rollout_len.verl.actor import GRPOActor
        from rollout_len.verl.demo_report import SimReplay
        from rollout_len.verl.reward import answer_reward_manager
        from rollout_len.verl.settings import coordinator_config

        c = self.cfg
        start = time.perf_counter()
        # The trainer's copy first: the first load of the embedded model converts it once, and the
        # rollout workers then load the converted copy.
        try:
            policy = load_policy(c["model"], dtype=c["dtype"], device=c["device"])
        except (ValueError, OSError) as err:  # load_policy's messages name the model and what to do
            raise UsageError(f"model (--model): {err}") from None
        self.model, self.tokenizer = policy.model, policy.tokenizer
        partial = c["mode"] in ("partial", "both")  # the run trains on partial steps
        correction = c["rollout_is_threshold"] if partial else None  # synchronous rollouts are on-policy
        self.actor = GRPOActor(self.model, rollout_is_threshold=correction, **{key: c[key] for key in ACTOR_KEYS})
        penalty = {key: c[key] for key in ("format_score", "overlong_buffer", "overlong_penalty")}
        self.reward_manager = answer_reward_manager(
            self.tokenizer, max_response_length=c["max_new_tokens"], method=c["reward_method"], **penalty
        )
        self.partial_run = None
        per_step = c["prompts_per_step"]
        if partial:
            from rollout_len.sched.partial import PartialConfig, PartialRun

            settings_partial = PartialConfig(per_step, c["over_sample_rate"], c["max_staleness"], c["on_stale"])
            self.partial_run, self.next_prompt = PartialRun(settings_partial), 0
            per_step = max(per_step, settings_partial.in_flight)  # the most a partial step can launch
        self.prompts = task_prompts(c["task"], c["steps"] * per_step, c["seed"])
        settings = {f.name: c[f.name] for f in fields(RolloutConfig) if f.name in c}  # seed, workers, slots, ...
        self.replay = SimReplay(coordinator_config(settings, "settings"), c["max_new_tokens"])
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
            settings=settings,
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

    def sync_batch(self, step: int):
        """The step's prompts_per_step prompts, samples_per_prompt rows each: what a synchronous run takes."""
        from rollout_len.verl.gsm8k import records_batch, task_records

        c, q = self.cfg, self.cfg["prompts_per_step"]
        records = task_records(self.prompts[step * q : (step + 1) * q], f"rollout_len/{c['task']}")
        return records_batch(records, c["samples_per_prompt"], uid_prefix=f"step{step}-")

    def partial_batch(self, step: int):
        """(the new groups the partial run's next step launches, their count); (None, 0) when the carried
        groups fill it. The partial run takes prompts from its own place in the list, under its own ids."""
        from rollout_len.verl import SEED_KEY
        from rollout_len.verl.gsm8k import records_batch, task_records

        c = self.cfg
        launch = self.partial_run.groups_to_launch()
        items = self.prompts[self.next_prompt : self.next_prompt + launch]
        self.next_prompt += launch
        if not launch:
            return None, 0
        records = task_records(items, f"rollout_len/{c['task']}")
        batch = records_batch(records, c["samples_per_prompt"], uid_prefix=f"p{step}-")
        batch.meta_info[SEED_KEY] = c["seed"] + step
        return batch, launch

    def rollout_as(self, which: str, batch, step: int):
        """One timed rollout; `which`: "length_aware" or "fcfs" (a synchronous rollout of `batch` with the
        step's seed) or "partial" (the partial run's next step, launching `batch`). (output, seconds)."""
        from rollout_len.verl import POLICY_KEY, SEED_KEY

        start = time.perf_counter()
        if which == "partial":
            output, self.partial_run = self.rollout.generate_partial(batch, self.partial_run)
        else:
            batch.meta_info.update({SEED_KEY: self.cfg["seed"] + step, POLICY_KEY: which})
            output = self.rollout.generate_sequences(batch)
        return output, time.perf_counter() - start

    def rollouts(self, order: tuple[str, ...], step: int, batch, launched=None) -> tuple[dict, dict]:
        """The step's rollouts, one after another in `order` (`rollout_as`; "partial" launches `launched`,
        the others run `batch`); (outputs, seconds) by name."""
        outputs, times = {}, {}
        for which in order:
            outputs[which], times[which] = self.rollout_as(which, launched if which == "partial" else batch, step)
        return outputs, times

    def learn_partial(self, data, times: dict, launch: int, order: tuple[str, ...]) -> tuple[dict, list, dict]:
        """`learn` on a partial step's rows, timed beside the fcfs rollout; (metrics with the partial
        summary row's demo/* entries, reward details, the step's timing)."""
        timing = {"gen": times["partial"], "gen_fcfs": times["fcfs"]}
        metrics, details = self.learn(data, timing)
        metrics.update({"timing_s/gen_fcfs": times["fcfs"], "demo/launched_groups": launch})
        metrics["demo/first_rollout"] = _first(order, "partial", "fcfs")
        return metrics, details, timing

    def rewards(self, data):
        """Token-level scores (the reward on each response's last token) and per-row details."""
        from rollout_len.verl.reward import score_batch

        return score_batch(self.reward_manager, data)

    def train_step(self, step: int) -> dict:
        """One GRPO step of a synchronous run: length_aware and fcfs on the same batch and seed (alternating
        which goes first), trained on the length_aware rollout. Returns `comparison`'s result."""
        from rollout_len.verl.demo_report import response_records

        batch = self.sync_batch(step)
        order = ("length_aware", "fcfs") if step % 2 == 0 else ("fcfs", "length_aware")
        outputs, times = self.rollouts(order, step, batch)
        data = outputs["length_aware"]
        data.non_tensor_batch.update(batch.non_tensor_batch)  # the dataset's fields next to the rollout's, row by row
        timing = {"gen": times["length_aware"], "gen_fcfs": times["fcfs"]}
        metrics, details = self.learn(data, timing)
        result = self.comparison(step, data, outputs["fcfs"], metrics, timing, order[0])
        result["responses"] = response_records(data, details)
        return result

    def both_step(self, step: int) -> dict:
        """One GRPO step of the default run: three rollouts on the same weights, in one of the six orders
        (`ROLLOUT_ORDERS`, so each pair's order is balanced over six steps): the partial run's step (trained
        on), and length_aware and fcfs on the step's synchronous batch (measured only). Returns the
        synchronous `comparison` (its "metrics" as if length_aware's rollout had been trained on, for the
        summary row) with "partial": the partial step's summary row, "order": the rollouts' order, and
        "logged": the metrics of the step as trained (verl's names) with the comparison's rollout_len/*."""
        from rollout_len.verl.demo_report import response_records
        from rollout_len.verl.partial_report import summary_row

        batch, (launched, launch) = self.sync_batch(step), self.partial_batch(step)
        order = ROLLOUT_ORDERS[step % len(ROLLOUT_ORDERS)]
        outputs, times = self.rollouts(order, step, batch, launched)
        data, aware, blind = outputs["partial"], outputs["length_aware"], outputs["fcfs"]
        aware.non_tensor_batch.update(batch.non_tensor_batch)  # uid: its groups for the replay
        metrics, details, timing = self.learn_partial(data, times, launch, order)
        partial = summary_row(step, metrics, data, blind)
        # The synchronous comparison as if length_aware's rollout had been this step's.
        sync_timing = {
            **timing,
            "gen": times["length_aware"],
            "step": timing["step"] - timing["gen"] + times["length_aware"],
        }
        lengths = aware.batch["response_mask"].sum(dim=-1).float()
        sync_metrics = {
            **metrics,
            **{f"timing_s/{key}": value for key, value in sync_timing.items()},
            "response_length/mean": float(lengths.mean()),
            "response_length/clip_ratio": float((lengths >= self.cfg["max_new_tokens"]).float().mean()),
        }
        result = self.comparison(step, aware, blind, sync_metrics, sync_timing, _first(order, "length_aware", "fcfs"))
        result.update(partial=partial, order=list(order), responses=response_records(data, details))
        result["logged"] = {  # what the wandb run logs: the trained step, the comparison's rollout_len/* beside it
            **metrics,
            **{k: v for k, v in result["metrics"].items() if k.startswith("rollout_len/")},
            "timing_s/gen_length_aware": times["length_aware"],
        }
        return result

    def comparison(self, step: int, aware, blind, metrics: dict, timing: dict[str, float], first: str) -> dict:
        """A step's synchronous comparison: {"metrics": `metrics` with the comparison's rollout_len/*,
        "timelines": both rollouts', "first": the policy that ran first, "step_fcfs_s": the GRPO step time
        with the fcfs rollout, "lengths": length_aware's response lengths by group, "sim": the simulator's
        replay of them}. `timing`: gen (length_aware), gen_fcfs and step (the GRPO step with the
        length_aware rollout), seconds."""
        from rollout_len.verl.demo_report import (
            RESULT_KEY,
            comparison_metrics,
            group_lengths,
            step_cost_model,
            timelines,
        )

        lengths = group_lengths(aware)
        prompt_width = aware.batch["prompts"].shape[1]  # left-padded prompts: the mask counts real tokens
        prompt_tokens = int(aware.batch["attention_mask"][:, :prompt_width].sum(dim=1).float().mean())
        cost = step_cost_model(aware.meta_info[RESULT_KEY]["metrics"])
        sim = self.replay.step(lengths, prompt_tokens, seed=self.cfg["seed"] + step, cost=cost)
        return {
            "metrics": {**metrics, **comparison_metrics(aware, blind, timing)},
            "timelines": timelines(aware, blind),
            "first": first,
            "step_fcfs_s": timing["step"] - timing["gen"] + timing["gen_fcfs"],
            "lengths": lengths,
            "sim": sim,
        }

    def learn(self, data, timing: dict[str, float]) -> tuple[dict, list[dict]]:
        """reward, adv, update_actor and update_weights on a rollout's data (timed into `timing`);
        returns verl's step metrics and the per-row reward details."""
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_timing_metrics
        from verl.utils.debug.metrics import calculate_debug_metrics

        start = time.perf_counter()
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
            "rollout_len/sync_max_logit_diff": self.worker_logit_diff(self.probe),
            "reward/correct_mean": float(np.mean([d["acc"] for d in details])),
            "reward/overlong_penalty_mean": float(np.mean([d["overlong_reward"] for d in details])),
            # Timings are wall times: other work on the machine shows here (1-minute load average).
            "system/load_average": os.getloadavg()[0],
        }
        return metrics, details

    def partial_step(self, step: int) -> dict:
        """One GRPO step on a partial rollout, beside an fcfs synchronous rollout of the step's synchronous
        batch (measurement only; the two alternate which goes first)."""
        from rollout_len.verl.demo_report import response_records
        from rollout_len.verl.partial_report import summary_row

        (launched, launch), batch = self.partial_batch(step), self.sync_batch(step)
        order = ("partial", "fcfs") if step % 2 == 0 else ("fcfs", "partial")
        outputs, times = self.rollouts(order, step, batch, launched)
        data = outputs["partial"]
        metrics, details, _ = self.learn_partial(data, times, launch, order)
        return {
            "metrics": metrics,
            "row": summary_row(step, metrics, data, outputs["fcfs"]),
            "responses": response_records(data, details),
        }

    def cleanup(self) -> None:
        import ray

        self.rollout.shutdown()
        if self.started_ray:
            ray.shutdown()


def measure(rows: list[dict], max_new_tokens: int) -> dict:
    """The run's figures over its steps so far (summary rows, `demo_report.summary_row`): medians over
    steps of the live saving (with its 95% bootstrap interval, `saving_ci95` [low, high]), of the
    simulator replay's length_aware and oracle savings over fcfs and of the shares of the oracle's
    saving (None where no step defines one); the share of responses at max_new_tokens; the
    least-squares slope of the reward mean per step with its bootstrap interval (None before two steps)."""
    from rollout_len.bench.rollout import bootstrap_median_ci
    from rollout_len.verl.demo_report import slope_ci

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.median(values)) if values else None

    lengths = np.array([x for r in rows for g in r["lengths"] for x in g])
    slope, slope_ci95 = slope_ci([r["step"] for r in rows], [r["reward_mean"] for r in rows])
    return {
        "median_saving": median("saving"),
        "saving_ci95": list(bootstrap_median_ci([r["saving"] for r in rows])),
        "sim_saving": median("sim_saving"),
        "oracle_saving": median("oracle_saving"),
        "oracle_gain_share": median("oracle_gain_share"),
        "sim_oracle_gain_share": median("sim_oracle_gain_share"),
        "capped_fraction": float((lengths >= max_new_tokens).mean()),
        "partial_throughput_ratio": None,
        "partial_throughput_note": PARTIAL_NOTE,
        "reward_slope": slope,
        "reward_slope_ci95": slope_ci95,
    }


def measure_partial(rows: list[dict], max_new_tokens: int) -> dict:
    """A partial-mode run's figures so far (rows: `partial_report.summary_row`): throughput of the
    partial run and of the fcfs measurements (trained tokens / rollout seconds, summed over steps),
    their ratio with a 95% bootstrap interval over steps, the share of trained tokens at staleness
    <= 1, the staleness histogram, the capped share, and the reward's least-squares slope with its
    interval (None before two steps)."""
    from rollout_len.bench.rollout import throughput_ratio_ci
    from rollout_len.verl.demo_report import slope_ci

    ratio, ci = throughput_ratio_ci(
        [r["trained_tokens"] for r in rows],
        [r["rollout_time_s"] for r in rows],
        [r["fcfs_tokens"] for r in rows],
        [r["fcfs_rollout_time_s"] for r in rows],
    )
    staleness: dict[str, int] = {}
    for r in rows:
        for key, value in r["staleness_tokens"].items():
            staleness[key] = staleness.get(key, 0) + value
    tokens = sum(staleness.values())
    lengths = np.array([x for r in rows for g in r["lengths"] for x in g])
    slope, slope_ci95 = slope_ci([r["step"] for r in rows], [r["reward_mean"] for r in rows])
    return {
        "partial_tokens_per_s": sum(r["trained_tokens"] for r in rows) / sum(r["rollout_time_s"] for r in rows),
        "fcfs_tokens_per_s": sum(r["fcfs_tokens"] for r in rows) / sum(r["fcfs_rollout_time_s"] for r in rows),
        "partial_throughput_ratio": ratio,
        "partial_throughput_ratio_ci95": list(ci),
        "fresh_token_share": sum(v for k, v in staleness.items() if int(k) <= 1) / tokens if tokens else None,
        "staleness_tokens": dict(sorted(staleness.items(), key=lambda kv: int(kv[0]))),
        "capped_fraction": float((lengths >= max_new_tokens).mean()),
        "reward_slope": slope,
        "reward_slope_ci95": slope_ci95,
    }


PARTIAL_FIGURES = (
    "partial_tokens_per_s",
    "fcfs_tokens_per_s",
    "partial_throughput_ratio",
    "partial_throughput_ratio_ci95",
    "fresh_token_share",
    "staleness_tokens",
)


def measure_both(rows: list[dict], max_new_tokens: int) -> dict:
    """A default (--mode both) run's figures: `measure`'s of the synchronous comparison (the reward is the
    trained partial run's) with `measure_partial`'s throughput and staleness figures of the partial rows."""
    measured = measure(rows, max_new_tokens)
    partial = measure_partial([r["partial"] for r in rows], max_new_tokens)
    del measured["partial_throughput_note"]
    return measured | {key: partial[key] for key in PARTIAL_FIGURES}


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
    if cfg["mode"] == "partial":
        return _main_partial(cfg, demo, run, out, wall)
    from rollout_len.verl import partial_report

    both = cfg["mode"] == "both"
    try:
        for step in range(cfg["steps"]):
            result = demo.both_step(step) if both else demo.train_step(step)
            rows.append(r := report.summary_row(step, result))
            if both:
                r.update(partial=result["partial"], rollout_order=result["order"])
            measured = (measure_both if both else measure)(rows, cfg["max_new_tokens"])
            print(report.step_line(r, result["metrics"], measured), flush=True)
            png = report.write_step(out, step, result, max_workers=cfg["num_workers"]) if out is not None else None
            report.log_step(run, step, result.get("logged", result["metrics"]), r, measured, png)
            if both:
                print(partial_report.step_line(r["partial"], measured), flush=True)
                partial_report.log_step(run, step, {}, r["partial"], measured)
    finally:
        demo.cleanup()
    wall = time.perf_counter() - wall
    print(report.format_table(rows, measured))
    if both:
        print(partial_report.format_table([r["partial"] for r in rows], measured))
    summary = report.write_summary(cfg, rows, measured, out, run, setup_s=demo.setup_s, wall_time_s=wall)
    print(f"total wall time {wall:.0f} s")
    return summary


def _main_partial(cfg: dict, demo: GRPODemo, run, out: Path | None, wall: float) -> dict:
    """The steps of a partial-mode run (rollout_len.verl.partial_report)."""
    import json

    from rollout_len.verl import partial_report as report

    rows = []
    try:
        for step in range(cfg["steps"]):
            result = demo.partial_step(step)
            rows.append(result["row"])
            measured = measure_partial(rows, cfg["max_new_tokens"])
            print(report.step_line(result["row"], measured), flush=True)
            report.log_step(run, step, result["metrics"], result["row"], measured)
            if out is not None:
                with (out / "responses.jsonl").open("a" if step else "w", encoding="utf-8") as f:
                    f.writelines(json.dumps({"step": step, **r}) + "\n" for r in result["responses"])
    finally:
        demo.cleanup()
    wall = time.perf_counter() - wall
    print(report.format_table(rows, measured))
    summary = report.write_summary(cfg, rows, measured, out, run, setup_s=demo.setup_s, wall_time_s=wall)
    print(f"total wall time {wall:.0f} s")
    return summary


if __name__ == "__main__":
    try:
        load_config(sys.argv[1:])  # a bad flag: one line naming it, before the heavy imports
    except ValueError as err:
        sys.exit(f"grpo_demo.py: error: {err}")
    try:
        main(sys.argv[1:])
    except UsageError as err:
        sys.exit(f"grpo_demo.py: error: {err}")
