import pytest
import torch

from helpers import tiny
from rollout_len.predictor.egtp import pool
from rollout_len.predictor.features import prompt_features
from rollout_len.sampling import token_entropy


def test_egtp_is_the_entropy_softmax_weighted_sum():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    entropy = torch.tensor([0.0, 1.0, 2.0])
    w = torch.exp(entropy) / torch.exp(entropy).sum()
    torch.testing.assert_close(pool(hidden, entropy, "egtp"), w @ hidden)
    torch.testing.assert_close(pool(hidden, entropy, "mean"), hidden.mean(0))
    torch.testing.assert_close(pool(hidden, entropy, "max"), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(pool(hidden, entropy, "last"), hidden[-1])
    # Equal entropies: EGTP reduces to mean pooling.
    torch.testing.assert_close(pool(hidden, torch.zeros(3), "egtp"), hidden.mean(0))


def test_bad_pooling_input():
    with pytest.raises(ValueError, match="unknown pooling 'sum'.*egtp"):
        pool(torch.zeros(2, 3), torch.zeros(2), "sum")
    with pytest.raises(ValueError, match="T >= 1"):
        pool(torch.zeros(0, 3), torch.zeros(0))


def test_prompt_features_match_a_full_forward_per_prompt():
    policy = tiny("qwen2")
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]
    feats = prompt_features(policy, prompts, layers=(1, -1), methods=("egtp", "last"), batch_size=2)
    assert set(feats) == {(1, "egtp"), (1, "last"), (2, "egtp"), (2, "last")}
    for row, p in enumerate(prompts):
        with torch.inference_mode():
            full = policy.model(torch.tensor([p]), output_hidden_states=True)
        entropy = token_entropy(full.logits[0])
        for layer in (1, 2):
            hidden = full.hidden_states[layer][0]
            torch.testing.assert_close(feats[(layer, "egtp")][row], pool(hidden, entropy, "egtp"), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(feats[(layer, "last")][row], hidden[-1], atol=1e-5, rtol=1e-4)
