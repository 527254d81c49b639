"""The `rollout-len` command line.

rollout-len generate --model smollm2-135m --prompt "What is 12*7?" --max-new-tokens 32
rollout-len generate --prompts prompts.jsonl --n 4 --temperature 1.0 --json out.json
rollout-len generate --gsm8k 4 --n 4 --max-new-tokens 96
rollout-len bench engine --json docs/results/engine.json [--quick]
rollout-len bench kernels --json docs/results/kernels.json [--quick]
rollout-len bench rollout --policies pool,fcfs,length_aware,oracle --task arith --repeats 3 --json OUT [--quick]
rollout-len bench rollout --mode partial --task arith --prompts 8 --steps 6 --json OUT
rollout-len bench sim --json OUT --md OUT [--regimes cpu-live,h100-queue-4] [--png OUT]
rollout-len bench sim --mode partial --workers 64 --steps 10 --json OUT
rollout-len bench calibrate --yaml OUT
rollout-len forelen build --scenario rl --out data/forelen/rl [--quick]
rollout-len forelen eval --data data/forelen/rl --methods all --json out.json
rollout-len forelen train --data data/forelen/rl --out heads/rl
rollout-len forelen eval --head heads/rl --data data/forelen/longseq --methods plp,survival
rollout-len bench soak --steps 100 --json soak.json
rollout-len forelen attribution --data data/forelen/rl --json attribution.json --png attribution.png
rollout-len forelen ablate --data data/forelen/longseq --json ablate.json --md ablate.md
rollout-len forelen drift --data data/forelen/rl --shifted data/forelen/rl-t1.0 --json drift.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate completions and print them with their lengths")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a user message (repeatable)")
    source.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} or {"messages": [...]} per line')
    source.add_argument("--gsm8k", type=int, metavar="N", help="the first N GSM8K test problems")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder or Hugging Face id")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens; 1 is off")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="OUT", help="also write the completions as JSON")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (print figures, write JSON)")
    bench = p.add_subparsers(dest="bench", required=True)
    e = bench.add_parser("engine", help="decode throughput, KV-cache cost, continuous vs static batching")
    e.add_argument("--model", default="smollm2-135m")
    e.add_argument("--json", metavar="OUT")
    e.add_argument(
        "--quick",
        action="store_true",
        help="small counts, a minute or two (--engine vllm: plus ~2 min of vLLM's compile)",
    )
    e.add_argument("--seed", type=int, help="--engine hf: the long-tail mix's lengths (default 0)")
    e.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="hf: the HF engine's figures; vllm: the vLLM backend with taps, vLLM alone and the HF engine, "
        "side by side (in .venv-vllm; docs/vllm.md)",
    )
    e.add_argument(
        "--repeats", type=int, help="--engine vllm: rounds, the variants' order rotated (default 3; 1 with --quick)"
    )
    pr = bench.add_parser("predictor", help="cost of EGTP + head in prefill and of PLP in decode")
    pr.add_argument("--model", default="smollm2-135m")
    pr.add_argument("--json", metavar="OUT")
    pr.add_argument("--quick", action="store_true")
    pr.add_argument("--every", type=int, default=16, help="PLP prediction interval k")
    r = bench.add_parser("rollout", help="scheduling policies on real Ray workers decoding the model")
    r.add_argument(
        "--mode",
        choices=["sync", "partial"],
        default="sync",
        help="sync: policies on one step's samples, in rounds; partial: stall-free steps (rollout_len.bench."
        "rollout_partial) against synchronous ones over --steps steps",
    )
    r.add_argument(
        "--policies",
        help="comma list of policies, each run once per round (oracle: the true lengths of another run; default "
        "pool,fcfs,length_aware,oracle); --mode partial: rows (default fcfs_sync,april,length_aware_partial)",
    )
    r.add_argument(
        "--repeats", type=int, help="rounds; the policy order alternates between them (medians, 95%% CIs; default 3)"
    )
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--prompts", type=int, default=16)
    r.add_argument("--n", type=int, default=8, help="samples per prompt")
    r.add_argument("--slots", type=int, default=8, help="decode slots per worker (queues form beyond them)")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--task", default="gsm8k", help="prompt set (rollout_len.tasks.TASKS), e.g. gsm8k, arith")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--every", type=int, default=16, help="PLP interval k (decode steps per chunk)")
    r.add_argument(
        "--warmup-steps", type=int, default=2, help="length_aware steps on other prompts first (fit the head)"
    )
    r.add_argument("--predictions", default="model", choices=["model", "noise"], help="noise: the do-no-harm check")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument(
        "--engine", choices=("hf", "vllm"), default="hf", help="the workers' decode engine (vllm: docs/vllm.md)"
    )
    r.add_argument("--engine-eager", action="store_true", help="--engine vllm without torch.compile (fast start)")
    r.add_argument("--json", metavar="OUT")
    r.add_argument("--png", metavar="OUT", help="Gantt timeline per policy")
    r.add_argument("--quick", action="store_true", help="2 workers, 8 prompts x 4, 96 tokens, 1 warm-up step, 2 rounds")
    r.add_argument("--seed", type=int, default=0)
    rp = r.add_argument_group("--mode partial only (--prompts is the quota of complete groups per step)")
    rp.add_argument("--steps", type=int, help="steps per row (default 6)")
    rp.add_argument("--over-sample-rate", type=float, help="verl's meaning, in groups: in flight = quota / (1 - rate)")
    rp.add_argument("--max-staleness", type=int, help="steps a token may age before training (default 1)")
    rp.add_argument("--on-stale", help="restart (default) or drop a carried sample past the bound")
    sm = bench.add_parser(
        "sim",
        help="scheduling policies on simulated workers (cost model + length trace), every regime by default",
    )
    sm.add_argument("--regimes", help="comma list of named regimes (default: all; see rollout_len/bench/sim.py)")
    sm.add_argument(
        "--policies", help="comma list (default: fcfs,pool,static_padded,bucketed_padded,length_aware,oracle)"
    )
    custom = sm.add_argument_group("one custom regime instead (unset fields as in cpu-queue-4)")
    custom.add_argument("--workers", type=int)
    custom.add_argument("--slots", type=int, help="slots per worker")
    custom.add_argument("--prompts", type=int)
    custom.add_argument("--n", type=int, help="samples per prompt")
    custom.add_argument("--trace", help="length trace JSON/JSONL, or synthetic:reasoning|short|mix")
    custom.add_argument("--profile", help="cost-model YAML")
    custom.add_argument("--every", type=int, help="decode steps per chunk (PLP interval k)")
    sm.add_argument("--sigma", type=float, default=0.5, help="log-normal noise of the simulated predictor")
    sm.add_argument(
        "--mode",
        choices=["sync", "partial"],
        default="sync",
        help="sync: one synchronous step per regime; partial: stall-free steps (rollout_len.sched.partial) on "
        "the partial regime (64 x 16 slots, quota 256 groups x 8, synthetic:reasoning, H100 profile) or a custom one",
    )
    part = sm.add_argument_group("--mode partial only (--prompts is the quota of complete groups per step)")
    part.add_argument("--steps", type=int, help="steps per row (default 10)")
    part.add_argument(
        "--over-sample-rate", type=float, help="verl's meaning, in groups: in flight = quota / (1 - rate)"
    )
    part.add_argument("--max-staleness", type=int, help="steps a token may age before training (default 2)")
    part.add_argument("--on-stale", help="restart (default) or drop a carried sample past the bound")
    part.add_argument("--weight-sync-s", type=float, help="weight update time between steps (default 0)")
    sm.add_argument("--json", metavar="OUT")
    sm.add_argument("--png", metavar="OUT")
    sm.add_argument("--md", metavar="OUT", help="the regimes' tables as Markdown")
    sm.add_argument("--seed", type=int, default=0)
    ca = bench.add_parser("calibrate", help="fit the cost model to measured DecodeEngine steps")
    ca.add_argument("--model", default="smollm2-135m")
    ca.add_argument("--threads", type=int, default=1)
    ca.add_argument("--yaml", metavar="OUT", required=True)
    ca.add_argument("--json", metavar="OUT", help="the measurements")
    ln = bench.add_parser("lengths", help="response-length distribution and solve rate of a task (a length trace)")
    ln.add_argument("--task", default="gsm8k", help="gsm8k, gsm8k-short, gsm8k-mix, arith, arith-explain, arith-mix")
    ln.add_argument("--prompts", type=int, default=16)
    ln.add_argument("--n", type=int, default=8, help="samples per prompt")
    ln.add_argument("--max-new-tokens", type=int, default=256)
    ln.add_argument("--temperature", type=float, default=1.0)
    ln.add_argument("--seed", type=int, default=0, help="sampling and the synthetic tasks' numbers")
    ln.add_argument("--batch", type=int, default=64, help="decode slots of the engine")
    ln.add_argument("--model", default="smollm2-135m")
    ln.add_argument("--json", metavar="OUT", help="figures and the trace (groups of lengths, max_new_tokens)")
    so = bench.add_parser("soak", help="many rollout steps: step time, online re-fit and memory as the buffer fills")
    so.add_argument("--steps", type=int, default=100)
    so.add_argument("--model", default="tiny-llama", help="tiny-llama (random weights) or smollm2-135m, ...")
    so.add_argument("--workers", type=int, default=2)
    so.add_argument("--slots", type=int, default=4, help="decode slots per worker")
    so.add_argument("--prompts", type=int, default=8, help="new prompts per step")
    so.add_argument("--n", type=int, default=4, help="samples per prompt")
    so.add_argument("--max-new-tokens", type=int, default=32)
    so.add_argument("--every", type=int, default=16, help="PLP interval k")
    so.add_argument("--refit-lag", type=int, default=0, choices=[0, 1], help="RolloutConfig.refit_lag")
    so.add_argument("--update-s", type=float, default=0.0, help="sleep between steps (the trainer's update)")
    so.add_argument("--ray", action="store_true", help="Ray workers instead of in-process ones")
    so.add_argument("--json", metavar="OUT")
    so.add_argument("--seed", type=int, default=0)
    k = bench.add_parser("kernels", help="entropy over the vocabulary: naive vs chunked (CPU), Triton (GPU)")
    k.add_argument("--json", metavar="OUT")
    k.add_argument("--quick", action="store_true")


def _add_forelen(sub) -> None:
    p = sub.add_parser("forelen", help="ForeLen-lite length-prediction benchmark")
    fl = p.add_subparsers(dest="forelen", required=True)
    b = fl.add_parser("build", help="generate a dataset with the policy (lengths, features, PLP checkpoints)")
    b.add_argument("--scenario", required=True, choices=["longseq", "reasoning", "rl"])
    b.add_argument("--model", default="smollm2-135m")
    b.add_argument("--out", required=True)
    b.add_argument("--prompts", metavar="FILE.jsonl", help="your own prompts instead of the scenario's")
    b.add_argument("--limit", type=int, help="number of prompts (>= 3; at most what the prompt source holds)")
    b.add_argument(
        "--quick", action="store_true", help="a few prompts asking for short answers, 128 tokens: the path in minutes"
    )
    b.add_argument("--every", type=int, default=16, help="PLP checkpoint interval k (tokens)")
    b.add_argument(
        "--temperature", type=float, help="sample at this temperature instead of the scenario's (drift studies)"
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-batch-size", type=int, default=64)
    b.add_argument(
        "--shard-prompts",
        type=int,
        default=16,
        help="prompts per shard: each finished shard is saved, and a build run again with the same "
        "settings resumes at the first missing one",
    )
    e = fl.add_parser("eval", help="MAE table of the predictors on built datasets")
    e.add_argument("--data", action="append", required=True, help="a built dataset folder (repeatable)")
    e.add_argument(
        "--methods",
        default="all",
        help="comma list of constant,survival,survival_group,egtp,mean,max,last,plp,plp_raw,plp_mean,plp_pca,"
        "ssjf_reg,ssjf_mc,s3,ltr_c,trail,pia,tpv,history,siblings, or 'all' (plp_raw: not recalibrated; plp_mean: "
        "the mean point prediction; plp_pca: features projected onto 32 principal components)",
    )
    e.add_argument("--layer", type=int, help="hidden layer of the prompt features (default: the PLP layer)")
    e.add_argument("--encoder", default="all-minilm-l6-v2", help="proxy encoder of ssjf_reg, ssjf_mc, s3, ltr_c")
    e.add_argument("--head", metavar="HEAD_DIR", help="score this saved head (forelen train) as the plp row, no fit")
    e.add_argument("--json", metavar="OUT")
    t = fl.add_parser("train", help="fit the PLP head on built datasets and save it (weights + card)")
    t.add_argument("--data", action="append", required=True, help="a built dataset folder (repeatable)")
    t.add_argument("--out", required=True, metavar="HEAD_DIR")
    t.add_argument("--seed", type=int, default=0)
    c = fl.add_parser(
        "plp-curve",
        help="MAE (and q90 coverage) of the remaining length vs decoded tokens: PLP, its ablations, survival",
    )
    c.add_argument("--data", required=True)
    c.add_argument("--json", metavar="OUT")
    c.add_argument("--png", metavar="OUT")
    d = fl.add_parser(
        "drift", help="a PLP head fit on one build, streamed over a shifted one: frozen vs re-fit online, vs survival"
    )
    d.add_argument("--data", required=True, help="the build the head is fit on (its train split)")
    d.add_argument("--shifted", required=True, help="a build at other settings (e.g. --temperature), streamed")
    d.add_argument("--prompts-per-step", type=int, default=8, help="prompts (with all their samples) per step")
    d.add_argument("--json", metavar="OUT")
    a = fl.add_parser("attribution", help="per-token importance ||dL/dh_t|| against token entropy (Pearson r, scatter)")
    a.add_argument("--data", required=True)
    a.add_argument("--layer", type=int, help="decoder layer of h_t, below the last (default: half depth)")
    a.add_argument("--json", metavar="OUT")
    a.add_argument("--png", metavar="OUT")
    pl = fl.add_parser("plots", help="length distribution per scenario (PNG)")
    pl.add_argument("--data", action="append", required=True)
    pl.add_argument("--png", required=True)
    ab = fl.add_parser(
        "ablate", help="EGTP ablations: temperature, layer, head settings, entropy on a subset of positions"
    )
    ab.add_argument("--data", action="append", required=True, help="a built dataset folder (repeatable)")
    ab.add_argument("--json", required=True, metavar="OUT")
    ab.add_argument("--md", metavar="OUT.md", help="the tables in Markdown, the command line on top")
    ab.add_argument("--device", default="cpu", help="where the policy runs its prefill (cpu, cuda, ...)")


def _forelen(args) -> int:
    if args.forelen == "train":
        from rollout_len.forelen.train import train_head
        from rollout_len.predictor.train import FitConfig

        card = train_head(args.data, args.out, FitConfig(seed=args.seed))
        print(f"wrote {args.out}: model {card['model']}, layer {card['layer']}, {card['in_dim']}-dim features")
        for scenario, scores in card["val"].items():
            cells = [
                f"{k} MAE {scores[k]['mae']:.1f} (n={scores[k]['n']})"
                for k in ("admission", "in_flight")
                if k in scores
            ]
            print(f"  val {scenario}: " + ", ".join(cells))
        return 0
    if args.forelen == "ablate":
        import shlex

        from rollout_len.bench.sim import check_output
        from rollout_len.forelen.ablation import ablate, format_ablation, write_outputs

        for flag, path in (("--json", args.json), ("--md", args.md)):
            if path:
                check_output(flag, path)  # before the prefill, the slow part
        results = ablate(args.data, device=args.device)
        print(format_ablation(results))
        given = [("--data", d) for d in args.data] + [("--json", args.json), ("--md", args.md)]
        given += [("--device", args.device)] if args.device != "cpu" else []
        command = "rollout-len forelen ablate " + " ".join(f"{f} {shlex.quote(v)}" for f, v in given if v)
        write_outputs(results, args.json, args.md, command)
        return 0
    if args.forelen == "build":
        from rollout_len.forelen.build import build

        try:
            build(
                args.scenario,
                args.out,
                model=args.model,
                prompts_file=args.prompts,
                limit=args.limit,
                quick=args.quick,
                seed=args.seed,
                every=args.every,
                temperature=args.temperature,
                max_batch_size=args.max_batch_size,
                shard_prompts=args.shard_prompts,
            )
        except KeyboardInterrupt:
            shards = Path(args.out) / "shards"
            saved = len(list(shards.glob("*.safetensors"))) if shards.is_dir() else 0
            print(
                f"\ninterrupted: {saved} finished shard(s) kept in {shards}; run the same command again to resume",
                file=sys.stderr,
            )
            return 130
        return 0
    from rollout_len.bench import write_json
    from rollout_len.bench.sim import check_output
    from rollout_len.forelen.evaluate import CURVE_METHODS, METHODS, evaluate_methods, format_table, plp_curve

    for flag in ("json", "png"):  # before the slow part (not every subcommand has both)
        if getattr(args, flag, None):
            check_output(f"--{flag}", getattr(args, flag))

    if args.forelen == "plots":
        from rollout_len.forelen.plots import plot_lengths

        plot_lengths(args.data, args.png)
        print(f"wrote {args.png}")
        return 0
    if args.forelen == "attribution":
        from rollout_len.forelen.attribution import attribution

        result = attribution(args.data, layer=args.layer)
        print(
            f"{result['scenario']}: {result['tokens']} tokens of {result['prompts']} test prompts, h_t at layer "
            f"{result['layer']}: Pearson r(importance, entropy) = {result['pearson_r']:.3f} "
            f"(mean per prompt {result['mean_prompt_r']:.3f}; the reference paper reports 0.451)"
        )
        if args.png:
            from rollout_len.forelen.plots import plot_attribution

            plot_attribution(result, args.png)
        payload = {k: v for k, v in result.items() if k not in ("importance", "entropy")}
    elif args.forelen == "drift":
        from rollout_len.forelen.drift import drift, format_drift

        payload = drift(args.data, args.shifted, prompts_per_step=args.prompts_per_step)
        print(format_drift(payload))
    elif args.forelen == "eval":
        methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
        results = evaluate_methods(args.data, methods, layer=args.layer, encoder=args.encoder, head=args.head)
        print(format_table(results))
        payload = {sc: {k: v for k, v in rows.items() if not k.startswith("_")} for sc, rows in results.items()}
    else:
        curve = plp_curve(args.data)
        names = [m for m in CURVE_METHODS if any(m in row for row in curve.values())]
        print("remaining-length MAE at t (n: test samples still running at t; capped: share of them that hit the cap)")
        print(f"{'t':>5s} {'n':>5s} {'capped':>6s} " + " ".join(f"{m:>14s}" for m in names))
        for t, row in curve.items():
            first = next(iter(row.values()))
            cells = [f"{row[m]['mae']:14.1f}" if m in row else f"{'-':>14s}" for m in names]
            print(f"{t:5d} {first['n']:5d} {first['capped_fraction']:6.0%} " + " ".join(cells))
        print("MAE / survival's MAE at t, 95% interval over test prompts (paired bootstrap)")
        print(f"{'t':>5s} " + " ".join(f"{m:>20s}" for m in names))
        for t, row in curve.items():
            cells = []
            for m in names:
                vs = row.get(m, {}).get("vs_survival")
                ok = vs and vs["ci95"]
                cells.append(f"{vs['ratio']:.2f} [{vs['ci95'][0]:.2f},{vs['ci95'][1]:.2f}]" if ok else "-")
            print(f"{t:5d} " + " ".join(f"{c:>20s}" for c in cells))
        payload = {str(t): row for t, row in curve.items()}
        if args.png:
            from rollout_len.forelen.plots import plot_plp_curve

            plot_plp_curve(curve, args.png, title=f"remaining-length error ({Path(args.data).name})")
    write_json(payload, args.json)  # strict JSON: an undefined figure (e.g. tau of a constant) is null
    return 0


def _generate(args) -> int:
    from rollout_len.data import encode_prompt, gsm8k_prompts, read_prompts_jsonl
    from rollout_len.engine import DecodeEngine, EngineConfig
    from rollout_len.model import load_policy
    from rollout_len.sample import Sample, SamplingParams

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    # Validate everything cheap before the model loads.
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    if args.prompts:
        prompts = read_prompts_jsonl(args.prompts)
    elif args.gsm8k is not None:
        prompts = [row["prompt"] for row in gsm8k_prompts(limit=args.gsm8k)]
    else:
        prompts = args.prompt
        if any(not p.strip() for p in prompts):
            raise ValueError("--prompt: the prompt is empty")
    policy = load_policy(args.model, dtype=args.dtype, device=args.device)
    samples = []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(policy.tokenizer, prompt)
        samples += [Sample(f"p{i}-s{j}", ids, params, seed=args.seed, group_id=f"p{i}") for j in range(args.n)]
    engine = DecodeEngine(policy, EngineConfig(max_batch_size=args.max_batch_size))
    start = time.perf_counter()
    engine.run(samples)
    elapsed = time.perf_counter() - start
    records = []
    for sample in samples:
        text = policy.tokenizer.decode(sample.output_ids, skip_special_tokens=True)
        records.append(
            {
                "sample_id": sample.sample_id,
                "group_id": sample.group_id,
                "length": sample.num_output,
                "finish_reason": sample.finish_reason,
                "text": text,
            }
        )
        print(f"=== {sample.sample_id}  length={sample.num_output}  finish={sample.finish_reason}")
        print(text.strip())
    total = sum(r["length"] for r in records)
    print(
        f"--- {len(samples)} completions, {total} tokens in {elapsed:.1f} s ({total / elapsed:.1f} tok/s); "
        f"lengths: {[r['length'] for r in records]}"
    )
    if args.json:
        with open(args.json, "w") as f:
            settings = {"model": args.model, "seed": args.seed, "sampling": dataclasses.asdict(params)}
            json.dump({**settings, "completions": records}, f, indent=2)  # what reproduces the run
    return 0


PARTIAL_FLAGS = ("steps", "over_sample_rate", "max_staleness", "on_stale", "weight_sync_s")


def _sim_outputs(args, argv: list[str] | None) -> dict:
    """What both `bench sim` modes take alike: noise, seed, outputs, and the command as typed (for
    the Markdown it writes)."""
    command = "rollout-len bench sim " + " ".join(sys.argv[3:] if argv is None else argv[2:])
    return {"sigma": args.sigma, "json_path": args.json, "md_path": args.md, "seed": args.seed, "command": command}


def _sim_partial(args, custom: dict, argv: list[str] | None) -> int:
    """`bench sim --mode partial`: flags that only the synchronous regimes take are errors."""
    from rollout_len.bench.sim import run_partial

    for flag in ("regimes", "png"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} applies to --mode sync only (partial runs one regime: --workers/--slots/...)")
    given = {f: getattr(args, f) for f in PARTIAL_FLAGS if getattr(args, f) is not None}
    if args.policies is not None:
        given["rows"] = _names(args.policies)
    run_partial(custom=custom or None, **given, **_sim_outputs(args, argv))
    return 0


ROLLOUT_PARTIAL_FLAGS = ("steps", "over_sample_rate", "max_staleness", "on_stale")


def _rollout_partial(args) -> int:
    """`bench rollout --mode partial`: flags that only the synchronous rounds take are errors."""
    from rollout_len.bench.rollout_partial import run

    for flag, value in (("repeats", args.repeats), ("png", args.png), ("quick", args.quick or None)):
        if value is not None:
            raise ValueError(f"--{flag} applies to --mode sync only (partial runs --steps interleaved steps per row)")
    if args.predictions != "model":
        raise ValueError("--predictions applies to --mode sync only")
    given = {f: getattr(args, f) for f in ROLLOUT_PARTIAL_FLAGS if getattr(args, f) is not None}
    if args.policies is not None:
        given["rows"] = _names(args.policies)
    run(**_rollout_common(args), **given)
    return 0


def _rollout_common(args) -> dict:
    """What both `bench rollout` modes take alike."""
    keys = ("workers", "prompts", "n", "slots", "max_new_tokens", "every", "warmup_steps", "task", "temperature")
    return {**{k: getattr(args, k) for k in keys}, "model": args.model, "json_path": args.json, "seed": args.seed}


def _require_vllm(flag: str) -> None:
    """A clear error, before any model loads, where vLLM is not installed (the main environment)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        from rollout_len.vllm_engine import VLLM_MISSING

        raise ValueError(f"{flag}: {VLLM_MISSING}")


def _names(text: str) -> tuple[str, ...]:
    """A comma list from the command line: 'a, b,' -> ('a', 'b')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollout-len", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_bench(sub)
    _add_forelen(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "forelen":
            return _forelen(args)
        if args.command == "bench" and args.bench == "engine":
            from rollout_len.bench.throughput import run, run_vllm

            if args.engine == "vllm":
                if args.seed is not None:
                    raise ValueError("--seed applies to --engine hf only (the vllm comparison has no random mix)")
                if args.repeats is not None and args.repeats < 1:
                    raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
                _require_vllm("--engine vllm")
                run_vllm(model=args.model, json_path=args.json, quick=args.quick, repeats=args.repeats)
            else:
                if args.repeats is not None:
                    raise ValueError("--repeats applies to --engine vllm only")
                seed = 0 if args.seed is None else args.seed
                run(model=args.model, json_path=args.json, quick=args.quick, seed=seed)
            return 0
        if args.command == "bench" and args.bench == "predictor":
            from rollout_len.bench.predictor import run as run_predictor

            run_predictor(model=args.model, json_path=args.json, quick=args.quick, every=args.every)
            return 0
        if args.command == "bench" and args.bench == "rollout":
            from rollout_len.bench.rollout import DEFAULT_POLICIES
            from rollout_len.bench.rollout import run as run_rollout

            if args.engine == "vllm" or args.engine_eager:
                if args.mode == "partial":
                    raise ValueError("--engine vllm / --engine-eager apply to --mode sync only")
                if args.engine_eager and args.engine != "vllm":
                    raise ValueError("--engine-eager applies to --engine vllm only")
                _require_vllm("--engine vllm")
            if args.mode == "partial":
                return _rollout_partial(args)
            partial_only = [f"--{f.replace('_', '-')}" for f in ROLLOUT_PARTIAL_FLAGS if getattr(args, f) is not None]
            if partial_only:
                raise ValueError(f"{partial_only[0]} applies to --mode partial only")
            run_rollout(
                _names(args.policies) if args.policies is not None else DEFAULT_POLICIES,
                repeats=args.repeats if args.repeats is not None else 3,
                predictions=args.predictions,
                quick=args.quick,
                png=args.png,
                engine=args.engine,
                engine_eager=args.engine_eager,
                **_rollout_common(args),
            )
            return 0
        if args.command == "bench" and args.bench == "sim":
            from rollout_len.bench.sim import DEFAULT_POLICIES, REGIMES
            from rollout_len.bench.sim import run as run_sim

            fields = ("workers", "slots", "prompts", "n", "trace", "profile", "every")
            custom = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
            if args.mode == "partial":
                return _sim_partial(args, custom, argv)
            partial_only = [f"--{f.replace('_', '-')}" for f in PARTIAL_FLAGS if getattr(args, f) is not None]
            if partial_only:
                raise ValueError(f"{partial_only[0]} applies to --mode partial only")
            if custom and args.regimes:
                raise ValueError(
                    "--regimes picks named regimes; --workers/--slots/... define one custom regime: not both"
                )
            run_sim(
                regimes=_names(args.regimes) if args.regimes is not None else tuple(REGIMES),
                custom=custom or None,
                policies=_names(args.policies) if args.policies is not None else DEFAULT_POLICIES,
                png=args.png,
                **_sim_outputs(args, argv),
            )
            return 0
        if args.command == "bench" and args.bench == "calibrate":
            from rollout_len.bench.calibrate import run as run_calibrate

            run_calibrate(args.model, args.threads, args.yaml, args.json)
            return 0
        if args.command == "bench" and args.bench == "lengths":
            from rollout_len.bench.lengths import run as run_lengths

            run_lengths(
                args.task,
                args.prompts,
                args.n,
                args.max_new_tokens,
                args.temperature,
                args.seed,
                args.batch,
                args.model,
                args.json,
            )
            return 0
        if args.command == "bench" and args.bench == "soak":
            from rollout_len.bench.soak import run as run_soak

            run_soak(
                args.steps,
                args.model,
                args.workers,
                args.slots,
                args.prompts,
                args.n,
                args.max_new_tokens,
                args.every,
                args.refit_lag,
                args.update_s,
                args.ray,
                args.json,
                args.seed,
            )
            return 0
        if args.command == "bench" and args.bench == "kernels":
            from rollout_len.bench.kernels import run as run_kernels

            run_kernels(args.json, quick=args.quick)
            return 0
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"rollout-len: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
