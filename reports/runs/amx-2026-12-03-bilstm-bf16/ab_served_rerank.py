"""Served retrieve_rerank with the re-ranker's bf16 trace against its fp32 trace, interleaved in one run.

Two servers at once, on a repository and on a copy whose reranker config sets `precision` to fp32;
each round sends the same held-out queries to one then the other (the order reverses every round).

    python reports/runs/amx-2026-12-03-bilstm-bf16/ab_served_rerank.py REPO_BF16 REPO_FP32 OUT.json
"""
import json
import statistics
import sys
import time
from pathlib import Path

from client.core import TwinBertClient
from client.suite import _server, held_out_queries

repos = {"bf16": Path(sys.argv[1]), "fp32": Path(sys.argv[2])}
queries = held_out_queries(None, 50)
samples = {n: [] for n in repos}
servers = {n: _server(r, Path(f"/tmp/ab_{n}.log")) for n, r in repos.items()}
for s in servers.values():
    s.__enter__()
try:
    clients = {n: TwinBertClient(s.grpc_url) for n, s in servers.items()}
    for c in clients.values():
        for q in queries[:10]:
            c.retrieve(q, 10, rerank_depth=30)
    for r in range(12):
        for n in (list(repos) if r % 2 == 0 else list(repos)[::-1]):
            for q in queries:
                t = time.perf_counter()
                clients[n].retrieve(q, 10, rerank_depth=30)
                samples[n].append((time.perf_counter() - t) * 1000)
finally:
    for s in servers.values():
        s.__exit__(None, None, None)
out = {n: {"p50_ms": round(statistics.median(v), 3), "p99_ms": round(sorted(v)[int(0.99 * len(v))], 3),
           "calls": len(v)} for n, v in samples.items()}
out["fp32_over_bf16_p50"] = round(out["fp32"]["p50_ms"] / out["bf16"]["p50_ms"], 3)
Path(sys.argv[3]).write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out))
