"""Build a ForeLen-lite dataset: generate with the policy, keep true lengths, pooled prompt features
and PLP checkpoints.

    rollout-len forelen build --scenario rl --model smollm2-135m --out data/forelen/rl [--quick]

`--quick`: the scenario's quick prompt count and budget, with short-answer prompts (scenarios.py).

The output folder (card.json, data.safetensors, prompts.jsonl) is described in forelen/dataset.py.
PLP checkpoints are taken as the rollout worker takes them: a PLPTracker per sample folds in every decode
tap at the PLP layer, and a checkpoint is kept at every t (tokens generated) with `is_checkpoint(t, k)`
before the sample ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rollout_len.data import encode_prompt, read_prompts_jsonl
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.forelen.dataset import SPLITS, save_dataset
from rollout_len.forelen.scenarios import SCENARIOS, scenario_prompts
from rollout_len.model import Policy, load_policy, resolve_layer
from rollout_len.predictor.features import prompt_features
from rollout_len.predictor.plp import PLPTracker, is_checkpoint
from rollout_len.predictor.pooling import POOLINGS
from rollout_len.sample import Sample, SamplingParams

__all__ = ["build", "SPLITS"]

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def split_prompts(num_prompts: int, seed: int) -> np.ndarray:
    """0/1/2 = train/val/test per prompt (no prompt in two splits); every split gets >= 1 prompt."""
    if num_prompts < 3:
        raise ValueError(f"need at least 3 prompts to split train/val/test, got {num_prompts}")
    order = np.random.default_rng(seed).permutation(num_prompts)
    n_train = max(1, int(round(SPLIT_FRACTIONS[0] * num_prompts)))
    n_val = max(1, int(round(SPLIT_FRACTIONS[1] * num_prompts)))
    n_train = min(n_train, num_prompts - n_val - 1)
    split = np.full(num_prompts, 2, dtype=np.int64)
    split[order[:n_train]] = 0
    split[order[n_train : n_train + n_val]] = 1
    return split


def _generate(
    policy: Policy,
    prompt_ids: list[list[int]],
    prompt_feature: torch.Tensor,
    n: int,
    params: SamplingParams,
    seed: int,
    plp_layer: int,
    every: int,
    max_batch_size: int,
):
    """Decode n samples of every prompt with decode taps at `plp_layer` (prompt_feature (P, d): the
    prompts' EGTP features there). Returns the finished samples (prompt-major) and the PLP checkpoints
    (sample index, t, pool_t (d,) float16) at every t < length with `is_checkpoint(t, every)`."""
    config = EngineConfig(max_batch_size=max_batch_size, tap_layer=plp_layer, tap_entropy=True, tap_prefill=False)
    engine = DecodeEngine(policy, config)
    samples = [
        Sample(f"p{p}-s{j}", ids, params, seed=seed, group_id=f"p{p}")
        for p, ids in enumerate(prompt_ids)
        for j in range(n)
    ]
    index = {s.sample_id: i for i, s in enumerate(samples)}
    tracker = PLPTracker(None, policy.hidden_size)
    empty = torch.zeros(policy.hidden_size, dtype=torch.float16)
    # t = 0: nothing generated yet, the pool is empty (a prompt-only prediction)
    checkpoints = [(i, 0, empty) for i in range(len(samples)) if is_checkpoint(0, every)]
    for s in samples:
        engine.add(s)
    with tqdm(total=len(samples), desc="generate", unit="sample") as bar:
        while engine.has_unfinished():
            out = engine.step()
            nd = out.num_decode_rows
            if nd:
                tracker.update(out.sample_ids[:nd], out.hidden[:nd], out.entropy[:nd])
            for sid in out.sample_ids[nd:]:  # prefilled this step: its first token is out, nothing pooled
                i = index[sid]
                tracker.start(sid, prompt_feature[i // n], params.max_new_tokens, tokens_done=samples[i].num_output)
            due = [
                sid
                for sid in out.sample_ids
                if not samples[index[sid]].status.is_finished and is_checkpoint(tracker.tokens_done(sid), every)
            ]
            if due:
                for sid, pooled in zip(due, tracker.pooled(due)):
                    t = tracker.tokens_done(sid)
                    assert t == samples[index[sid]].num_output, (sid, t)
                    checkpoints.append((index[sid], t, pooled.half()))
            for s in out.finished:
                tracker.drop(s.sample_id)
            bar.update(len(out.finished))
    return samples, checkpoints


def build(
    scenario: str,
    out_dir: str | Path,
    model: str = "smollm2-135m",
    prompts_file: str | None = None,
    limit: int | None = None,
    quick: bool = False,
    seed: int = 0,
    every: int = 16,
    layers: tuple[int, ...] | None = None,  # None: a third, two thirds and all of the depth
    plp_layer: int = -1,
    max_batch_size: int = 32,
) -> dict:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {sorted(SCENARIOS)}")
    if every < 1:
        raise ValueError(f"k (--every) must be >= 1, got {every}")
    spec = SCENARIOS[scenario]
    count = limit or (spec.quick_prompts if quick else spec.num_prompts)
    max_new = spec.quick_max_new_tokens if quick else spec.max_new_tokens
    texts = read_prompts_jsonl(prompts_file)[:count] if prompts_file else scenario_prompts(scenario, count, seed, quick)
    start = time.time()
    policy = load_policy(model)
    depth = policy.num_layers
    layers = layers or (max(1, depth // 3), max(1, 2 * depth // 3), depth)
    layers = tuple(sorted({resolve_layer(layer, depth) for layer in (*layers, plp_layer)}))
    plp_layer = resolve_layer(plp_layer, policy.num_layers)
    prompt_ids = [encode_prompt(policy.tokenizer, t) for t in texts]
    too_long = [i for i, ids in enumerate(prompt_ids) if len(ids) + 1 >= policy.context_length]
    if too_long:
        raise ValueError(f"prompts {too_long[:5]} do not fit the model's context of {policy.context_length} tokens")
    split = split_prompts(len(texts), seed)

    print(f"[forelen] {scenario}: {len(texts)} prompts x {spec.n}, max {max_new} new tokens, layers {layers}")
    feats = prompt_features(policy, prompt_ids, layers=layers, methods=tuple(POOLINGS))
    params = SamplingParams(temperature=spec.temperature, max_new_tokens=max_new)
    samples, checkpoints = _generate(
        policy, prompt_ids, feats[(plp_layer, "egtp")], spec.n, params, seed, plp_layer, every, max_batch_size
    )
    ckpt_sample, ckpt_t, ckpt_pool = zip(*checkpoints)

    lengths = torch.tensor([s.num_output for s in samples])
    capped = torch.tensor([s.finish_reason == "length" for s in samples])
    tensors = {f"prompt/{layer}/{method}": v for (layer, method), v in feats.items()}
    tensors.update(
        {
            "sample/prompt": torch.tensor([int(s.group_id[1:]) for s in samples]),
            "sample/length": lengths,
            "sample/capped": capped.to(torch.uint8),
            "prompt/split": torch.from_numpy(split),
            "ckpt/sample": torch.tensor(ckpt_sample),
            "ckpt/t": torch.tensor(ckpt_t),
            "ckpt/pool": torch.stack(ckpt_pool),
        }
    )
    card = {
        "scenario": scenario,
        "model": model,
        "layers": list(layers),
        "plp_layer": plp_layer,
        "every": every,
        "seed": seed,
        "quick": quick,
        "sampling": {"n": spec.n, "temperature": spec.temperature, "top_p": 1.0, "max_new_tokens": max_new},
        "counts": {
            "prompts": len(texts),
            "samples": len(samples),
            "checkpoints": len(ckpt_t),
            **{f"{name}_prompts": int((split == i).sum()) for i, name in enumerate(SPLITS)},
        },
        "lengths": {
            "mean": float(lengths.float().mean()),
            "median": float(lengths.float().median()),
            "max": int(lengths.max()),
            "capped_fraction": float(capped.float().mean()),
        },
        "hidden_size": policy.hidden_size,
        "num_layers": depth,
        "build_time_s": round(time.time() - start, 1),
    }
    out_dir = save_dataset(out_dir, card, tensors, texts, split)
    print(
        f"[forelen] wrote {out_dir}: {len(samples)} samples, mean length {card['lengths']['mean']:.0f}, "
        f"capped {card['lengths']['capped_fraction']:.0%}, {card['build_time_s']:.0f} s"
    )
    return card
