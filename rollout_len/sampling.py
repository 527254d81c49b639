"""Per-sample token sampling that does not depend on the batch a sample shares.

Each row has its own temperature / top-p / top-k and its own `torch.Generator`. A row draws exactly
one uniform number per token and picks the token by inverse CDF over its own (filtered) distribution,
so what a sample generates depends only on its own logits and RNG, never on its neighbours.

Numerics. A temperature below `GREEDY_TEMPERATURE` (0 included) is greedy: the row takes the argmax
and reports the log-prob of the untempered distribution (temperature 1), the convention of
temperature 0. At or above it, tempered logits are formed as (logits - row max) / T, so the argmax
sits at exactly 0 and no finite logit overflows: every sampled token has a finite log-prob. Logits
that are NaN or infinite raise `ValueError` naming the rows (sample ids where the caller gives them).

Filters (top-p, top-k) and the repetition penalty shape the distribution a token is drawn from; the
log-prob reported is the policy's own (temperature-scaled, unfiltered, unpenalized), the quantity a
trainer recomputes.
"""

from __future__ import annotations

import torch

from rollout_len.sample import Sample, sample_seed

__all__ = [
    "GREEDY_TEMPERATURE",
    "apply_repetition_penalty",
    "check_finite",
    "is_greedy",
    "make_generator",
    "sample_next",
]

# Temperatures below this are greedy (as vLLM's _SAMPLING_EPS). At T = 1e-5 a logit gap of 1e-3 already
# scales the runner-up's probability to exp(-100) ~ 4e-44, at float32's subnormal floor: below it the
# draw is the argmax except for near-ties within float rounding of the logits, and the tempered log-probs
# of non-argmax tokens (-gap / T) only grow toward float32's range. Below ~1e-38 T itself is subnormal in
# float32 and 5e-324 rounds to 0, which made the old code divide by zero (NaN log-probs, last vocab id).
GREEDY_TEMPERATURE = 1e-5


def is_greedy(temperature: float) -> bool:
    """Whether a row with this temperature is decoded greedily (0 or below `GREEDY_TEMPERATURE`)."""
    return temperature < GREEDY_TEMPERATURE


def make_generator(sample: Sample) -> torch.Generator:
    """A sample's RNG: restored from its exported state, or fresh from (seed, sample id)."""
    gen = torch.Generator(device="cpu")
    if sample.rng_state is not None:
        gen.set_state(sample.rng_state)
    else:
        gen.manual_seed(sample_seed(sample.seed, sample.sample_id))
    return gen


def check_finite(logits: torch.Tensor, sample_ids: list[str] | None = None) -> None:
    """Raise ValueError naming the rows whose logits hold NaN or inf. One reduction when all is well."""
    if bool(torch.isfinite(logits).all()):
        return
    bad = (~torch.isfinite(logits)).any(dim=-1).nonzero()[:, 0].tolist()  # (rows,)
    names = [sample_ids[i] for i in bad] if sample_ids is not None else bad
    what = "samples" if sample_ids is not None else "rows"
    raise ValueError(
        f"non-finite logits (NaN or inf) for {len(bad)} of {logits.shape[0]} {what}: {names[:5]}"
        + (" ..." if len(bad) > 5 else "")
        + " (the model's weights or activations overflowed or hold NaN)"
    )


def apply_repetition_penalty(logits: torch.Tensor, penalties: list[float], seen: list[list[int]]) -> torch.Tensor:
    """Logits with each row's seen tokens penalized: a positive logit is divided by the row's penalty,
    a negative one multiplied (CTRL, Keskar et al. 2019; the rule HF transformers and vLLM apply to
    prompt + generated tokens). A penalty above 1 discourages repeats; 1 leaves the row alone.

    Args:
        logits: (B, V) float. Not modified; a copy is returned when any row is penalized.
        penalties: (B,) floats > 0.
        seen: B lists of token ids (prompt + generated), each id in [0, V).
    """
    rows = [i for i, p in enumerate(penalties) if p != 1.0 and seen[i]]
    if not rows:
        return logits
    logits = logits.clone()
    for row in rows:
        index = torch.tensor(list(set(seen[row])), device=logits.device)
        picked = logits[row, index]
        logits[row, index] = torch.where(picked > 0, picked / penalties[row], picked * penalties[row])
    return logits


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
    sample_ids: list[str] | None = None,
    repetition_penalties: list[float] | None = None,
    seen: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    Args:
        logits: (B, V) next-token logits, all finite.
        temperatures, top_ps, top_ks, generators: one per row; a temperature below `GREEDY_TEMPERATURE`
            (0 included) means greedy.
        sample_ids: one per row, to name the samples in errors (rows are numbered otherwise).
        repetition_penalties, seen: one per row, for `apply_repetition_penalty` (None: no penalty). The
            draw (and a greedy row's argmax) uses the penalized logits.

    Returns:
        tokens (B,) int64 and their log-probs (B,) float32, finite, under the temperature-scaled, unfiltered,
        unpenalized distribution (raw logits for greedy rows): the quantity a PPO ratio is taken against.

    Raises:
        ValueError: some row's logits hold NaN or inf, before or after its repetition penalty (nothing is
            drawn from any generator then).
    """
    logits = logits.float()
    check_finite(logits, sample_ids)
    num_rows = logits.shape[0]
    tokens = torch.empty(num_rows, dtype=torch.long)
    greedy = [is_greedy(t) for t in temperatures]
    scale = torch.tensor([1.0 if g else t for t, g in zip(temperatures, greedy)], device=logits.device)
    # Shifted by the row max: the argmax is exactly 0 after scaling, nothing finite overflows to +inf.
    shifted = logits - logits.max(dim=-1, keepdim=True).values  # (B, V), <= 0
    logp = torch.log_softmax(shifted / scale[:, None], dim=-1)  # (B, V)
    drawn, draw_logp = logits, logp  # what tokens are drawn from
    if repetition_penalties is not None:
        drawn = apply_repetition_penalty(logits, repetition_penalties, seen)
        if drawn is not logits:
            try:  # a penalty far below 1 divides a logit past float32's range
                check_finite(drawn, sample_ids)
            except ValueError as err:
                raise ValueError(f"after the repetition penalty: {err}") from None
            shifted = drawn - drawn.max(dim=-1, keepdim=True).values
            draw_logp = torch.log_softmax(shifted / scale[:, None], dim=-1)
    for row in range(num_rows):
        if greedy[row]:
            tokens[row] = int(torch.argmax(drawn[row]))
            continue
        row_logp = _filter_row(draw_logp[row], top_ps[row], top_ks[row])
        cdf = torch.cumsum(row_logp.exp(), 0)  # (V,)
        u = torch.rand(1, generator=generators[row]).item() * float(cdf[-1])
        index = int(torch.searchsorted(cdf, torch.tensor([u], device=cdf.device), right=True))
        if index >= cdf.shape[0]:  # u rounded up to the total mass: the last token that carries mass
            index = int(torch.searchsorted(cdf, cdf[-1:], right=False))
        tokens[row] = index
    tokens = tokens.to(logits.device)
    return tokens, logp.gather(1, tokens[:, None])[:, 0]
