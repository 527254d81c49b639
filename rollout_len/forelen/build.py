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

import hashlib
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
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
from rollout_len.sampling import is_greedy

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


def _shard_ranges(num_prompts: int, shard_prompts: int) -> list[range]:
    return [range(i, min(i + shard_prompts, num_prompts)) for i in range(0, num_prompts, shard_prompts)]


def _shard_path(shards: Path, index: int) -> Path:
    return shards / f"{index:05d}.safetensors"


def _generate(
    policy: Policy,
    prompt_ids: list[list[int]],
    todo: list[tuple[int, range]],
    n: int,
    params: SamplingParams,
    seed: int,
    layers: tuple[int, ...],
    plp_layer: int,
    every: int,
    max_batch_size: int,
    save_shard,
) -> None:
    """Decode n samples of every prompt of the `todo` shards (index, prompt range) in one stream of
    engine steps, with decode taps at `plp_layer`, and call `save_shard(index, tensors, seconds)` as
    soon as every sample of a shard has finished (tensors: the shard's part of data.safetensors, with
    sample and checkpoint indices local to the shard; seconds: wall time since the previous shard).

    The next shard's samples join the queue while the engine still has work, so the decode batch
    stays full across shard boundaries. PLP checkpoints (sample, t, pool_t (d,) float16) are kept at
    every t < length with `is_checkpoint(t, every)`. The n samples of a prompt are prefilled once
    (`share_prefill`).
    """
    config = EngineConfig(
        max_batch_size=max_batch_size, tap_layer=plp_layer, tap_entropy=True, tap_prefill=False, share_prefill=True
    )
    engine = DecodeEngine(policy, config)
    tracker = PLPTracker(None, policy.hidden_size)
    empty = torch.zeros(policy.hidden_size, dtype=torch.float16)
    # sample id -> (shard index, sample index in the shard, prompt index in the shard, sample)
    samples: dict[str, tuple[int, int, int, Sample]] = {}
    state: dict[int, dict] = {}  # shard index -> its features, samples, checkpoints and unfinished count
    pending = list(todo)
    total = sum(len(prompts) * n for _, prompts in todo)
    last = time.perf_counter()

    def admit_next_shard() -> None:
        index, prompts = pending.pop(0)
        feats = prompt_features(policy, [prompt_ids[p] for p in prompts], layers=layers, methods=tuple(POOLINGS))
        shard = {"feats": feats, "samples": [], "ckpts": [], "open": len(prompts) * n}
        for local, p in enumerate(prompts):
            for j in range(n):
                sample = Sample(f"p{p}-s{j}", prompt_ids[p], params, seed=seed, group_id=f"p{p}")
                samples[sample.sample_id] = (index, len(shard["samples"]), local, sample)
                if is_checkpoint(0, every):  # t = 0: nothing generated yet, the pool is empty
                    shard["ckpts"].append((len(shard["samples"]), 0, empty))
                shard["samples"].append((local, sample))
                engine.add(sample)
        state[index] = shard

    def close(index: int) -> None:
        nonlocal last
        shard = state.pop(index)
        local_prompt, done = zip(*shard["samples"])
        ckpt_sample, ckpt_t, ckpt_pool = zip(*shard["ckpts"])
        tensors = {f"prompt/{layer}/{method}": v for (layer, method), v in shard["feats"].items()}
        tensors.update(
            {
                "sample/prompt": torch.tensor(local_prompt),
                "sample/length": torch.tensor([s.num_output for s in done]),
                "sample/capped": torch.tensor([s.finish_reason == "length" for s in done], dtype=torch.uint8),
                "ckpt/sample": torch.tensor(ckpt_sample),
                "ckpt/t": torch.tensor(ckpt_t),
                "ckpt/pool": torch.stack(ckpt_pool),
            }
        )
        now = time.perf_counter()
        save_shard(index, tensors, now - last)
        last = now

    with tqdm(total=total, desc="generate", unit="sample") as bar:
        while pending or engine.has_unfinished():
            while pending and engine.num_waiting < max_batch_size:
                admit_next_shard()
            out = engine.step()
            nd = out.num_decode_rows
            if nd:
                tracker.update(out.sample_ids[:nd], out.hidden[:nd], out.entropy[:nd])
            for sid in out.sample_ids[nd:]:  # prefilled this step: its first token is out, nothing pooled
                index, _, local, sample = samples[sid]
                feature = state[index]["feats"][(plp_layer, "egtp")][local]
                tracker.start(sid, feature, params.max_new_tokens, tokens_done=sample.num_output)
            due = [
                sid
                for sid in out.sample_ids
                if not samples[sid][3].status.is_finished and is_checkpoint(tracker.tokens_done(sid), every)
            ]
            if due:
                for sid, pooled in zip(due, tracker.pooled(due)):
                    index, local, _, sample = samples[sid]
                    t = tracker.tokens_done(sid)
                    assert t == sample.num_output, (sid, t)
                    state[index]["ckpts"].append((local, t, pooled.half()))
            for sample in out.finished:
                tracker.drop(sample.sample_id)
                index = samples.pop(sample.sample_id)[0]
                state[index]["open"] -= 1
                if state[index]["open"] == 0:
                    close(index)
            bar.update(len(out.finished))


def _differences(plan: dict, before: dict) -> str:
    """What differs between a build's plan and the one in its folder, one level into dicts:
    'sampling.temperature: 1.0 here, 0.7 there; every: 8 here, 16 there' ('' when nothing does)."""
    parts = []
    for key in sorted(plan.keys() | before.keys()):
        ours, theirs = plan.get(key), before.get(key)
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for sub in sorted(ours.keys() | theirs.keys()):
                if ours.get(sub) != theirs.get(sub):
                    parts.append(f"{key}.{sub}: {ours.get(sub)} here, {theirs.get(sub)} there")
        elif key == "prompts_sha256":
            parts.append("the prompts differ")
        else:
            parts.append(f"{key}: {ours} here, {theirs} there")
    return "; ".join(parts)


def _plan(card_fields: dict, texts: list) -> dict:
    """What a build folder's shards were made with; a resumed build must match it exactly."""
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    return {**card_fields, "prompts_sha256": digest}


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
    max_batch_size: int = 64,
    shard_prompts: int = 16,
    temperature: float | None = None,
) -> dict:
    """Build (or resume building) a dataset in `out_dir`; returns its card (dataset.py).

    Prompts are generated in shards of `shard_prompts`; each finished shard is written to
    `out_dir/shards/` at once, so an interrupted build resumes at the first missing shard when run
    again with the same settings (`out_dir/shards/plan.json` holds them; different settings are a
    ValueError naming what differs). When every shard is there, the dataset files are written and
    the shards removed; running again on a finished build returns its card. `limit`: the number of
    prompts (>= 3; a source with fewer is a ValueError, not a smaller build). `temperature`: sample at
    this temperature instead of the scenario's (the drift study, forelen/drift.py); the card records it.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {sorted(SCENARIOS)}")
    if every < 1:
        raise ValueError(f"k (--every) must be >= 1, got {every}")
    if shard_prompts < 1:
        raise ValueError(f"--shard-prompts must be >= 1, got {shard_prompts}")
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be an int >= 1, got {max_batch_size!r}")
    out_dir = Path(out_dir)
    ours = {"card.json", "data.safetensors", "prompts.jsonl", "shards"}
    if (
        out_dir.is_dir()
        and any(out_dir.iterdir())
        and not ((out_dir / "card.json").is_file() or (out_dir / "shards").is_dir())
    ):
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)[:5]
        raise ValueError(
            f"--out {out_dir} holds files that are not a ForeLen-lite build ({', '.join(foreign) or 'prompts.jsonl'}); "
            "a build writes card.json, data.safetensors and prompts.jsonl there: choose an empty or new folder"
        )
    spec = SCENARIOS[scenario]
    if temperature is not None:
        spec = replace(spec, temperature=temperature)
    max_new = spec.quick_max_new_tokens if quick else spec.max_new_tokens
    params = SamplingParams(  # checks --temperature before the model loads
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_new_tokens=max_new,
        repetition_penalty=spec.repetition_penalty,
    )
    if is_greedy(params.temperature) and spec.n > 1:
        raise ValueError(
            f"--temperature {temperature} is greedy: the {spec.n} samples of each {scenario} prompt would be "
            "identical; use a temperature > 0"
        )
    count = limit if limit is not None else (spec.quick_prompts if quick else spec.num_prompts)
    if count < 3:
        raise ValueError(f"limit (number of prompts) must be >= 3 (train, val and test each get one), got {count}")
    texts = read_prompts_jsonl(prompts_file)[:count] if prompts_file else scenario_prompts(scenario, count, seed, quick)
    if limit is not None and len(texts) < limit:
        source = prompts_file or f"scenario {scenario!r}"
        raise ValueError(f"limit {limit} prompts, but {source} has only {len(texts)}")
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
    sampling = {"n": spec.n, "temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": max_new}
    if params.repetition_penalty != 1.0:  # only where used, so builds made before the key still resume
        sampling["repetition_penalty"] = params.repetition_penalty
    fields = {
        "scenario": scenario,
        "model": model,
        "layers": list(layers),
        "plp_layer": plp_layer,
        "every": every,
        "seed": seed,
        "quick": quick,
        "sampling": sampling,
    }
    plan = _plan({**fields, "shard_prompts": shard_prompts}, texts)
    shards = out_dir / "shards"
    card_path = out_dir / "card.json"
    if card_path.is_file() and not shards.exists():
        card = json.loads(card_path.read_text())
        before = card.get("plan") or {}
        differ = _differences(plan, before)
        if differ:
            raise ValueError(f"{out_dir} already holds a different finished dataset ({differ}); choose another --out")
        print(f"[forelen] {out_dir} is already built ({card['counts']['samples']} samples); nothing to do")
        return card
    shards.mkdir(parents=True, exist_ok=True)
    plan_path = shards / "plan.json"
    if plan_path.is_file():
        before = json.loads(plan_path.read_text())
        differ = _differences(plan, before)
        if differ:
            raise ValueError(
                f"{out_dir} holds shards of a build with other settings ({differ}); "
                "resume with the same settings, or choose another --out"
            )
    else:
        plan_path.write_text(json.dumps(plan, indent=2))
    ranges = _shard_ranges(len(texts), shard_prompts)
    todo = [(i, r) for i, r in enumerate(ranges) if not _shard_path(shards, i).is_file()]
    print(
        f"[forelen] {scenario}: {len(texts)} prompts x {spec.n}, max {max_new} new tokens, layers {layers}; "
        f"{len(ranges) - len(todo)} of {len(ranges)} shards already built"
    )

    def save_shard(index: int, tensors: dict[str, torch.Tensor], seconds: float) -> None:
        path = _shard_path(shards, index)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"seconds": f"{seconds:.3f}"})
        os.replace(tmp, path)  # a shard file is whole or absent

    _generate(policy, prompt_ids, todo, spec.n, params, seed, layers, plp_layer, every, max_batch_size, save_shard)
    tensors, timings = _assemble(shards, ranges)
    seconds = sum(row["seconds"] for row in timings)
    tensors["prompt/split"] = torch.from_numpy(split)
    lengths, capped = tensors["sample/length"], tensors["sample/capped"].bool()
    card = {
        **fields,
        "counts": {
            "prompts": len(texts),
            "samples": len(lengths),
            "checkpoints": len(tensors["ckpt/t"]),
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
        # generation only, summed over the runs that built the shards (a resumed build adds up)
        "build_time_s": round(seconds, 1),
        "generated_tokens_per_s": round(float(lengths.sum()) / seconds, 1) if seconds > 0 else None,
        "wall_time_last_run_s": round(time.time() - start, 1),
        "shards": timings,  # per shard, in prompt order (_assemble)
        "plan": plan,
    }
    save_dataset(out_dir, card, tensors, texts, split)
    shutil.rmtree(shards)
    print(
        f"[forelen] wrote {out_dir}: {len(lengths)} samples, mean length {card['lengths']['mean']:.0f}, "
        f"capped {card['lengths']['capped_fraction']:.0%}, {card['generated_tokens_per_s']} generated tokens/s"
    )
    return card


def _assemble(shards: Path, ranges: list[range]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The shards joined in prompt order (sample and checkpoint indices made global) and one row per
    shard: its prompts, the seconds between the save before it and its own (shards overlap in the
    engine, so one may take most of the time and the next almost none; the sum is the generation
    time) and its generated tokens."""
    parts, timings, samples_before = {}, [], 0
    for index, prompts in enumerate(ranges):
        path = _shard_path(shards, index)
        with safe_open(str(path), "pt") as f:
            seconds = float(f.metadata()["seconds"])
            shard = {k: f.get_tensor(k) for k in f.keys()}
        timings.append(
            {
                "prompts": [prompts.start, prompts.stop],
                "seconds": round(seconds, 1),
                "generated_tokens": int(shard["sample/length"].sum()),
            }
        )
        shard["sample/prompt"] = shard["sample/prompt"] + prompts.start
        shard["ckpt/sample"] = shard["ckpt/sample"] + samples_before
        samples_before += len(shard["sample/length"])
        for key, value in shard.items():
            parts.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in parts.items()}, timings
