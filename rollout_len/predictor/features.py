"""Prompt features straight from the policy: hidden states of chosen layers, token entropies, pooling.

    feats = prompt_features(policy, [ids_a, ids_b], layers=(10, 20, 30), methods=("egtp", "mean"))
    feats[(30, "egtp")]   # (2, d)

One forward per batch of prompts with `output_hidden_states`. The batch's prompt tokens are then packed
(N = their total length): entropies come from the final hidden states and the LM head in one
`linear_entropy` call (no [N, V] tensor for long prompts), and each (layer, pooling) is one
`pool_packed` call (EGTP: `rollout_len.kernels.egtp_pool`).
"""

from __future__ import annotations

from itertools import accumulate

import torch

from rollout_len.kernels import linear_entropy
from rollout_len.model import Policy, resolve_layer
from rollout_len.predictor.pooling import pool_packed

__all__ = ["prompt_features", "prefill_batches"]


def prefill_batches(policy: Policy, prompts: list[list[int]], batch_size: int = 8):
    """One forward per batch of prompts (right-padded) with `output_hidden_states`; yields, per batch,
    (cu_seqlens (B+1,), hidden_states (transformers' tuple: index i is the output of decoder layer i,
    0 the embeddings, the last final-normed), valid (B, W) bool, entropy (N,) of the packed positions).
    `hidden_states[i][valid]` packs the batch's positions row by row. ValueError on an empty prompt."""
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty; a prompt needs T >= 1 tokens")
    model = policy.model
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = torch.tensor(p, device=device)
            mask[row, : len(p)] = 1
        with torch.inference_mode():
            result = model.get_decoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            valid = mask.bool()
            entropy = linear_entropy(result.last_hidden_state[valid], head.weight, getattr(head, "bias", None))
        cu_seqlens = torch.tensor([0, *accumulate(len(p) for p in chunk)])
        yield cu_seqlens, result.hidden_states, valid, entropy


@torch.inference_mode()
def prompt_features(
    policy: Policy,
    prompts: list[list[int]],
    layers: tuple[int, ...] = (-1,),
    methods: tuple[str, ...] = ("egtp",),
    batch_size: int = 8,
) -> dict[tuple[int, str], torch.Tensor]:
    """Pooled prompt features {(layer, method): (P, d)} of P prompts, float32; layer L is the output of
    decoder layer L, `methods` name poolings of predictor/pooling.py (`egtp`, `mean`, `max`, `last`)."""
    resolved = [resolve_layer(layer, policy.num_layers) for layer in layers]
    out: dict[tuple[int, str], list[torch.Tensor]] = {(layer, m): [] for layer in resolved for m in methods}
    for cu_seqlens, hidden_states, valid, entropy in prefill_batches(policy, prompts, batch_size):
        for layer in resolved:
            hidden = hidden_states[layer][valid]  # (N, d)
            for m in methods:
                out[(layer, m)].append(pool_packed(hidden, entropy, cu_seqlens, m))  # (B, d)
    return {key: torch.cat(rows) for key, rows in out.items()}
