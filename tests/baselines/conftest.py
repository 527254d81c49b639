import pytest
import torch

from rollout_len.baselines import ForeLenData
from rollout_len.forelen.build import build, split_prompts


@pytest.fixture(scope="session")
def tiny_rl(tmp_path_factory):
    """A real ForeLen-lite build (8 prompts x 8 samples) by the tiny random policy."""
    out = tmp_path_factory.mktemp("rl")
    build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16)
    return out


def make_synthetic(
    num_prompts: int = 120, n: int = 4, every: int = 32, budget: int = 512, seed: int = 0
) -> ForeLenData:
    """A dataset whose lengths are learnable: prompt p has a latent z_p in [0, 1] and its samples'
    lengths are 50 + 400 z_p ± 20. z_p is the first coordinate of the proxy embedding and of the layer-1
    prompt feature (layer 2 is noise); a checkpoint's pool holds the progress t / length first."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(num_prompts, generator=g)
    noise = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sample_prompt = torch.arange(num_prompts).repeat_interleave(n)
    lengths = (50 + 400 * z[sample_prompt] + 20 * (2 * torch.rand(len(sample_prompt), generator=g) - 1)).round()
    ckpt_sample, ckpt_t = [], []
    for s, length in enumerate(lengths.long().tolist()):
        for t in range(0, length, every):
            ckpt_sample.append(s)
            ckpt_t.append(t)
    ckpt_sample, ckpt_t = torch.tensor(ckpt_sample), torch.tensor(ckpt_t)
    pool = noise(len(ckpt_t), 8)
    pool[:, 0] = ckpt_t / lengths[ckpt_sample]
    layer1, embedding = noise(num_prompts, 8), noise(num_prompts, 4)
    layer1[:, 0] = embedding[:, 0] = 4 * z
    tensors = {
        "sample/prompt": sample_prompt,
        "sample/length": lengths.long(),
        "prompt/split": torch.from_numpy(split_prompts(num_prompts, seed)),
        "prompt/1/mean": layer1,
        "prompt/2/mean": noise(num_prompts, 8),
        "ckpt/sample": ckpt_sample,
        "ckpt/t": ckpt_t,
        "ckpt/pool": pool,
    }
    card = {
        "scenario": "synthetic",
        "model": "none",
        "layers": [1, 2],
        "plp_layer": 2,
        "sampling": {"n": n, "max_new_tokens": budget},
    }
    data = ForeLenData(card, tensors, prompts=[f"prompt {p}" for p in range(num_prompts)])
    data.embeddings = embedding
    return data


@pytest.fixture
def synthetic():
    return make_synthetic
