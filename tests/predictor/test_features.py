import pytest
import torch
from helpers import tiny

from rollout_len.predictor.features import prompt_features
from rollout_len.predictor.pooling import POOLINGS, pool, pool_packed


def _egtp_per_sequence(hidden: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """The definition, one sequence at a time: w = softmax(H), h = Σ_i w_i h_i.  (T, d), (T,) -> (d,)"""
    w = torch.softmax(entropy.double(), dim=0)  # (T,)
    return (w[:, None] * hidden.double()).sum(0).float()


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_pooling_equals_the_per_sequence_formulas(dtype):
    g = torch.Generator().manual_seed(0)
    lengths = [1, 7, 3, 12]  # one single-token sequence, none a power of two
    hidden = torch.randn(sum(lengths), 37, generator=g).to(dtype)  # (N, d)
    entropy = (torch.rand(sum(lengths), generator=g) * 6).to(dtype)  # (N,) nats
    cu = torch.tensor([0, 1, 8, 11, 23])
    seqs = [(hidden[s:e].float(), entropy[s:e].float()) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
    reference = {
        "egtp": [_egtp_per_sequence(h, e) for h, e in seqs],
        "mean": [h.mean(0) for h, _ in seqs],
        "max": [h.amax(0) for h, _ in seqs],
        "last": [h[-1] for h, _ in seqs],
    }
    assert set(reference) == set(POOLINGS)
    for method, rows in reference.items():
        out = pool_packed(hidden, entropy, cu, method)
        assert out.dtype == torch.float32 and out.shape == (4, 37)
        torch.testing.assert_close(out, torch.stack(rows), atol=1e-5, rtol=1e-5)
        for b in range(len(seqs)):  # one sequence alone gives its row of the packed batch
            torch.testing.assert_close(pool(hidden[cu[b] : cu[b + 1]], entropy[cu[b] : cu[b + 1]], method), out[b])


def test_bad_pooling_input():
    with pytest.raises(ValueError, match="unknown pooling 'sum'.*egtp"):
        pool(torch.zeros(2, 3), torch.zeros(2), "sum")
    with pytest.raises(ValueError, match="T >= 1"):
        pool(torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match="T >= 1"):
        pool_packed(torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 0, 2]), "mean")
    with pytest.raises(ValueError, match="from 0 to N = 2"):
        pool_packed(torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 3]))


def test_prompt_features_match_a_full_forward_per_prompt():
    policy = tiny("qwen2")
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    feats = prompt_features(policy, prompts, layers=(1, -1), methods=tuple(POOLINGS), batch_size=2)
    assert set(feats) == {(layer, m) for layer in (1, 2) for m in POOLINGS}
    for row, p in enumerate(prompts):
        with torch.inference_mode():
            full = policy.model(torch.tensor([p]), output_hidden_states=True)
        logp = torch.log_softmax(full.logits[0].float(), -1)  # (T, V)
        entropy = -(logp.exp() * logp).sum(-1)  # (T,)
        for layer in (1, 2):
            hidden = full.hidden_states[layer][0]  # (T, d)
            close = {"atol": 1e-5, "rtol": 1e-4}
            torch.testing.assert_close(feats[(layer, "egtp")][row], _egtp_per_sequence(hidden, entropy), **close)
            torch.testing.assert_close(feats[(layer, "mean")][row], hidden.mean(0), **close)
            torch.testing.assert_close(feats[(layer, "max")][row], hidden.amax(0), **close)
            torch.testing.assert_close(feats[(layer, "last")][row], hidden[-1], **close)
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        prompt_features(policy, [[5], []])
