"""Benchmark pool_cross: fused paths against the eager unfused PyTorch reference.

GPU (CUDA available): the Triton kernel vs eager, `triton.testing.do_bench` medians, at serving
shapes B in (1, 8, 64), L = 16, H = 384, K in (100, 1000), both crossings, plus achieved GB/s
against the device's measured copy bandwidth -> reports/bench_kernels_gpu.{json,md}.
CPU: each CPU candidate (lean eager, lean TorchScript, lean torch.compile, the C++ path) vs eager
reference at B in (1, 32), 2 threads, median and p99 of many calls, repeated ->
reports/bench_kernels_cpu.{json,md}. For res it also times the crossing's two GEMMs alone into
preallocated outputs (`res_gemms_only`, a floor, not a candidate): eager over that bounds what any
fp32 path with those GEMMs can gain.

    python -m benchmarks.bench_kernels [--device cpu|cuda] [--out reports]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kernels import cpu_native
from kernels.pool_cross import _cpu_lean, _op_args, _pool_cross_lean
from kernels import PoolCrossParams, pool_cross_ref

L, H = 16, 384


def make_inputs(b, k, device, dtype=torch.float32, r=256):
    g = torch.Generator().manual_seed(b * 1000 + k)
    params = PoolCrossParams(
        pool_v=torch.randn(H, generator=g) / H ** 0.5, pool_b=torch.zeros(()),
        cos_w=torch.tensor(5.0), cos_b=torch.tensor(-2.5),
        res_w1=torch.randn(r, H, generator=g) / H ** 0.5, res_w2=torch.randn(H, r, generator=g) / r ** 0.5,
        res_u=torch.randn(H, generator=g) / H ** 0.5, res_c=torch.zeros(())).to(device)
    ts = torch.randn(b, L, H, generator=g).to(device, dtype)
    lengths = torch.randint(2, L + 1, (b,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long().to(device)
    kw = torch.randn(b, k, H, generator=g).to(device, dtype)
    return ts, mask, params, kw


def _cpu_candidates():
    scripted = torch.jit.script(_pool_cross_lean)

    def lean(fn):
        def call(ts, mask, p, kw, crossing):
            return fn(*_op_args(ts, mask, p, kw, crossing))
        return call
    compiled = torch.compile(_pool_cross_lean, dynamic=True)
    cands = {"eager_ref": pool_cross_ref, "lean": lean(_pool_cross_lean), "lean_script": lean(scripted),
             "lean_compile": lean(compiled)}
    if cpu_native.load():  # the C++ path, where this machine can build it
        cands["native"] = lambda ts, mask, p, kw, crossing: _cpu_lean(ts, mask, p, kw, crossing, impl="native")
    return cands


GEMMS_ONLY = "res_gemms_only"


def _res_gemms(rows: int, params: PoolCrossParams):
    """The two matrix products of res crossing on prebuilt inputs, and nothing else."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, params.dim, generator=g)
    h = torch.randn(rows, params.res_w1.shape[0], generator=g)
    w1, w2 = params.res_w1.t(), params.res_w2.t()
    out1, out2 = torch.empty(rows, w1.shape[1]), torch.empty(rows, w2.shape[1])  # no allocation in the loop

    def call(*_):
        return torch.mm(x, w1, out=out1), torch.mm(h, w2, out=out2)
    return call


def time_cpu(fn, args, calls=200, repeats=5):
    """Median and p99 in ms over repeats x calls, after warm-up; repeats interleave with others."""
    with torch.inference_mode():
        for _ in range(20):
            fn(*args)
        samples = []
        for _ in range(calls):
            t = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t) * 1000)
    return samples


def bench_cpu(out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    cands = _cpu_candidates()
    rows, gemm_floor = [], {}
    for crossing in ("cos", "res"):
        for b in (1, 32):
            for k in (100,):
                args = (*make_inputs(b, k, "cpu")[:3], make_inputs(b, k, "cpu")[3], crossing)
                ref = pool_cross_ref(*args)
                timed = dict(cands)
                if crossing == "res":  # the floor any fp32 res path has to pay: its two GEMMs alone
                    timed[GEMMS_ONLY] = _res_gemms(b * k, args[2])
                samples = {name: [] for name in timed}
                for _ in range(5):  # interleave candidates so drift hits all alike
                    for name, fn in timed.items():
                        if name != GEMMS_ONLY:
                            with torch.inference_mode():
                                got = fn(*args)
                            for g_, r_ in zip(got, ref):
                                torch.testing.assert_close(g_, r_, atol=1e-5, rtol=1e-4)
                        samples[name] += time_cpu(fn, args, calls=60 if crossing == "res" and b == 32 else 200)
                base = statistics.median(samples["eager_ref"])
                if crossing == "res":
                    floor = statistics.median(samples[GEMMS_ONLY])
                    gemm_floor[f"B={b}"] = dict(gemms_ms=round(floor, 4), eager_ms=round(base, 4),
                                                gemm_bound_speedup=round(base / floor, 3))
                for name, s in samples.items():
                    s = sorted(s)
                    med = statistics.median(s)
                    rows.append(dict(crossing=crossing, B=b, L=L, H=H, K=k, impl=name, median_ms=round(med, 4),
                                     p99_ms=round(s[int(0.99 * (len(s) - 1))], 4), calls=len(s),
                                     speedup_vs_eager=round(base / med, 3) if name != GEMMS_ONLY else "n/a (floor)"))
                    print(f"cpu {crossing} B={b:>2} K={k}: {name:<14} median {med:8.4f} ms  "
                          f"x{base / med:5.2f} vs eager", flush=True)
    # Choose by geometric-mean speedup over every measured shape; report the worst case too.
    names = [n for n in cands if n != "eager_ref"]  # the GEMM floor is timed, never a candidate
    speedups = {n: [r["speedup_vs_eager"] for r in rows if r["impl"] == n] for n in names}
    geomean = {n: round(statistics.geometric_mean(v), 3) for n, v in speedups.items()}
    worst = {n: min(v) for n, v in speedups.items()}
    choice = max(geomean, key=geomean.get)
    result = dict(device="cpu", threads=threads, torch=torch.__version__, machine=platform.processor() or platform.machine(),
                  rows=rows, chosen_cpu_path=choice, geomean_speedup=geomean, worst_case_speedup=worst,
                  res_gemm_floor=gemm_floor)
    write(out, "bench_kernels_cpu", result, rows)
    print(f"chosen CPU path: {choice} (geometric-mean speedup vs eager x{geomean[choice]:.2f}, "
          f"worst x{worst[choice]:.2f})")
    for shape, f in gemm_floor.items():
        print(f"res {shape}: its two fp32 GEMMs alone take {f['gemms_ms']} ms: a path doing nothing else "
              f"would be x{f['gemm_bound_speedup']:.2f} faster than eager ({f['eager_ms']} ms)")
    return result


def bench_gpu(out: Path) -> dict:
    import triton.testing

    from kernels.pool_cross_triton import pool_cross_triton
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB
    y = torch.empty_like(x)
    copy_ms = triton.testing.do_bench(lambda: y.copy_(x))
    copy_gbs = 2 * x.numel() / copy_ms / 1e6
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for crossing in ("cos", "res"):
            for b in (1, 8, 64):
                for k in (100, 1000):
                    ts, mask, params, kw = make_inputs(b, k, "cuda", dtype)
                    fused = triton.testing.do_bench(lambda: pool_cross_triton(ts, mask, params, kw, crossing))
                    eager = triton.testing.do_bench(lambda: pool_cross_ref(ts, mask, params, kw, crossing))
                    moved = ts.numel() * ts.element_size() + mask.numel() * 8 + kw.numel() * kw.element_size() \
                        + b * (H + k) * 4
                    gbs = moved / fused / 1e6
                    rows.append(dict(dtype=str(dtype).replace("torch.", ""), crossing=crossing, B=b, L=L, H=H, K=k,
                                     fused_ms=round(fused, 5), eager_ms=round(eager, 5),
                                     speedup=round(eager / fused, 2), fused_GBps=round(gbs, 1),
                                     pct_of_copy_bw=round(100 * gbs / copy_gbs, 1)))
                    print(f"gpu {rows[-1]}", flush=True)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  copy_bandwidth_GBps=round(copy_gbs, 1), rows=rows)
    write(out, "bench_kernels_gpu", result, rows)
    return result


def write(out: Path, name: str, result: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    cols = list(rows[0])
    lines = [f"# {name}", "", f"device: {result['device']}, torch {result['torch']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    extra = {k: v for k, v in result.items() if k not in ("rows", "device", "torch")}
    lines += ["", "```", json.dumps(extra, indent=2), "```", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench-kernels: --device cuda but no CUDA device is visible")
        bench_gpu(Path(args.out))
    else:
        print("bench-kernels: no CUDA device; benchmarking the CPU paths (GPU figures need a GPU)")
        bench_cpu(Path(args.out), args.threads)


if __name__ == "__main__":
    main()
