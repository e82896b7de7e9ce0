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


def _perf_analyzer(url: str, model: str, input_data: Path, concurrency: int, options: list[str],
                   timeout_s: float) -> None:
    """One perf_analyzer run over gRPC with `input_data` at `concurrency`; RuntimeError if it fails."""
    cmd = [perf_analyzer_path(), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(input_data),
           "--concurrency-range", f"{concurrency}:{concurrency}", *options]
    out = subprocess.run(cmd, env=perf_env(), capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        # a refused option comes first (its usage text follows it), a failed run's reason last
        text = out.stderr or out.stdout
        raise RuntimeError(f"perf_analyzer failed ({out.returncode}): "
                           + (text if len(text) <= 2000 else f"{text[:1000]} ... {text[-1000:]}"))


def run_perf_analyzer(url: str, model: str, input_data: Path, concurrency: int, out_csv: Path,
                      window_requests: int = 300, timeout_s: float = 300) -> dict:
    # Count-based windows with a loose stability bound: on a shared 2-core machine time windows
    # rarely agree within perf_analyzer's default 10%.
    _perf_analyzer(url, model, input_data, concurrency,
                   ["--measurement-mode", "count_windows", "--measurement-request-count", str(window_requests),
                    "--stability-percentage", "50", "--max-trials", "10", "-f", str(out_csv)], timeout_s)
    with open(out_csv) as f:
        row = next(csv.DictReader(f))
    us = lambda k: round(float(row[k]) / 1000, 3)  # noqa: E731  (perf_analyzer reports microseconds)
    return {"tool": "perf_analyzer", "mode": "closed", "target": model, "level": concurrency,
            "requests": None, "errors": 0, "throughput_rps": round(float(row["Inferences/Second"]), 2),
            "p50_ms": us("p50 latency"), "p90_ms": us("p90 latency"), "p99_ms": us("p99 latency"),
            "p999_ms": None, "mean_ms": us("Avg latency") if "Avg latency" in row else None}


def profile_latencies(path: Path) -> list[float]:
    """Per-request latencies in ms from perf_analyzer's --profile-export-file (each request's last
    response timestamp less its send timestamp, nanoseconds in the file), in the order sent."""
    # the export holds each response's outputs as they came, raw bytes included: not always UTF-8
    data = json.loads(Path(path).read_bytes().decode("utf-8", "replace"))
    out = []
    for experiment in data.get("experiments", []):
        for request in experiment.get("requests", []):
            answered = request.get("response_timestamps") or []
            if not answered:
                raise RuntimeError(f"{path}: perf_analyzer recorded a request without a response")
            out.append((request["timestamp"], (answered[-1] - request["timestamp"]) / 1e6))
    if not out:
        raise RuntimeError(f"{path}: perf_analyzer's profile export holds no requests")
    return [latency for _, latency in sorted(out)]


def perf_analyzer_latencies(url: str, model: str, input_data: Path, requests: int, export: Path,
                            timeout_s: float = 120, attempts: int = 2) -> list[float]:
    """Latencies in ms of `requests` requests sent one at a time by perf_analyzer (its C++ gRPC client,
    requests built once from `input_data`, answers not decoded), one per request, in the order sent
    (the first one opens perf_analyzer's connection). A run that has not finished in `timeout_s` is
    killed and run again, up to `attempts` runs: in one CI run of 550 tests, perf_analyzer sent 3
    requests to the served null model and never exited (killed after 300 s)."""
    export = Path(export)
    export.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        export.unlink(missing_ok=True)  # perf_analyzer refuses to write over a file
        try:
            _perf_analyzer(url, model, input_data, 1,
                           ["--request-count", str(requests), "--profile-export-file", str(export)], timeout_s)
            break
        except subprocess.TimeoutExpired:
            if attempt == attempts:
                raise RuntimeError(f"perf_analyzer did not finish {requests} requests to {model} within "
                                   f"{timeout_s:g} s, {attempts} times") from None
            print(f"perf_analyzer: {requests} requests to {model} not done within {timeout_s:g} s; "
                  "killed, running it again", file=sys.stderr, flush=True)
    latencies = profile_latencies(export)
    if len(latencies) != requests:
        raise RuntimeError(f"perf_analyzer answered {len(latencies)} of {requests} requests")
    return latencies
