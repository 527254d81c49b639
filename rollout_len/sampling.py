"""Per-sample token sampling that does not depend on the batch a sample shares.

Each row has its own temperature / top-p / top-k and its own `torch.Generator`. A row draws exactly
one uniform number per token and picks the token by inverse CDF over its own (filtered) distribution,
so what a sample generates depends only on its own logits and RNG, never on its neighbours.
"""

from __future__ import annotations

import torch

from rollout_len.sample import Sample, sample_seed

__all__ = ["make_generator", "sample_next"]


def make_generator(sample: Sample) -> torch.Generator:
    """A sample's RNG: restored from its exported state, or fresh from (seed, sample id)."""
    gen = torch.Generator(device="cpu")
    if sample.rng_state is not None:
        gen.set_state(sample.rng_state)
    else:
        gen.manual_seed(sample_seed(sample.seed, sample.sample_id))
    return gen


def _filter_row(logp: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Log-probs with tokens outside top-k / the top-p nucleus set to -inf.  (V,) -> (V,)"""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k).values[-1]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True)
        probs = sorted_logp.exp()
        mass_before = torch.cumsum(probs, 0) - probs
        drop = mass_before > top_p  # the token that crosses top_p is kept, so at least one is
        logp = logp.clone()
        logp[order[drop]] = float("-inf")
    return logp


def sample_next(
    logits: torch.Tensor,
    temperatures: list[float],
    top_ps: list[float],
    top_ks: list[int],
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    Args:
        logits: (B, V) next-token logits.
        temperatures, top_ps, top_ks, generators: one per row; temperature 0 means greedy.

    Returns:
        tokens (B,) int64 and their log-probs (B,) float32 under the temperature-scaled, unfiltered
        distribution (raw logits for greedy rows): the quantity a PPO ratio is taken against.
    """
    logits = logits.float()
    num_rows = logits.shape[0]
    tokens = torch.empty(num_rows, dtype=torch.long)
    scale = torch.tensor([t if t > 0 else 1.0 for t in temperatures], device=logits.device)
    logp = torch.log_softmax(logits / scale[:, None], dim=-1)  # (B, V)
    for row in range(num_rows):
        if temperatures[row] == 0:
            tokens[row] = int(torch.argmax(logits[row]))
            continue
        row_logp = _filter_row(logp[row], top_ps[row], top_ks[row])
        cdf = torch.cumsum(row_logp.exp(), 0)  # (V,)
        u = torch.rand(1, generator=generators[row]).item() * float(cdf[-1])
        index = int(torch.searchsorted(cdf, torch.tensor([u], device=cdf.device), right=True))
        tokens[row] = min(index, cdf.shape[0] - 1)
    tokens = tokens.to(logits.device)
    return tokens, logp.gather(1, tokens[:, None])[:, 0]
