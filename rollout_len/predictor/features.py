"""Prompt features straight from the policy: hidden states of chosen layers, token entropies, pooling.

    feats = prompt_features(policy, [ids_a, ids_b], layers=(10, 20, 30), methods=("egtp", "mean"))
    feats[(30, "egtp")]   # (2, d)

One forward per batch of prompts with `output_hidden_states`; entropies come from the final hidden
states and the LM head through `linear_entropy` (no [T, V] tensor for long prompts).
"""

from __future__ import annotations

import torch

from rollout_len.kernels import linear_entropy
from rollout_len.model import Policy, resolve_layer
from rollout_len.predictor.egtp import pool

__all__ = ["prompt_features"]


@torch.inference_mode()
def prompt_features(
    policy: Policy,
    prompts: list[list[int]],
    layers: tuple[int, ...] = (-1,),
    methods: tuple[str, ...] = ("egtp",),
    batch_size: int = 8,
) -> dict[tuple[int, str], torch.Tensor]:
    """Pooled prompt features {(layer, method): (N, d)}; layer L is the output of decoder layer L."""
    model = policy.model
    num_layers = policy.num_layers
    resolved = [resolve_layer(l, num_layers) for l in layers]
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    out: dict[tuple[int, str], list[torch.Tensor]] = {(l, m): [] for l in resolved for m in methods}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = torch.tensor(p, device=device)
            mask[row, : len(p)] = 1
        result = model.get_decoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        # hidden_states[i]: output of decoder layer i (0 = embeddings); the last is final-normed.
        final = result.last_hidden_state
        for row, p in enumerate(chunk):
            n = len(p)
            entropy = linear_entropy(final[row, :n], head.weight, getattr(head, "bias", None))
            for l in resolved:
                hidden = result.hidden_states[l][row, :n]
                for m in methods:
                    out[(l, m)].append(pool(hidden, entropy, m))
    return {key: torch.stack(rows) for key, rows in out.items()}
