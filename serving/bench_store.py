"""Keyword-store benchmark at scale: 1M keyword vectors of the serving dimension.

Keyword vectors: the real title embeddings of the built store, resampled with Gaussian noise up to
--n (synthetic, but with the real data's cluster structure); query vectors: held-out test queries
through the real exported query encoder. For each index type: build time, resident memory of a
fresh process that loads the store version and serves queries (what a server pays), top-100
latency p50/p99 for single queries and batches of 32 (1 thread, as served), recall@100 against
exact search. Plus indexing throughput of real titles with the real keyword encoder.

    python -m serving.bench_store [--n 1000000] [--index hnsw_sq8,hnsw] [--out reports/bench_store]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serving.keyword_store import IndexSpec, KeywordStore, latest_version, write_version

_PROBE = r"""
import json, sys, time, numpy as np, faiss
faiss.omp_set_num_threads(1)
from serving.keyword_store import KeywordStore
store = KeywordStore(sys.argv[1], verify=False)
q = np.load(sys.argv[2]); k = 100
store.index.hnsw.efSearch = int(sys.argv[3]) if hasattr(store.index, "hnsw") else 0
if hasattr(store.index, "nprobe"): store.index.nprobe = int(sys.argv[3])
single, batch, found = [], [], []
for i in range(len(q)):
    t = time.perf_counter(); pos, _ = store.search(q[i:i + 1], k); single.append((time.perf_counter() - t) * 1e3)
    found.append(pos[0])
for s in range(0, len(q) - 31, 32):
    t = time.perf_counter(); store.search(q[s:s + 32], k); batch.append((time.perf_counter() - t) * 1e3)
store.lookup(store.ids[:1000:7])
rss = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
print(json.dumps({"single": single, "batch32": batch, "found": found, "rss_bytes": rss}))
"""


def synthetic_vectors(base: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        pick = rng.integers(0, len(base), e - s)
        out[s:e] = base[pick] + rng.normal(0, noise, (e - s, base.shape[1])).astype(np.float32)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    _, pos = index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), k)
    return pos


def query_vectors(repository: Path, n: int, data=None) -> np.ndarray:
    from client.suite import held_out_queries
    from serving.pipeline import InProcessPipeline
    import torch
    pipe = InProcessPipeline(repository)
    from kernels import pool_cross
    qs = held_out_queries(data, n)
    states, mask = pipe.encode(qs)
    with torch.inference_mode():
        return pool_cross(torch.from_numpy(states), torch.from_numpy(mask), pipe.params)[0].numpy()


def indexing_throughput(export_dir: Path, texts: list[str]) -> float:
    import torch

    from training.index import embed_texts
    from training.tokenize import WordPiece
    torch.set_num_threads(2)
    cfg = json.loads((export_dir / "tokenizer_config.json").read_text())
    enc = torch.jit.load(str(export_dir / "keyword_encoder.pt")).eval()
    tok = WordPiece(export_dir / "tokenizer.json", cfg["keyword_max_len"])
    embed_texts(enc, tok, texts[:512], progress=False)
    t = time.perf_counter()
    embed_texts(enc, tok, texts, progress=False)
    return len(texts) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--index", default="hnsw_sq8", help="comma-separated index types to measure")
    ap.add_argument("--search", default="192,224,256", help="efSearch (HNSW) values to measure")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--workdir", default=None, help="where the 1M store versions are written (default: temp)")
    ap.add_argument("--reuse", action="store_true", help="reuse a version already built in --workdir "
                    "(same --n, --noise and seed make the same vectors)")
    ap.add_argument("--out", default="reports/bench_store")
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    a = Path(args.artifacts)
    real = KeywordStore(latest_version(a / "keyword_store"), load_index=False)
    vectors = synthetic_vectors(np.asarray(real.vectors, dtype=np.float32), args.n, args.noise)
    queries = query_vectors(a / "model_repository", args.queries, args.data).astype(np.float32)
    t = time.perf_counter()
    truth = exact_top(vectors, queries, 100)
    exact_ms = (time.perf_counter() - t) * 1000 / len(queries)
    print(f"bench_store: {args.n} vectors x {vectors.shape[1]}, exact top-100 {exact_ms:.1f} ms/query (batched)",
          flush=True)
    ids = [f"kw{i}" for i in range(args.n)]
    texts = [""] * args.n
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_store_"))
    qfile = workdir / "queries.npy"
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(qfile, queries)
    rows = []
    for index_type in args.index.split(","):
        t = time.perf_counter()
        built = workdir / index_type / "1"
        if args.reuse and (built / "manifest.json").is_file():
            version = built
        else:
            version = write_version(workdir / index_type, ids, texts, vectors,
                                    IndexSpec(index_type, ef_construction=args.ef_construction), "bench")
        build_s = json.loads((version / "manifest.json").read_text())["build_seconds"]
        total_s = time.perf_counter() - t
        for ef in [int(x) for x in args.search.split(",")]:
            out = subprocess.run([sys.executable, "-c", _PROBE, str(version), str(qfile), str(ef)],
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            recall = float(np.mean([len(set(f) & set(t_)) / 100 for f, t_ in zip(r["found"], truth)]))
            params = json.loads((version / "manifest.json").read_text())["index_params"]
            row = {"index": index_type, "efConstruction": params.get("efConstruction"), "efSearch": ef, "n": args.n, "dim": int(vectors.shape[1]),
                   "build_s": build_s, "write_s": round(total_s, 1), "rss_gb": round(r["rss_bytes"] / 2**30, 3),
                   "single_p50_ms": round(float(np.percentile(r["single"], 50)), 3),
                   "single_p99_ms": round(float(np.percentile(r["single"], 99)), 3),
                   "batch32_p50_ms": round(float(np.percentile(r["batch32"], 50)), 3),
                   "batch32_p99_ms": round(float(np.percentile(r["batch32"], 99)), 3),
                   "recall@100": round(recall, 4)}
            rows.append(row)
            print(f"bench_store: {row}", flush=True)
    kps = indexing_throughput(a / "export", real.texts[:8000])
    result = {"n": args.n, "dim": int(vectors.shape[1]), "queries": len(queries), "noise": args.noise,
              "exact_ms_per_query_batched": round(exact_ms, 2), "rows": rows,
              "indexing_keywords_per_second": round(kps, 1), "vector_dtype": "float32"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cols = list(rows[0])
    lines = ["# Keyword store at scale", "",
             f"{args.n:,} keyword vectors (real title embeddings resampled with N(0, {args.noise}) noise), "
             f"{len(queries)} real held-out query vectors, recall@100 against exact inner product. Latency: one "
             "thread, as served. Memory: resident set of a fresh process holding the loaded store.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", f"Indexing throughput, real titles through the real keyword encoder (2 threads): "
              f"{kps:,.0f} keywords/s.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
