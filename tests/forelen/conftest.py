import numpy as np
import pytest
import torch

from rollout_len.forelen.build import build, split_prompts
from rollout_len.forelen.dataset import save_dataset
from rollout_len.predictor.plp import checkpoint_steps


@pytest.fixture(scope="session")
def tiny_rl(tmp_path_factory):
    """A quick `rl` dataset of the tiny random-weight llama (8 prompts x 8 samples, k = 8)."""
    out = tmp_path_factory.mktemp("rl")
    build("rl", out, model="tiny-llama", quick=True, every=8, max_batch_size=16)
    return out


def synthetic_dataset(
    folder, model="tiny-llama", hidden_size=64, layer=2, num_layers=2, prompts=24, n=4, seed=0, offset=0
):
    """A ForeLen-lite dataset in the build's format, written in milliseconds: random prompt features,
    lengths that grow with the first feature, PLP checkpoints every 8 tokens under a budget of 64. Its
    card names a tiny random model, so heads trained on it fit that model's rollout workers. `offset`
    shifts every length by that many tokens (a drifted policy)."""
    g = torch.Generator().manual_seed(seed)
    budget, every = 64, 8
    feature = torch.randn(prompts, hidden_size, generator=g)  # (P, d)
    sample_prompt = torch.arange(prompts).repeat_interleave(n)  # (S,)
    noise = torch.randint(-4, 5, (len(sample_prompt),), generator=g)
    lengths = (30 + offset + 14 * feature[sample_prompt, 0] + noise).round().clamp(1, budget).long()
    ckpt = [(s, t) for s, length in enumerate(lengths.tolist()) for t in checkpoint_steps(length, every)]
    ckpt_sample, ckpt_t = (torch.tensor(c) for c in zip(*ckpt))
    pool = torch.randn(len(ckpt_t), hidden_size, generator=g) * (ckpt_t > 1)[:, None]  # zeros before t = 2
    split = split_prompts(prompts, seed)
    tensors = {
        f"prompt/{layer}/egtp": feature,
        "prompt/split": torch.from_numpy(split),
        "sample/prompt": sample_prompt,
        "sample/length": lengths,
        "sample/capped": (lengths == budget).to(torch.uint8),
        "ckpt/sample": ckpt_sample,
        "ckpt/t": ckpt_t,
        "ckpt/pool": pool.half(),
    }
    card = {
        "scenario": "synthetic",
        "model": model,
        "layers": [layer],
        "plp_layer": layer,
        "every": every,
        "seed": seed,
        "quick": True,
        "sampling": {"n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": budget},
        "counts": {"prompts": prompts, "samples": len(lengths), "checkpoints": len(ckpt_t)},
        "lengths": {
            "mean": float(lengths.float().mean()),
            "median": float(lengths.float().median()),
            "max": int(lengths.max()),
            "capped_fraction": float((lengths == budget).float().mean()),
        },
        "hidden_size": hidden_size,
        "num_layers": num_layers,
    }
    return save_dataset(folder, card, tensors, [f"prompt {p}" for p in range(prompts)], np.asarray(split))


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def make_synthetic():
    """`synthetic_dataset` itself, for tests that need datasets of other models or layers."""
    return synthetic_dataset
