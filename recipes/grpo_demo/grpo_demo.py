"""GRPO on GSM8K with length-aware rollouts: rollout_len's demo, small enough for a 2-core CPU.

    make grpo-demo GRPO_ARGS="--steps 5 --out runs/grpo"
    .venv/bin/python recipes/grpo_demo/grpo_demo.py --config recipes/grpo_demo/grpo_demo.yaml [--key value ...]

Every key of the YAML is also a flag (`max_new_tokens` -> `--max-new-tokens`). One GRPO step:

  gen            LengthAwareRollout (rollout_len.verl, verl's agent-loop manager interface) turns a
                 verl DataProto of GSM8K chat prompts into samples_per_prompt responses each; its
                 Coordinator schedules them on Ray rollout workers around predicted lengths, and
                 re-fits the length predictor from the finished samples
  gen_fcfs       the same prompts, seed, workers and slots with the length-blind policy (fcfs), as a
                 measurement only: its responses are discarded. The two rollouts alternate which
                 goes first from step to step
  reward         verl's DAPO reward manager: verl's GSM8K checker on the decoded response, plus the
                 overlong penalty near max_new_tokens
  adv            verl's GRPO outcome advantage (core_algos.compute_grpo_outcome_advantage)
  update_actor   one AdamW step on verl's PPO clipped policy loss (core_algos.compute_policy_loss_vanilla),
                 one forward/backward per prompt group. The last `train_layers` decoder layers and
                 the final norm are trained, embeddings and LM head frozen (0: every weight, full
                 fine-tuning); with one update per
                 batch the old log-probs are the current ones, so the PPO ratio is 1 (as in verl
                 with ppo_epochs=1 and one mini-batch)
  update_weights the trainer's weights to every rollout worker, then a check that a worker's logits
                 on a prompt match the trainer's

Timings follow verl's names (timing_s/gen, ..., timing_s/step = the step without gen_fcfs). The
rollout times compared (timing_s/gen = rollout_len/step_time_s, timing_s/gen_fcfs) are driver wall
times of the two rollouts, each with its tokenization and packing; the length-aware one also pays
the predictor's re-fit. Writes `out/summary.json`, PNG charts (`step_time_saving.png`,
`timeline_step<k>.png`), the responses with their rewards (`responses.jsonl`) and a wandb run
(offline unless WANDB_MODE says otherwise) under `out/wandb`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

DEFAULT_CONFIG = Path(__file__).with_name("grpo_demo.yaml")

# ----------------------------------------------------------------------------- config


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
            raise ValueError(f"{key} must be >= 1, got {args[key]}")
    if args["samples_per_prompt"] < 2:
        raise ValueError("samples_per_prompt must be >= 2: GRPO compares the samples of one prompt")
    if not 0 <= args["overlong_buffer"] <= args["max_new_tokens"]:
        raise ValueError(f"overlong_buffer must be in 0..max_new_tokens ({args['max_new_tokens']}), "
                         f"got {args['overlong_buffer']}")
    if args["train_layers"] < 0:
        raise ValueError(f"train_layers must be >= 0 (0: every weight), got {args['train_layers']}")
    return args


def _none_or_str(text: str) -> str | None:
    return None if text.lower() in ("", "none", "null") else text


# ----------------------------------------------------------------------------- pieces


class SeededCoordinator:
    """The Coordinator actor as LengthAwareRollout sees it, plus two things a side-by-side run needs:
    `run_step` gets the seed chosen here (so both policies draw the same random numbers), and the
    reference to its result is kept (the step's timeline is not part of verl's output)."""

    def __init__(self, actor):
        self.actor = actor
        self.seed: int | None = None
        self.last_result = None  # ObjectRef of the last run_step's StepResult
        self.run_step = SimpleNamespace(remote=self._run_step)

    def _run_step(self, *args, **kwargs):
        kwargs.setdefault("seed", self.seed)
        self.last_result = self.actor.run_step.remote(*args, **kwargs)
        return self.last_result

    def __getattr__(self, name):
        return getattr(self.actor, name)


def gsm8k_batch(rows: list[dict], n: int, step: int):
    """A verl generation batch: GSM8K chat prompts with a uid each, repeated n times in a row."""
    from verl import DataProto

    from rollout_len.verl.gsm8k import gsm8k_records

    records = gsm8k_records(rows, "test")

    def column(values):
        return np.fromiter(values, dtype=object, count=len(records))

    batch = DataProto.from_single_dict({
        "raw_prompt": column(r["prompt"] for r in records),
        "data_source": column(r["data_source"] for r in records),
        "reward_model": column(r["reward_model"] for r in records),
        "uid": column(f"step{step}-prompt{i}" for i in range(len(records))),
    })
    return batch.repeat(repeat_times=n, interleave=True)


def trainable_parameters(model, train_layers: int) -> list:
    """Unfreeze the last `train_layers` decoder layers and the final norm (0: every weight)."""
    if train_layers == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    decoder = model.get_decoder()
    layers = decoder.layers
    if train_layers > len(layers):
        raise ValueError(f"train_layers={train_layers}, but the model has {len(layers)} decoder layers")
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for layer in layers[-train_layers:] for p in layer.parameters()] + list(decoder.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def response_log_probs(model, batch, rows: slice, temperature: float):
    """Log-probs of the response tokens of some rows, (rows, response_length), 0 on padding.

    Columns that are padding in every row are cut first (rows of one prompt group share the prompt,
    so only the responses' right padding remains).
    """
    import torch.nn.functional as F
    from verl.utils.torch_functional import logprobs_from_logits

    device = next(model.parameters()).device
    attention = batch["attention_mask"][rows]
    used = attention.any(dim=0).nonzero().flatten()
    lo, hi = int(used[0]), int(used[-1]) + 1
    prompt_length, response_length = batch["prompts"].shape[1], batch["responses"].shape[1]
    kept = hi - prompt_length  # response columns up to the longest response of these rows
    ids = batch["input_ids"][rows, lo:hi].to(device)
    logits = model(
        input_ids=ids,
        attention_mask=attention[:, lo:hi].to(device),
        position_ids=batch["position_ids"][rows, lo:hi].to(device),
        logits_to_keep=kept + 1,
        use_cache=False,
    ).logits[:, :-1]
    log_probs = logprobs_from_logits(logits.float() / temperature, ids[:, -kept:])
    return F.pad(log_probs, (0, response_length - kept))


def last_token_logits(model, prompt_ids: list[int]):
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor([prompt_ids], device=device)).logits[0, -1].float().cpu()


def gsm8k_reward_manager(cfg: dict, tokenizer):
    """verl's DAPO reward manager: verl's GSM8K checker plus its overlong penalty, which falls linearly
    from 0 at (max_new_tokens - overlong_buffer) tokens to -overlong_penalty at max_new_tokens."""
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
    from verl.utils.reward_score import gsm8k

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return gsm8k.compute_score(solution_str, ground_truth, method=cfg["reward_method"],
                                   format_score=cfg["format_score"])

    buffer = cfg["overlong_buffer"]
    overlong = {"enable": buffer > 0, "len": buffer, "penalty_factor": cfg["overlong_penalty"], "log": True}
    config = OmegaConf.create({"reward": {"reward_kwargs": {"max_resp_len": cfg["max_new_tokens"],
                                                            "overlong_buffer_cfg": overlong}}})
    return DAPORewardManager(config, tokenizer, compute_score)


def score_batch(manager, data):
    """Run a verl reward manager over a batch: (token-level scores, per-row details)."""
    import asyncio

    results = manager.loop.run_until_complete(
        asyncio.gather(*(manager.run_single(data[row : row + 1]) for row in range(len(data)))))
    rewards = [float(r["reward_score"]) for r in results]
    details = []
    for row, (reward, r) in enumerate(zip(rewards, results)):
        extra = r["reward_extra_info"]
        length = int(data.batch["response_mask"][row].sum())
        text = manager.tokenizer.decode(data.batch["responses"][row, :length].tolist(), skip_special_tokens=True)
        details.append({"reward": reward, "acc": float(extra["acc"]), "overlong_reward": float(extra.get("overlong_reward", 0.0)),
                        "response": text})
    return manager.assemble_rm_scores(data, rewards), details


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# ----------------------------------------------------------------------------- the recipe


class GRPODemo:
    """setup() once, train_step(step) per step, cleanup() at the end (torchtune's recipe shape)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        import ray
        import torch
        from omegaconf import OmegaConf
        from verl.workers.config.actor import FSDPActorConfig

        from rollout_len.data import gsm8k_prompts
        from rollout_len.model import load_policy
        from rollout_len.verl import LengthAwareRollout
        from rollout_len.verl.manager import start_coordinator

        c = self.cfg
        start = time.perf_counter()
        # The trainer's copy first: the first load of the embedded model converts it once, and the
        # rollout workers then load the converted copy.
        self.policy = load_policy(c["model"], dtype=c["dtype"], device=c["device"])
        self.model, self.tokenizer = self.policy.model, self.policy.tokenizer
        self.params = trainable_parameters(self.model, c["train_layers"])
        self.optimizer = torch.optim.AdamW(self.params, lr=c["lr"], weight_decay=c["weight_decay"])
        self.reward_manager = gsm8k_reward_manager(c, self.tokenizer)
        self.rows = gsm8k_prompts(c["steps"] * c["prompts_per_step"])
        if len(self.rows) < c["steps"] * c["prompts_per_step"]:
            raise ValueError(f"steps x prompts_per_step = {c['steps'] * c['prompts_per_step']} exceeds "
                             f"the {len(self.rows)} GSM8K test problems")

        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            if c["ray_address"]:
                ray.init(address=c["ray_address"], include_dashboard=False, log_to_driver=False)
            else:  # CPUs as Ray counts them: one per worker thread, one for the Coordinator (idle while workers decode)
                ray.init(num_cpus=c["num_workers"] * c["threads_per_worker"] + 1, include_dashboard=False,
                         log_to_driver=False)
        settings = {key: c[key] for key in ("num_workers", "slots_per_worker", "every", "use_ray", "ray_address",
                                            "threads_per_worker", "gpus_per_worker", "dtype", "device", "seed")}
        self.actor = start_coordinator(c["model"], settings)
        self.coordinator = SeededCoordinator(self.actor)
        config = OmegaConf.create({
            "data": {"apply_chat_template_kwargs": {}},
            "actor_rollout_ref": {"rollout": {
                "name": "length_aware", "prompt_length": c["max_prompt_length"], "response_length": c["max_new_tokens"],
                "temperature": c["temperature"], "top_p": c["top_p"], "top_k": -1, "ignore_eos": False,
                "n": c["samples_per_prompt"],
            }},
        })
        model_config = SimpleNamespace(tokenizer=self.tokenizer, hf_config=self.model.config)
        self.rollout = LengthAwareRollout(config, self.coordinator, model_config, policy="length_aware")
        self.actor_config = FSDPActorConfig(
            strategy="fsdp", rollout_n=c["samples_per_prompt"], ppo_micro_batch_size_per_gpu=c["samples_per_prompt"],
            clip_ratio=c["clip_ratio"], clip_ratio_low=c["clip_ratio"], clip_ratio_high=c["clip_ratio"],
            loss_agg_mode=c["loss_agg_mode"], grad_clip=c["grad_clip"],
        )
        # The workers load the same weights by name; waiting for their logits also waits for them to start.
        probe = self.tokenizer.apply_chat_template([{"role": "user", "content": "What is 12*7?"}],
                                                   add_generation_prompt=True, tokenize=True)
        probe = list(probe["input_ids"] if hasattr(probe, "keys") else probe)
        self.start_logit_diff = self.worker_logit_diff(probe)
        self.setup_s = time.perf_counter() - start

    def worker_logit_diff(self, prompt_ids: list[int]) -> float:
        """Largest |logit difference| between any rollout worker and the trainer on a prompt's next token."""
        import ray

        trainer = last_token_logits(self.model, prompt_ids)
        workers = ray.get(self.actor.worker_logits.remote(prompt_ids))
        return max(float((w.float().cpu() - trainer).abs().max()) for w in workers)

    # ------------------------------------------------------------------ one step

    def rollouts(self, batch, step: int):
        """Both rollouts of a step, same seed; returns (verl output, length-aware result, fcfs result, times)."""
        import ray

        from rollout_len.verl.convert import rollout_request, to_data_proto

        c = self.cfg
        seed = c["seed"] + step
        self.coordinator.seed = seed
        times = {}

        def length_aware():
            start = time.perf_counter()
            output = self.rollout.generate_sequences(batch)
            times["gen"] = time.perf_counter() - start
            return output, ray.get(self.coordinator.last_result)

        def fcfs():
            start = time.perf_counter()
            request = rollout_request(batch, self.rollout.token_builder, self.rollout.rollout)
            result = ray.get(self.actor.run_step.remote(request.prompts, request.n, request.params, "fcfs", seed=seed))
            to_data_proto(request, result.groups, c["max_prompt_length"], c["max_new_tokens"], self.rollout.pad_token_id)
            times["gen_fcfs"] = time.perf_counter() - start
            return result

        if step % 2 == 0:
            output, aware = length_aware()
            blind = fcfs()
        else:
            blind = fcfs()
            output, aware = length_aware()
        return output, aware, blind, times

    def rewards(self, data):
        """Token-level scores (the reward on each response's last token) and per-row details."""
        return score_batch(self.reward_manager, data)

    def update_actor(self, data) -> dict:
        """One optimizer step on verl's policy loss; one forward/backward per prompt group."""
        import torch
        from verl.trainer.ppo import core_algos

        c, n = self.cfg, self.cfg["samples_per_prompt"]
        mask = data.batch["response_mask"]
        self.actor_config.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=len(data))
        before = [p.detach().clone() for p in self.params]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        old_log_probs, loss_sum, clipfrac = [], 0.0, []
        for start in range(0, len(data), n):
            rows = slice(start, start + n)
            log_prob = response_log_probs(self.model, data.batch, rows, c["temperature"])
            device = log_prob.device
            pg_loss, pg_metrics = core_algos.compute_policy_loss_vanilla(
                old_log_prob=log_prob.detach(), log_prob=log_prob,
                advantages=data.batch["advantages"][rows].to(device), response_mask=mask[rows].to(device),
                loss_agg_mode=c["loss_agg_mode"], config=self.actor_config,
            )
            pg_loss.backward()
            loss_sum += float(pg_loss.detach())
            clipfrac.append(pg_metrics["actor/pg_clipfrac"])
            old_log_probs.append(log_prob.detach().cpu())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c["grad_clip"])
        self.optimizer.step()
        self.model.eval()
        delta = math.sqrt(sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(self.params, before)))
        data.batch["old_log_probs"] = torch.cat(old_log_probs)
        return {"actor/pg_loss": loss_sum, "actor/pg_clipfrac": float(np.mean(clipfrac)),
                "actor/grad_norm": float(grad_norm), "actor/lr": c["lr"], "actor/param_update_norm": delta}

    def train_step(self, step: int) -> dict:
        """One GRPO step; returns its metrics (verl's names plus rollout_len/*) and the two timelines."""
        from verl import DataProto
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_timing_metrics
        from verl.utils.debug.metrics import calculate_debug_metrics

        c = self.cfg
        rows = self.rows[step * c["prompts_per_step"]:(step + 1) * c["prompts_per_step"]]
        batch = gsm8k_batch(rows, c["samples_per_prompt"], step)
        output, aware, blind, timing = self.rollouts(batch, step)

        start = time.perf_counter()
        data = DataProto(batch=output.batch, non_tensor_batch={**batch.non_tensor_batch, **output.non_tensor_batch},
                         meta_info=dict(output.meta_info))
        scores, details = self.rewards(data)
        timing["reward"] = time.perf_counter() - start

        start = time.perf_counter()
        data.batch["token_level_scores"] = scores
        data.batch["token_level_rewards"] = scores  # no KL penalty in the reward
        advantages, returns = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=scores, response_mask=data.batch["response_mask"], index=data.non_tensor_batch["uid"])
        data.batch["advantages"], data.batch["returns"] = advantages, returns
        timing["adv"] = time.perf_counter() - start

        start = time.perf_counter()
        actor_metrics = self.update_actor(data)
        timing["update_actor"] = time.perf_counter() - start

        start = time.perf_counter()
        self.rollout.update_weights({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        timing["update_weights"] = time.perf_counter() - start
        timing["step"] = sum(timing[k] for k in ("gen", "reward", "adv", "update_actor", "update_weights"))
        logit_diff = self.worker_logit_diff(list(aware.groups[0][0].prompt_ids))

        la, ff = aware.metrics, blind.metrics
        saving = 1.0 - timing["gen"] / timing["gen_fcfs"]
        step_fcfs = timing["step"] - timing["gen"] + timing["gen_fcfs"]
        same = np.mean([a.output_ids == b.output_ids for a, b in zip(aware.samples, blind.samples)])
        metrics = {
            **compute_data_metrics(data, use_critic=False),
            **compute_timing_metrics(data, timing),
            **{f"timing_s/{k}": v for k, v in output.meta_info["timing"].items()},  # as verl's trainer logs them
            **calculate_debug_metrics(data),
            **actor_metrics,
            "rollout_len/step_time_s": timing["gen"],
            "rollout_len/fcfs_step_time_s": timing["gen_fcfs"],
            "rollout_len/saving_vs_fcfs": saving,
            "rollout_len/grpo_step_saving_vs_fcfs": 1.0 - timing["step"] / step_fcfs,
            "rollout_len/predictor_mae": la["predictor_mae"],
            "rollout_len/padding_fraction": la["padded_fraction"],
            "rollout_len/migrations": la["migrations"],
            "rollout_len/worker_idle_fraction": la["worker_idle_fraction"],
            "rollout_len/fcfs_worker_idle_fraction": ff["worker_idle_fraction"],
            "rollout_len/tokens_per_s": la["tokens_per_s"],
            "rollout_len/fcfs_tokens_per_s": ff["tokens_per_s"],
            "rollout_len/same_responses_fraction": float(same),
            "rollout_len/sync_max_logit_diff": logit_diff,
            "reward/gsm8k_mean": float(np.mean([d["acc"] for d in details])),
            "reward/overlong_penalty_mean": float(np.mean([d["overlong_reward"] for d in details])),
            # Timings are wall times: other work on the machine shows here (1-minute load average).
            "system/load_average": os.getloadavg()[0],
        }
        responses = [{"uid": uid, "response": d["response"], "length": int(n), "gsm8k": d["acc"], "reward": d["reward"]}
                     for uid, d, n in zip(data.non_tensor_batch["uid"], details, data.batch["response_mask"].sum(-1))]
        return {"metrics": metrics, "timelines": {"length_aware": aware.timeline, "fcfs": blind.timeline},
                "first": "length_aware" if step % 2 == 0 else "fcfs", "step_fcfs_s": step_fcfs,
                "responses": responses}

    def cleanup(self) -> None:
        import ray

        ray.get(self.actor.shutdown.remote())
        ray.kill(self.actor)
        if self.started_ray:
            ray.shutdown()


# ----------------------------------------------------------------------------- outputs


def summary_row(step: int, result: dict) -> dict:
    m = result["metrics"]
    return {
        "step": step,
        "step_time_s": m["timing_s/step"],
        "rollout_time_s": m["timing_s/gen"],
        "fcfs_rollout_time_s": m["timing_s/gen_fcfs"],
        "saving": m["rollout_len/saving_vs_fcfs"],
        "reward_mean": m["critic/score/mean"],
        "gsm8k_mean": m["reward/gsm8k_mean"],
        "predictor_mae": _finite(m["rollout_len/predictor_mae"]),
        "fcfs_step_time_s": result["step_fcfs_s"],
        "step_saving": m["rollout_len/grpo_step_saving_vs_fcfs"],
        "first_rollout": result["first"],
        "response_length_mean": m["response_length/mean"],
        "response_length_clip_ratio": m["response_length/clip_ratio"],
        "migrations": m["rollout_len/migrations"],
        "padding_fraction": m["rollout_len/padding_fraction"],
        "worker_idle_fraction": m["rollout_len/worker_idle_fraction"],
        "fcfs_worker_idle_fraction": m["rollout_len/fcfs_worker_idle_fraction"],
        "same_responses_fraction": m["rollout_len/same_responses_fraction"],
        "param_update_norm": m["actor/param_update_norm"],
        "sync_max_logit_diff": m["rollout_len/sync_max_logit_diff"],
        "load_average": m["system/load_average"],
    }


def format_table(rows: list[dict]) -> str:
    header = f"{'step':>4} {'step s':>8} {'rollout s':>10} {'fcfs rollout s':>15} {'saving':>7} {'reward':>7} {'predictor MAE':>14}"
    lines = [header, "-" * len(header)]
    for r in rows:
        mae = "-" if r["predictor_mae"] is None else f"{r['predictor_mae']:.1f}"
        lines.append(f"{r['step']:>4} {r['step_time_s']:>8.1f} {r['rollout_time_s']:>10.1f} {r['fcfs_rollout_time_s']:>15.1f} "
                     f"{r['saving']:>7.1%} {r['reward_mean']:>7.3f} {mae:>14}")
    lines.append(f"median rollout saving vs fcfs: {np.median([r['saving'] for r in rows]):.1%} over {len(rows)} steps")
    return "\n".join(lines)


def plot_savings(rows: list[dict], path: Path) -> None:
    """Per step: rollout time and GRPO step time, length-aware vs fcfs, with the saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = [("rollout", "rollout_time_s", "fcfs_rollout_time_s", "saving"),
              ("GRPO step", "step_time_s", "fcfs_step_time_s", "step_saving")]
    for ax, (title, aware, blind, saving) in zip(axes, panels):
        ax.bar(steps - 0.2, [r[blind] for r in rows], 0.4, label="fcfs (length-blind)", color="tab:gray")
        ax.bar(steps + 0.2, [r[aware] for r in rows], 0.4, label="length-aware", color="tab:blue")
        for r in rows:
            ax.annotate(f"{r[saving]:+.0%}", (r["step"] + 0.2, r[aware]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(steps)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("seconds")
        ax.set_title(f"{title} time (median saving {np.median([r[saving] for r in rows]):.0%})", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_wandb(cfg: dict, out: Path | None):
    mode = os.environ.get("WANDB_MODE") or cfg["wandb_mode"]
    if mode == "disabled":
        return None
    import wandb

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg["wandb_project"], dir=str(out) if out else None, mode=mode, config=cfg,
                      name=f"grpo-demo-{Path(cfg['model']).name}")


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cfg = load_config(argv)
    wall = time.perf_counter()
    out = Path(cfg["out"]) if cfg["out"] else None
    demo = GRPODemo(cfg)
    print(f"setting up: {cfg['model']}, {cfg['num_workers']} rollout workers x {cfg['slots_per_worker']} slots, "
          f"{cfg['prompts_per_step']} GSM8K prompts x {cfg['samples_per_prompt']} samples per step", flush=True)
    demo.setup()
    print(f"ready in {demo.setup_s:.1f} s (workers vs trainer: max |logit diff| {demo.start_logit_diff:.2e})", flush=True)
    run = start_wandb(cfg, out)
    rows = []
    try:
        for step in range(cfg["steps"]):
            result = demo.train_step(step)
            rows.append(summary_row(step, result))
            r = rows[-1]
            t = result["metrics"]
            print(f"step {step}: rollout {r['rollout_time_s']:.1f} s vs fcfs {r['fcfs_rollout_time_s']:.1f} s "
                  f"({r['saving']:+.1%}, {r['first_rollout']} first), update_actor {t['timing_s/update_actor']:.1f} s, "
                  f"update_weights {t['timing_s/update_weights']:.1f} s, step {r['step_time_s']:.1f} s, "
                  f"reward {r['reward_mean']:.3f}, mean length {r['response_length_mean']:.0f}", flush=True)
            timeline_png = None
            if out is not None:
                from rollout_len.rollout.timeline import plot_timelines

                out.mkdir(parents=True, exist_ok=True)
                timeline_png = out / f"timeline_step{step}.png"
                plot_timelines(result["timelines"], str(timeline_png), max_workers=cfg["num_workers"])
                with (out / "responses.jsonl").open("a" if step else "w", encoding="utf-8") as f:
                    for record in result["responses"]:
                        f.write(json.dumps({"step": step, **record}) + "\n")
            if run is not None:
                import wandb

                logged = dict(result["metrics"])
                if timeline_png is not None:
                    logged["rollout_len/timeline"] = wandb.Image(str(timeline_png))
                run.log(logged, step=step)
    finally:
        demo.cleanup()
    wall = time.perf_counter() - wall
    print(format_table(rows))
    summary = {"config": cfg, "steps": rows, "median_saving": float(np.median([r["saving"] for r in rows])),
               "setup_s": demo.setup_s, "wall_time_s": wall}
    if run is not None:
        run.summary["rollout_len/median_saving_vs_fcfs"] = summary["median_saving"]
        summary["wandb_run_dir"], summary["wandb_mode"] = str(Path(run.dir).parent), run.settings.mode
        run.finish()
    if out is not None:
        plot_savings(rows, out / "step_time_saving.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'summary.json'}, {out / 'step_time_saving.png'}, {out}/timeline_step*.png")
    if run is not None:
        print(f"wandb run ({summary['wandb_mode']}): {summary['wandb_run_dir']}")
    print(f"total wall time {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
