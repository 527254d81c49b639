"""Which prompt tokens a length predictor leans on, set against their entropy.

    rollout-len forelen attribution --data data/forelen/rl --json attribution.json --png attribution.png

A SoftLabelHead is fitted (train split, epoch chosen on val) on the dataset's mean-pooled final-layer
prompt features. Each test prompt then runs through the policy again with gradients, and a token's
importance is I_t = ||∂L/∂h_t||_2, with L = mean over the prompt's samples of (ŷ - y)², ŷ the head's
expected length, and h_t the output of decoder layer `layer` at prompt position t. The states are
taken below the feature layer (by default at half depth): at the feature layer itself, mean pooling
gives every token the same gradient. H_t is the entropy of the next-token distribution at position t,
the quantity EGTP weighs tokens by. Reported: Pearson's r between I_t and H_t over all test-prompt
tokens together, and the mean of the per-prompt r.
"""

from __future__ import annotations

import numpy as np
import torch

from rollout_len.baselines.base import TEST, TRAIN, VAL, ForeLenData
from rollout_len.data import encode_prompt
from rollout_len.kernels import linear_entropy
from rollout_len.model import Policy, resolve_layer
from rollout_len.predictor.head import SoftLabelHead
from rollout_len.predictor.train import FitConfig, fit_head

__all__ = ["attribution", "token_importance"]


def token_importance(
    policy: Policy, head: SoftLabelHead, ids: list[int], targets: torch.Tensor, layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt token: importance ||∂L/∂h_t|| at decoder layer `layer` (T,), next-token entropy (T,);
    and the mean-pooled final-layer feature the head read (d,)."""
    decoder = policy.model.get_decoder()
    captured = []

    def hook(module, args, output):
        states = output[0] if isinstance(output, tuple) else output
        leaf = states.detach().requires_grad_(True)
        captured.append(leaf)
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    handle = decoder.layers[layer - 1].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            final = decoder(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, d), final-normed
            feature = final.mean(0)
            expected = head(feature[None])[1]
            loss = ((expected - targets.float()) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, captured[0])
    finally:
        handle.remove()
    lm_head = policy.model.get_output_embeddings()
    with torch.no_grad():
        entropy = linear_entropy(final.detach(), lm_head.weight, getattr(lm_head, "bias", None))
    return grad[0].norm(dim=-1), entropy.float(), feature.detach()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def attribution(folder: str, layer: int | None = None, config: FitConfig | None = None) -> dict:
    """Importance and entropy of every test-prompt token, and their correlation."""
    data = ForeLenData.load(folder)
    policy = data.policy
    depth = policy.num_layers
    layer = resolve_layer(layer if layer is not None else max(1, depth // 2), depth, "--layer")
    if layer >= depth:
        raise ValueError(f"--layer must be below the feature layer {depth} (there every token gets the same gradient)")
    key = f"prompt/{depth}/mean"
    if key not in data.tensors:
        raise ValueError(f"dataset has no {key}; layers built: {data.card['layers']}")
    x = data.tensors[key].float()[data.sample_prompt]
    train, val = data.samples(TRAIN), data.samples(VAL)
    head = fit_head(x[train], data.lengths[train], x[val], data.lengths[val], config or FitConfig())
    importance, entropy, per_prompt = [], [], []
    for p in torch.nonzero(data.prompt_split == TEST)[:, 0].tolist():
        ids = encode_prompt(policy.tokenizer, data.prompts[p])
        imp, ent, feature = token_importance(policy, head, ids, data.lengths[data.sample_prompt == p], layer)
        stored = data.tensors[key][p].float()
        if not torch.allclose(feature, stored, rtol=1e-3, atol=1e-3 * float(stored.abs().max())):
            raise ValueError(
                f"the policy {data.card['model']!r} does not reproduce the dataset's prompt features "
                f"(prompt {p}); was the dataset built with another model?"
            )
        importance.append(imp.numpy())
        entropy.append(ent.numpy())
        per_prompt.append(_pearson(imp.numpy(), ent.numpy()))
    all_imp, all_ent = np.concatenate(importance), np.concatenate(entropy)
    return {
        "scenario": data.card["scenario"],
        "layer": layer,
        "feature_layer": depth,
        "prompts": len(importance),
        "tokens": len(all_imp),
        "pearson_r": _pearson(all_imp, all_ent),
        "mean_prompt_r": float(np.nanmean(per_prompt)) if not np.isnan(per_prompt).all() else float("nan"),
        "importance": all_imp.tolist(),
        "entropy": all_ent.tolist(),
    }
