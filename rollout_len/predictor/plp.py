"""PLP: progressive length prediction of the *remaining* length during decoding.

At decode step t (t tokens generated) the feature is

    z_t = [ h_prompt ; pool_t ; log(t + 1) ; log(b + 1) ]      (2d + 2,),  b = max_new_tokens - t

with h_prompt the EGTP feature of the prompt and pool_t the entropy-softmax pool of the generated
tokens' hidden states, kept online (running max / sum-exp / weighted sum: O(d) per step, old states
never re-read). A SoftLabelHead over remaining-length bins maps z_t to a distribution, capped at b.
At t = 0 the pool is zero and PLP is a prompt-only predictor, so one head serves admission and
re-estimation.

    tracker = PLPTracker(head, dim)
    tracker.start("s0", prompt_feature, max_new_tokens=512, tokens_done=1)   # after prefill (1 token out)
    tracker.update(step.sample_ids, step.hidden, step.entropy)              # every decode step
    if is_checkpoint(tracker.tokens_done("s0"), k):                         # t = 0, k, 2k, ...
        point, q = tracker.predict(["s0"], quantiles=(0.5, 0.9))     # point: the head's config.point

t counts generated tokens: `start(..., tokens_done=t0)` sets t = t0 with an empty pool, and every `update`
folds in one decode tap and adds 1. A decode step feeds the newest generated token and samples the next,
so for a sample started right after its prefill (t0 = 1) t stays its output length and the pool holds
the states of generated tokens 1 .. t-1, each weighted by the entropy of the distribution it produced
(the newest token is not fed yet; the first was sampled from the prompt's last position, not pooled).
"""

from __future__ import annotations

import torch

from rollout_len.kernels import OnlinePoolState, online_pool_update
from rollout_len.predictor.head import SoftLabelHead

__all__ = ["plp_features", "clamp_to_budget", "PLPTracker", "is_checkpoint", "checkpoint_steps"]


def plp_features(
    prompt_feature: torch.Tensor, generated_pool: torch.Tensor, tokens_done: torch.Tensor, budget_left: torch.Tensor
) -> torch.Tensor:
    """z_t = [h_prompt, pool_t, log(t+1), log(b+1)] with b = max_new_tokens - t, the tokens still
    allowed (the remaining length can never exceed it).  (B, d), (B, d), (B,), (B,) -> (B, 2d + 2)"""
    side = torch.stack([torch.log1p(tokens_done.float()), torch.log1p(budget_left.float())], dim=1)
    return torch.cat([prompt_feature.float(), generated_pool.float(), side], dim=1)


def clamp_to_budget(
    point: torch.Tensor, quantiles: torch.Tensor, budget_left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample cannot run past its budget: cap point predictions (N,) and quantiles (N, Q) at the
    tokens still allowed (N,)."""
    b = budget_left.float()
    return torch.minimum(point, b), torch.minimum(quantiles, b[:, None])


class PLPTracker:
    """Per-sample PLP state for the samples an engine is decoding; predicts remaining lengths."""

    def __init__(self, head: SoftLabelHead | None, dim: int):
        self.dim = dim
        self.set_head(head)
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._pool = OnlinePoolState.init(0, dim)
        self._prompt = torch.zeros(0, dim)
        self._tokens = torch.zeros(0, dtype=torch.long)
        self._budget = torch.zeros(0, dtype=torch.long)  # max_new_tokens per row

    def set_head(self, head: SoftLabelHead | None) -> None:
        """Swap the head (None: track features only, e.g. before a first fit)."""
        if head is not None and head.config.in_dim != 2 * self.dim + 2:
            raise ValueError(
                f"PLP head takes {head.config.in_dim}-dim features; hidden size {self.dim} needs {2 * self.dim + 2}"
            )
        self.head = head

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._rows

    def _grow(self) -> None:
        old = self._pool.batch_size
        new = max(8, 2 * old)
        pool = OnlinePoolState.init(new, self.dim)
        pool.m[:old], pool.s[:old], pool.acc[:old] = self._pool.m, self._pool.s, self._pool.acc
        self._pool = pool
        self._prompt = torch.cat([self._prompt, torch.zeros(new - old, self.dim)])
        self._tokens = torch.cat([self._tokens, torch.zeros(new - old, dtype=torch.long)])
        self._budget = torch.cat([self._budget, torch.zeros(new - old, dtype=torch.long)])
        self._free += list(range(new - 1, old - 1, -1))

    def start(
        self,
        sample_id: str,
        prompt_feature: torch.Tensor,
        max_new_tokens: int,
        state: dict | None = None,
        tokens_done: int = 0,
    ) -> None:
        """Track a sample from its prompt feature (d,); `state` resumes one exported by `export`;
        without it the pool starts empty at `tokens_done` tokens (e.g. the token sampled at prefill)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if sample_id in self._rows:
            raise ValueError(f"sample {sample_id!r} is already tracked")
        if prompt_feature.shape != (self.dim,):
            raise ValueError(f"prompt_feature must be ({self.dim},), got {tuple(prompt_feature.shape)}")
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._rows[sample_id] = row
        self._prompt[row] = prompt_feature.float()
        self._pool.reset(torch.tensor([row]))
        self._tokens[row] = tokens_done
        self._budget[row] = max_new_tokens
        if state is not None:
            self._pool.m[row], self._pool.s[row] = state["m"], state["s"]
            self._pool.acc[row] = state["acc"]
            self._tokens[row] = state["tokens"]

    def update(self, sample_ids: list[str], hidden: torch.Tensor, entropy: torch.Tensor) -> None:
        """Fold one generated token's state (R, d) and entropy (R,) into each listed sample."""
        known = [i for i, sid in enumerate(sample_ids) if sid in self._rows]
        if not known:
            return
        index = torch.tensor(known)
        rows = torch.tensor([self._rows[sample_ids[i]] for i in known])
        online_pool_update(self._pool, hidden[index].float().cpu(), entropy[index].float().cpu(), rows)
        self._tokens[rows] += 1

    def _index(self, sample_ids: list[str]) -> torch.Tensor:
        missing = [sid for sid in sample_ids if sid not in self._rows]
        if missing:
            raise KeyError(f"samples not tracked: {missing[:5]}")
        return torch.tensor([self._rows[sid] for sid in sample_ids], dtype=torch.long)  # (R,)

    def pooled(self, sample_ids: list[str]) -> torch.Tensor:
        """pool_t of the listed samples now: the entropy-softmax pool of their decode taps (R, d) float32;
        zeros for a sample with none yet."""
        return self._pool.pooled()[self._index(sample_ids)]

    def features(self, sample_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """PLP features z_t (R, 2d + 2) of the listed samples now, and their budgets left (R,)."""
        rows = self._index(sample_ids)
        budget_left = (self._budget[rows] - self._tokens[rows]).clamp_min(0)
        z = plp_features(self._prompt[rows], self._pool.pooled()[rows], self._tokens[rows], budget_left)
        return z, budget_left

    @torch.no_grad()
    def predict(self, sample_ids: list[str], quantiles: tuple[float, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted remaining length (R,) (the head's point prediction, `config.point`) and its
        quantiles (R, Q), in tokens, capped at each sample's budget left. KeyError for an untracked
        sample; RuntimeError without a head."""
        if self.head is None:
            raise RuntimeError("PLPTracker has no head yet (set_head)")
        z, budget_left = self.features(sample_ids)
        return clamp_to_budget(*self.head.predict(z, quantiles), budget_left)

    def export(self, sample_id: str) -> dict:
        """Remove a sample and return its pooling state (migrates with the sample)."""
        row = self._rows.pop(sample_id)
        self._free.append(row)
        return {
            "m": float(self._pool.m[row]),
            "s": float(self._pool.s[row]),
            "acc": self._pool.acc[row].clone(),
            "tokens": int(self._tokens[row]),
            "prompt": self._prompt[row].clone(),
            "max_new_tokens": int(self._budget[row]),
        }

    def drop(self, sample_id: str) -> None:
        self.export(sample_id)

    def tokens_done(self, sample_id: str) -> int:
        """t of a tracked sample: `tokens_done` (or the resumed state's) at `start`, plus one per `update`."""
        return int(self._tokens[self._rows[sample_id]])


def is_checkpoint(tokens_done: int, every: int) -> bool:
    """Whether PLP takes a checkpoint (a prediction, a training example) with t = tokens_done tokens
    generated: at t = 0, k, 2k, ... for k = every."""
    if every < 1:
        raise ValueError(f"k (checkpoint interval) must be >= 1, got {every}")
    return tokens_done % every == 0


def checkpoint_steps(length: int, every: int) -> list[int]:
    """The checkpoints t < length (`is_checkpoint`) of a sample that generates `length` tokens; t = 0
    always (nothing generated yet, a prompt-only prediction)."""
    return [t for t in range(max(length, 1)) if is_checkpoint(t, every)]
