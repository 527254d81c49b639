import pytest
import torch

from rollout_len.baselines.encoder import load_encoder


def test_tiny_encoder_embeds_deterministically():
    encoder = load_encoder("tiny-bert")
    texts = ["Write a poem about bees.", "What is 12*7?", "Write a poem about bees."]
    emb = encoder.encode(texts, batch_size=2)
    assert emb.shape == (3, encoder.dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2], atol=1e-5)  # padding in another batch does not change it
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_bad_encoder_input():
    with pytest.raises(ValueError, match="unknown proxy encoder 'bert'"):
        load_encoder("bert")
    with pytest.raises(ValueError, match="non-empty strings"):
        load_encoder("tiny-bert").encode(["ok", "  "])


@pytest.mark.embedded
def test_minilm_loads_offline_and_embeds_meaningfully():
    encoder = load_encoder("all-minilm-l6-v2")
    emb = encoder.encode(
        [
            "Write a short poem about the sea.",
            "Compose a brief poem about the ocean.",
            "Tom has 3 apples and buys 5 more. How many apples does he have?",
        ]
    )
    assert emb.shape == (3, 384) and encoder.dim == 384
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.6 and unrelated < 0.3
