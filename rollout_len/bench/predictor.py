"""Predictor cost benchmark: what EGTP + head add to prefill, and what PLP adds to decoding.

    rollout-len bench predictor --json docs/results/predictor-cost.json [--quick]

Head weights do not change the cost, so a freshly initialised head of the right size is timed.

Exact EGTP needs the next-token entropy at every prompt position, so it cannot cost less than the
LM head's matmul over every prompt position. `lm_head_floor_s` times that matmul alone, in the tiles
the chunked entropy uses (512 rows x 4,096 vocabulary entries, logits discarded: writing the full
(T, V) logits costs more than the entropy itself on a CPU). `entropy_s` times `linear_entropy` over
the same packed final states, the call the engine's prefill makes; `entropy_over_floor` is their
ratio. Every timing is the fastest of `repeats` runs, each op timed on its own, because this
machine is shared and a difference of two whole prefills drowns in its noise.
"""

from __future__ import annotations

import os
import time
from itertools import accumulate

import torch

from rollout_len.bench import write_json
from rollout_len.data import encode_prompt, gsm8k_prompts
from rollout_len.engine import DecodeEngine, EngineConfig
from rollout_len.kernels import linear_entropy
from rollout_len.model import load_policy
from rollout_len.predictor.head import HeadConfig, LengthBins, SoftLabelHead
from rollout_len.predictor.plp import PLPTracker
from rollout_len.predictor.pooling import pool_packed
from rollout_len.sample import Sample, SamplingParams

__all__ = ["run"]


def _egtp(taps: list) -> torch.Tensor:
    """EGTP features (B, d) of prefill taps, packed into one pooling call as prompt scoring does."""
    cu_seqlens = torch.tensor([0, *accumulate(len(t.entropy) for t in taps)])  # (B+1,)
    return pool_packed(torch.cat([t.hidden for t in taps]), torch.cat([t.entropy for t in taps]), cu_seqlens)


def _engine(policy, batch: int, taps: bool) -> DecodeEngine:
    return DecodeEngine(policy, EngineConfig(max_batch_size=batch, tap_layer=-1 if taps else None, tap_entropy=taps))


def _op_times(policy, taps: list) -> tuple[float, float]:
    """(entropy_s, floor_s): `linear_entropy` over every prefilled position's final state, and the LM
    head matmul alone over the same positions in 512 x 4,096 tiles."""
    head = policy.model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    final = torch.cat([t.hidden for t in taps])  # (N, d): the tap is the final-normed state the head reads
    with torch.inference_mode():
        start = time.perf_counter()
        linear_entropy(final, weight, bias)
        entropy_s = time.perf_counter() - start
        start = time.perf_counter()
        for r0 in range(0, len(final), 512):
            for v0 in range(0, weight.shape[0], 4096):
                torch.nn.functional.linear(final[r0 : r0 + 512], weight[v0 : v0 + 4096])
        floor_s = time.perf_counter() - start
    return entropy_s, floor_s


def _prefill_time(policy, prompts, taps: bool) -> tuple[float, list]:
    engine = _engine(policy, len(prompts), taps)
    for i, ids in enumerate(prompts):
        engine.add(Sample(f"p{i}", ids, SamplingParams(max_new_tokens=1)))
    start = time.perf_counter()
    out = engine.step()
    return time.perf_counter() - start, out.prefills


def _decode(policy, prompts, taps: bool, new_tokens: int, every: int, tracker: PLPTracker | None) -> dict:
    engine = _engine(policy, len(prompts), taps)
    for i, ids in enumerate(prompts):
        engine.add(Sample(f"d{i}", ids, SamplingParams(max_new_tokens=new_tokens, ignore_stop=True), seed=i))
    first = engine.step()
    if tracker is not None:
        for tap, feature in zip(first.prefills, _egtp(first.prefills)):
            tracker.start(tap.sample_id, feature, max_new_tokens=new_tokens)
    decode_s = plp_update_s = plp_predict_s = 0.0
    steps = 0
    while engine.has_unfinished():
        t0 = time.perf_counter()
        out = engine.step()
        decode_s += time.perf_counter() - t0
        steps += 1
        if tracker is not None:
            nd = out.num_decode_rows
            t1 = time.perf_counter()
            tracker.update(out.sample_ids[:nd], out.hidden[:nd], out.entropy[:nd])
            plp_update_s += time.perf_counter() - t1
            if steps % every == 0:
                live = [sid for sid in out.sample_ids[:nd] if sid in tracker]
                t2 = time.perf_counter()
                tracker.predict(live, quantiles=(0.5, 0.9))
                plp_predict_s += time.perf_counter() - t2
    return {"decode_s": decode_s, "steps": steps, "plp_update_s": plp_update_s, "plp_predict_s": plp_predict_s}


def run(
    model: str = "smollm2-135m", json_path: str | None = None, quick: bool = False, every: int = 16, repeats: int = 3
) -> dict:
    policy = load_policy(model)
    d = policy.hidden_size
    prompts = [encode_prompt(policy.tokenizer, r["prompt"]) for r in gsm8k_prompts(limit=8 if quick else 16)]
    head = SoftLabelHead(HeadConfig(in_dim=d), LengthBins.log_spaced(512)).eval()
    plp_head = SoftLabelHead(HeadConfig(in_dim=2 * d + 2), LengthBins.log_spaced(512)).eval()

    _prefill_time(policy, prompts[:2], taps=False)  # warm-up
    offs, ons, entropies, floors = [], [], [], []
    for _ in range(repeats):
        offs.append(_prefill_time(policy, prompts, taps=False)[0])
        on, taps = _prefill_time(policy, prompts, taps=True)
        ons.append(on)
        entropy_s, floor_s = _op_times(policy, taps)
        entropies.append(entropy_s)
        floors.append(floor_s)
    off, on, entropy, floor = min(offs), min(ons), min(entropies), min(floors)
    t0 = time.perf_counter()
    feats = _egtp(taps)
    head.predict(feats, quantiles=(0.5, 0.9))
    pool_head = time.perf_counter() - t0
    prefill = {
        "prompts": len(prompts),
        "prompt_tokens": sum(map(len, prompts)),
        "prefill_s": off,
        "prefill_with_taps_s": on,
        "egtp_and_head_s": pool_head,
        "overhead_fraction": (on - off + pool_head) / off,
        "entropy_s": entropy,
        "entropy_fraction": entropy / off,
        "lm_head_floor_s": floor,
        "floor_fraction": floor / off,
        "entropy_over_floor": entropy / floor,
        "repeats": repeats,
    }

    new_tokens = 32 if quick else 64
    plain = _decode(policy, prompts, False, new_tokens, every, None)
    with_plp = _decode(policy, prompts, True, new_tokens, every, PLPTracker(plp_head, d))
    plp_s = with_plp["plp_update_s"] + with_plp["plp_predict_s"]
    decode = {
        "batch": len(prompts),
        "new_tokens": new_tokens,
        "every": every,
        "decode_s": plain["decode_s"],
        "decode_with_taps_s": with_plp["decode_s"],
        "plp_update_s": with_plp["plp_update_s"],
        "plp_predict_s": with_plp["plp_predict_s"],
        "taps_fraction": (with_plp["decode_s"] - plain["decode_s"]) / plain["decode_s"],
        "plp_fraction": plp_s / plain["decode_s"],
    }
    result = {
        "model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "prefill": prefill,
        "decode": decode,
    }
    print(
        f"prefill of {len(prompts)} prompts ({prefill['prompt_tokens']} tokens): {off:.2f} s; with taps "
        f"(per-position entropy + layer states) {on:.2f} s; EGTP + head {pool_head * 1e3:.1f} ms; "
        f"overhead {prefill['overhead_fraction']:.1%}; the entropies alone {entropy:.2f} s "
        f"({prefill['entropy_fraction']:.1%} of prefill), the LM head matmul alone {floor:.2f} s "
        f"({prefill['floor_fraction']:.1%}): entropy / floor {prefill['entropy_over_floor']:.2f}"
    )
    print(
        f"decode batch {len(prompts)} x {new_tokens}: {plain['decode_s']:.2f} s; "
        f"with taps {with_plp['decode_s']:.2f} s "
        f"({decode['taps_fraction']:+.1%}); PLP update every step + predict every {every}: "
        f"{plp_s * 1e3:.1f} ms ({decode['plp_fraction']:.2%} of decode)"
    )
    write_json(result, json_path)
    return result
