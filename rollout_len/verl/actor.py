"""A single-process GRPO actor on verl's PPO clipped policy loss (recipes/grpo_demo), no FSDP.

    actor = GRPOActor(model, train_layers=4, lr=1e-5)
    metrics = actor.update(data)          # data: verl rollout fields + advantages + uid, one step
    rollout.update_weights(actor.state_dict())

One update per batch, so the old log-probs are the current ones and the PPO ratio is 1 (as in verl
with ppo_epochs=1 and one mini-batch); the loss is `core_algos.compute_policy_loss_vanilla`, one
forward/backward per GRPO group (rows of one `uid`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_weights
from verl.utils.torch_functional import logprobs_from_logits
from verl.workers.config.actor import FSDPActorConfig

__all__ = ["trainable_parameters", "response_log_probs", "last_token_logits", "GRPOActor"]


def trainable_parameters(model: torch.nn.Module, train_layers: int) -> list[torch.nn.Parameter]:
    """Unfreeze the last `train_layers` decoder layers and the final norm, freeze the rest; 0: every weight.

    Returns the trainable parameters. Raises ValueError for a negative count or more layers than the
    model has.
    """
    if train_layers < 0:
        raise ValueError(f"train_layers must be >= 0 (0: every weight), got {train_layers}")
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


def response_log_probs(model: torch.nn.Module, batch, rows: torch.Tensor | slice, temperature: float) -> torch.Tensor:
    """Log-probs of the response tokens of some rows, (R, response_length) float32, 0 on padding.

    `batch` holds verl's rollout fields (`prompts`, `responses`, `response_mask`, `input_ids`,
    `attention_mask`, `position_ids`); `rows` selects R of them (indices or a slice). Columns that are padding in every
    selected row are cut before the forward pass; logits are divided by `temperature` (> 0), as the
    sampler did.
    """
    device = next(model.parameters()).device
    attention = batch["attention_mask"][rows]
    used = attention.any(dim=0).nonzero().flatten()
    lo, hi = int(used[0]), int(used[-1]) + 1
    prompt_length, response_length = batch["prompts"].shape[1], batch["responses"].shape[1]
    kept = hi - prompt_length  # response columns up to the longest response of these rows
    ids = batch["input_ids"][rows, lo:hi].to(device)  # (R, T)
    logits = model(
        input_ids=ids,
        attention_mask=attention[:, lo:hi].to(device),
        position_ids=batch["position_ids"][rows, lo:hi].to(device),
        logits_to_keep=kept + 1,
        use_cache=False,
    ).logits[:, :-1]  # (R, kept, vocab)
    log_probs = logprobs_from_logits(logits.float() / temperature, ids[:, -kept:])  # (R, kept)
    mask = batch["response_mask"][rows].to(device)  # (R, response_length)
    return F.pad(log_probs, (0, response_length - kept)) * mask


def last_token_logits(model: torch.nn.Module, prompt_ids: list[int]) -> torch.Tensor:
    """The model's next-token logits after a prompt, (vocab,) float32 on the CPU."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor([prompt_ids], device=device)).logits[0, -1].float().cpu()


class GRPOActor:
    """A model, its trainable parameters and AdamW, updated with verl's PPO clipped policy loss.

    Args:
        model: a transformers causal LM (the trainer's copy of the policy).
        train_layers: see `trainable_parameters`.
        lr / weight_decay: AdamW's.
        grad_clip: the largest gradient norm.
        clip_ratio: PPO's clip range, both sides.
        loss_agg_mode: verl's loss aggregation (token-mean, token-sum, seq-mean-token-sum, ...).
        temperature: the sampling temperature (> 0) the log-probs are taken at.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        train_layers: int,
        lr: float,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        clip_ratio: float = 0.2,
        loss_agg_mode: str = "token-mean",
        temperature: float = 1.0,
        rollout_is_threshold: float | None = None,
    ):
        """`rollout_is_threshold`: None trains on-policy (ratio 1); a number > 0 weights each token by
        the truncated importance ratio pi_train / pi_rollout (verl's rollout correction, token level,
        weights clamped at the threshold: `rollout_corr_helper.compute_rollout_correction_weights`),
        for rollouts made by older weights (partial steps carry tokens across weight updates)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (log-probs of a sampled policy), got {temperature}")
        if rollout_is_threshold is not None and not (math.isfinite(rollout_is_threshold) and rollout_is_threshold > 0):
            raise ValueError(f"rollout_is_threshold must be None or a number > 0, got {rollout_is_threshold}")
        self.rollout_is_threshold = rollout_is_threshold
        self.model = model
        self.params = trainable_parameters(model, train_layers)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.lr, self.grad_clip, self.temperature = lr, grad_clip, temperature
        self.config = FSDPActorConfig(  # what compute_policy_loss_vanilla reads; rollout_n and micro batch are required
            strategy="fsdp",
            rollout_n=1,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio=clip_ratio,
            clip_ratio_low=clip_ratio,
            clip_ratio_high=clip_ratio,
            loss_agg_mode=loss_agg_mode,
            grad_clip=grad_clip,
        )

    def update(self, data: DataProto) -> dict[str, float]:
        """One optimizer step on the batch; one forward/backward per GRPO group (rows sharing a `uid`).

        `data` holds verl's rollout fields, `advantages` (B, response_length) and `uid` per row (and
        `rollout_log_probs` with a `rollout_is_threshold`). Adds `old_log_probs` (B, response_length) to
        `data.batch` (row order kept). Returns verl's actor metrics: actor/pg_loss, pg_clipfrac,
        grad_norm, lr, actor/param_update_norm (L2 norm of the parameter change) and, with the rollout
        correction, rollout_corr/rollout_is_mean (and verl's other IS-weight figures), averaged over groups.
        """
        if self.rollout_is_threshold is not None and "rollout_log_probs" not in data.batch.keys():
            raise ValueError("the rollout correction (rollout_is_threshold) needs rollout_log_probs in the batch")
        mask = data.batch["response_mask"]
        self.config.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=len(data))
        groups: dict[str, list[int]] = {}
        for row, uid in enumerate(data.non_tensor_batch["uid"]):
            groups.setdefault(str(uid), []).append(row)
        before = [p.detach().clone() for p in self.params]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        old_log_probs = torch.zeros(mask.shape, dtype=torch.float32)
        loss_sum, clipfrac, correction = 0.0, [], []
        for indices in groups.values():
            rows = torch.tensor(indices)
            log_prob = response_log_probs(self.model, data.batch, rows, self.temperature)
            device = log_prob.device
            weights = None
            if self.rollout_is_threshold is not None:
                log_ratio = log_prob.detach() - data.batch["rollout_log_probs"][rows].to(device)
                weights, is_metrics = compute_rollout_correction_weights(
                    log_ratio, mask[rows].to(device), rollout_is="token", rollout_is_threshold=self.rollout_is_threshold
                )
                correction.append(is_metrics)
            pg_loss, pg_metrics = core_algos.compute_policy_loss_vanilla(
                old_log_prob=log_prob.detach(),
                log_prob=log_prob,
                advantages=data.batch["advantages"][rows].to(device),
                response_mask=mask[rows].to(device),
                loss_agg_mode=self.config.loss_agg_mode,
                config=self.config,
                rollout_is_weights=weights,
            )
            pg_loss.backward()
            loss_sum += float(pg_loss.detach())
            clipfrac.append(pg_metrics["actor/pg_clipfrac"])
            old_log_probs[rows] = log_prob.detach().float().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.model.eval()
        delta = math.sqrt(sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(self.params, before)))
        data.batch["old_log_probs"] = old_log_probs
        return {
            "actor/pg_loss": loss_sum,
            "actor/pg_clipfrac": float(np.mean(clipfrac)),
            "actor/grad_norm": float(grad_norm),
            "actor/lr": self.lr,
            "actor/param_update_norm": delta,
            **{f"rollout_corr/{k}": float(np.mean([m[k] for m in correction])) for k in (correction or [{}])[0]},
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights as detached CPU tensors (Hugging Face names), for `update_weights`."""
        return {name: value.detach().cpu() for name, value in self.model.state_dict().items()}

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the tensors this actor trains (detached, CPU), for `update_weights(..., partial=True)`:
        the frozen rest never changes, so it need not travel again."""
        trained = {id(p) for p in self.params}
        return {name: p.detach().cpu() for name, p in self.model.named_parameters() if id(p) in trained}
