"""Benchmark of linear_entropy: peak memory and time, naive vs chunked on CPU (+ triton / torch.compile on CUDA).

    rollout-len bench kernels --json docs/results/kernels.json [--quick]

CPU memory method: each implementation runs in its own fresh Python subprocess. The child builds the inputs,
runs the op once on a tiny problem (so one-time library/thread-pool setup is not billed to the op), records
its resident set size (VmRSS), resets the kernel's RSS high-water mark (`echo 5 > /proc/self/clear_refs`,
Linux >= 4.0), runs the op and reads VmHWM. peak_bytes = VmHWM - VmRSS before the op: the most extra
physical memory the whole process touched while the op ran (torch's CPU allocator, BLAS workspaces, Python
objects, everything). If clear_refs cannot be written the child falls back to ru_maxrss (the process-lifetime
peak, which here is dominated by the op since the inputs are built without large temporaries).

CUDA (only when torch.cuda.is_available()): bf16 inputs, triton vs naive vs torch.compile(naive), peak from
torch.cuda.max_memory_allocated, time from CUDA events (median of a few runs after a warm-up), and the
fraction of the roofline achieved: roofline time = max(min_bytes / peak_bw, flops / peak_flops) with
min_bytes = the inputs read once + the outputs written once, flops = 2*T*V*d. peak_bw is measured with a
large device-to-device copy; peak_flops comes from ROLLOUT_LEN_PEAK_TFLOPS or a small table of bf16 dense
peaks, else a measured large bf16 matmul.

    from rollout_len.bench import kernels; kernels.run("kernels.json")    # or: python -m rollout_len.bench.kernels
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from rollout_len.bench import write_json
from rollout_len.kernels import linear_entropy
from rollout_len.kernels.entropy import _linear_entropy_naive

__all__ = ["run"]

CPU_SHAPE = {"T": 4096, "V": 49152, "d": 576}  # SmolLM2-135M vocabulary/width, a long prompt
CPU_SHAPE_QUICK = {"T": 256, "V": 8192, "d": 64}
CPU_TOL = 1e-4
CUDA_SHAPES = [(4096, 151936, 3584), (16384, 151936, 3584), (32768, 151936, 3584)]  # Qwen2.5-7B head
CUDA_SHAPES_QUICK = [(1024, 151936, 3584)]
_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0}


def _make_inputs(T: int, V: int, d: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Deterministic hidden (T, d) and weight (V, d) with logit std ~3 (entropies well inside (0, log V))."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(T, d, generator=gen).to(device=device, dtype=dtype)  # (T, d)
    weight = torch.randn(V, d, generator=gen).mul_(3.0 / d**0.5).to(device=device, dtype=dtype)  # (V, d)
    return hidden, weight


# ------------------------------------------------------------------------------------------------ CPU child


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(impl: str, T: int, V: int, d: int, repeats: int, out_path: str) -> dict[str, Any]:
    hidden, weight = _make_inputs(T, V, d, torch.float32, "cpu")
    linear_entropy(hidden[:8], weight[:1024], impl=impl)  # warm-up: library init, thread pool, code pages
    peaks, times, result = [], [], None
    method = "VmHWM-VmRSS (clear_refs)"
    for _ in range(repeats):
        result = None
        rss0 = _read_status_kb("VmRSS")
        reset = _reset_hwm() and rss0 is not None
        if not reset:
            method = "ru_maxrss-VmRSS (process-lifetime peak; clear_refs unavailable)"
        t0 = time.perf_counter()
        result = linear_entropy(hidden, weight, impl=impl)
        times.append(time.perf_counter() - t0)
        if reset:
            hwm = _read_status_kb("VmHWM")
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        peaks.append(max(0, (hwm or 0) - (rss0 or 0)) * 1024)
    torch.save(result, out_path)
    return {
        "peak_bytes": int(max(peaks)),
        "time_s": float(min(times)),
        "method": method,
        "threads": torch.get_num_threads(),
    }


def _run_child(impl: str, shape: dict[str, int], repeats: int, out_path: str, threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        "-m",
        "rollout_len.bench.kernels",
        "--child",
        impl,
        "--T",
        str(shape["T"]),
        "--V",
        str(shape["V"]),
        "--d",
        str(shape["d"]),
        "--repeats",
        str(repeats),
        "--out",
        out_path,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child for impl={impl} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu(quick: bool, threads: int | None) -> dict[str, Any]:
    shape = CPU_SHAPE_QUICK if quick else CPU_SHAPE
    repeats = 1 if quick else 3
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for impl in ("naive", "chunked"):
            path = os.path.join(tmp, f"{impl}.pt")
            info = _run_child(impl, shape, repeats, path, threads)
            out[impl] = {"peak_bytes": info["peak_bytes"], "time_s": info["time_s"]}
            meta = {"method": info["method"], "threads": info["threads"], "repeats": repeats}
            results[impl] = torch.load(path)
    out["max_abs_diff"] = float((results["naive"] - results["chunked"]).abs().max())
    out["shape"] = dict(shape, dtype="float32")
    out.update(meta)
    out["peak_ratio"] = out["chunked"]["peak_bytes"] / max(out["naive"]["peak_bytes"], 1)
    out["target_met"] = bool(out["peak_ratio"] <= 0.1 and out["max_abs_diff"] <= CPU_TOL)
    return out


# ------------------------------------------------------------------------------------------------ CUDA


def _cuda_peak_bw() -> float:
    """Achieved device-to-device copy bandwidth in bytes/s (read + write), a practical HBM roofline."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    bw = 10 * 2 * x.numel() / (start.elapsed_time(end) / 1e3)
    del x, y
    torch.cuda.empty_cache()
    return bw


def _cuda_peak_flops() -> tuple[float, str]:
    env = os.environ.get("ROLLOUT_LEN_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12, "env ROLLOUT_LEN_PEAK_TFLOPS"
    name = torch.cuda.get_device_name()
    for key, tflops in _BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"table ({key} bf16 dense)"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0), "measured bf16 matmul"


def _cuda_time(fn, reps: int = 3) -> float:
    fn()  # warm-up (compiles triton / torch.compile)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _cuda(quick: bool) -> dict[str, Any]:
    peak_bw = _cuda_peak_bw()
    peak_flops, flops_src = _cuda_peak_flops()
    compiled = torch.compile(_linear_entropy_naive, dynamic=False)
    impls = {
        "triton": lambda h, w: linear_entropy(h, w, impl="triton"),
        "naive": lambda h, w: linear_entropy(h, w, impl="naive"),
        "torch_compile": lambda h, w: compiled(h, w, None, 1.0, None)[0],
    }
    rows = []
    for T, V, d in CUDA_SHAPES_QUICK if quick else CUDA_SHAPES:
        hidden, weight = _make_inputs(T, V, d, torch.bfloat16, "cuda")
        min_bytes = (T * d + V * d) * 2 + T * 4
        flops = 2 * T * V * d
        roof_s = max(min_bytes / peak_bw, flops / peak_flops)
        ref = None
        row: dict[str, Any] = {"T": T, "V": V, "d": d, "dtype": "bfloat16", "roofline_s": roof_s}
        for name, fn in impls.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                secs = _cuda_time(functools.partial(fn, hidden, weight))
                res = fn(hidden, weight)
            except torch.cuda.OutOfMemoryError:
                row[name] = {"error": "out of memory"}
                continue
            peak = torch.cuda.max_memory_allocated() - base
            row[name] = {
                "peak_bytes": int(peak),
                "time_s": secs,
                "roofline_fraction": roof_s / secs,
                "bandwidth_fraction": min_bytes / secs / peak_bw,
                "compute_fraction": flops / secs / peak_flops,
            }
            if name == "naive":
                ref = res
            elif ref is not None:
                row[name]["max_abs_diff_vs_naive"] = float((res - ref).abs().max())
            del res
        if ref is not None and "peak_bytes" in row.get("triton", {}):
            diff = linear_entropy(hidden, weight, impl="triton") - ref
            row["triton"]["max_abs_diff_vs_naive"] = float(diff.abs().max())
        rows.append(row)
        del hidden, weight, ref
    return {
        "device": torch.cuda.get_device_name(),
        "peak_bw_bytes_s": peak_bw,
        "peak_flops": peak_flops,
        "peak_flops_source": flops_src,
        "shapes": rows,
    }


# ------------------------------------------------------------------------------------------------ driver


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _print_table(result: dict[str, Any]) -> None:
    cpu = result["cpu"]
    s = cpu["shape"]
    print(
        f"linear_entropy on CPU, T={s['T']} V={s['V']} d={s['d']} float32, {cpu['threads']} thread(s), "
        f"peak = {cpu['method']}"
    )
    print(f"{'impl':<10}{'peak memory':>16}{'time':>12}")
    for impl in ("naive", "chunked"):
        print(f"{impl:<10}{_fmt_bytes(cpu[impl]['peak_bytes']):>16}{cpu[impl]['time_s']:>11.3f}s")
    print(
        f"chunked/naive peak = {cpu['peak_ratio']:.4f} (target <= 0.1), max |diff| = {cpu['max_abs_diff']:.3e} "
        f"(tol {CPU_TOL:g}) -> {'OK' if cpu['target_met'] else 'MISSED'}"
    )
    if "cuda" in result:
        cuda = result["cuda"]
        print(
            f"\nlinear_entropy on {cuda['device']} bf16 (peak bw {cuda['peak_bw_bytes_s'] / 1e12:.2f} TB/s, "
            f"peak {cuda['peak_flops'] / 1e12:.0f} TFLOP/s from {cuda['peak_flops_source']})"
        )
        print(f"{'T':>7}{'impl':>15}{'peak memory':>16}{'time':>12}{'roofline':>10}")
        for row in cuda["shapes"]:
            for name in ("triton", "naive", "torch_compile"):
                r = row.get(name, {})
                if "error" in r:
                    print(f"{row['T']:>7}{name:>15}{r['error']:>38}")
                elif r:
                    print(
                        f"{row['T']:>7}{name:>15}{_fmt_bytes(r['peak_bytes']):>16}{r['time_s'] * 1e3:>10.2f}ms"
                        f"{r['roofline_fraction']:>10.1%}"
                    )


def run(json_path: str | None, quick: bool = False, *, threads: int | None = None) -> dict[str, Any]:
    """Benchmark linear_entropy; print a table, write JSON to json_path (if given) and return the dict.

    {"cpu": {"naive": {"peak_bytes", "time_s"}, "chunked": {...}, "max_abs_diff", ...}, "cuda": {...} (GPU only)}.
    quick=True uses small shapes (a smoke test, the 0.1x memory target is not meaningful there).
    threads sets OMP/MKL threads of the CPU children (default: torch's default).
    """
    result: dict[str, Any] = {"cpu": _cpu(quick, threads)}
    if torch.cuda.is_available():
        result["cuda"] = _cuda(quick)
    _print_table(result)
    write_json(result, json_path)
    return result


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", choices=("naive", "chunked"), help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    p.add_argument("--V", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.T, args.V, args.d, args.repeats, args.out)))
    else:
        run(args.json, args.quick, threads=args.threads)


if __name__ == "__main__":
    _main()
