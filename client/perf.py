"""NVIDIA perf_analyzer (shipped with tritonclient) fed with real held-out queries."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def perf_analyzer_path() -> str:
    exe = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(exe).is_file():
        raise FileNotFoundError("perf_analyzer not found: run `make setup` (tritonclient ships it)")
    return exe


def perf_env() -> dict[str, str]:
    """perf_analyzer needs libcudart.so.12 (nvidia-cuda-runtime-cu12 wheel) and Debian's libb64."""
    import nvidia.cuda_runtime
    lib = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def write_input_data(path: Path, queries: list[str], top_k: int) -> Path:
    """perf_analyzer's input-data file for `retrieve`: one QUERY and TOP_K per held-out query."""
    rows = []
    for q in queries:
        rows.append({"QUERY": {"content": [q], "shape": [1]}, "TOP_K": {"content": [top_k], "shape": [1]}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": rows}))
    return path


def run_perf_analyzer(url: str, model: str, input_data: Path, concurrency: int, out_csv: Path,
                      window_requests: int = 300, timeout_s: float = 300) -> dict:
    # Count-based windows with a loose stability bound: on a shared 2-core machine time windows
    # rarely agree within perf_analyzer's default 10%.
    cmd = [perf_analyzer_path(), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(input_data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "count_windows",
           "--measurement-request-count", str(window_requests), "--stability-percentage", "50",
           "--max-trials", "10", "-f", str(out_csv)]
    out = subprocess.run(cmd, env=perf_env(), capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({out.returncode}): {out.stderr[-2000:] or out.stdout[-2000:]}")
    with open(out_csv) as f:
        row = next(csv.DictReader(f))
    us = lambda k: round(float(row[k]) / 1000, 3)  # noqa: E731  (perf_analyzer reports microseconds)
    return {"tool": "perf_analyzer", "mode": "closed", "target": model, "level": concurrency,
            "requests": None, "errors": 0, "throughput_rps": round(float(row["Inferences/Second"]), 2),
            "p50_ms": us("p50 latency"), "p90_ms": us("p90 latency"), "p99_ms": us("p99 latency"),
            "p999_ms": None, "mean_ms": us("Avg latency") if "Avg latency" in row else None}
