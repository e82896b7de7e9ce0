"""Keyword-store benchmark at scale: 1M keyword vectors of the serving dimension.

Keyword vectors: the real title embeddings of the built store, resampled with Gaussian noise up to
--n (synthetic, but with the real data's cluster structure); query vectors: held-out test queries
through the real exported query encoder. For each index type: build time, resident memory of a
fresh process that loads the store version and serves queries (what a server pays), top-100
latency p50/p99 for single queries and batches of 32 (1 thread, as served), recall@100 against
exact search; memory both as served after the queries and with every page of the memory-mapped
index and vectors touched (the worst case once traffic has reached every keyword), with the part a
second instance would share. The keywords' texts are real titles (resampled with the vectors), so
the memory they take is counted as served. Plus indexing throughput of real titles with the real keyword encoder.

    python -m serving.bench_store [--n 1000000] [--index hnsw_fp16,hnsw_sq8] [--out reports/bench_store]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serving.keyword_store import (DEFAULT_VECTOR_DTYPE, VECTOR_DTYPES, IndexSpec, KeywordStore, as_float32,
                                   fp16_unit_and_norm, latest_version, write_version)
from training.cli import nonnegative_float, positive_int
from training.index import DEFAULT_BATCH_SIZE

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
def rss(field="VmRSS"):
    return int([l for l in open("/proc/self/status") if l.startswith(field + ":")][0].split()[1]) * 1024
served = rss()
store.page_in()  # every page of the index and cached vectors: the worst case under traffic
print(json.dumps({"single": single, "batch32": batch, "found": found, "rss_bytes": served, "rss_all_bytes": rss(),
                  "rss_file_bytes": rss("RssFile")}))
"""


def synthetic_vectors(base: np.ndarray, n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n vectors, each a random row of `base` (normalised) plus noise -> (vectors, the rows picked)."""
    rng = np.random.default_rng(seed)
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    picks = np.empty(n, dtype=np.int64)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        picks[s:e] = rng.integers(0, len(base), e - s)
        out[s:e] = base[picks[s:e]] + rng.normal(0, noise, (e - s, base.shape[1])).astype(np.float32)
    return out, picks


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


def vector_dtype_effect(artifacts: Path, n_queries: int = 200, data=None, out: Path | None = None) -> dict:
    """What float16 cached vectors cost against float32: on held-out queries, the cosine top-100 of the
    built store is crossed (cos and res) with the candidates' float32 vectors (re-embedded here) and with
    the same vectors rounded to float16, both as they are (vectors.npy) and as unit vectors times a
    float32 norm (what hnsw_fp16 keeps in its index); plus the lookup time of 100 ids from each."""
    import torch
    from scipy.stats import spearmanr

    from client.suite import held_out_queries
    from kernels import pool_cross
    from serving.pipeline import InProcessPipeline
    from training.index import embed_texts, load_keyword_encoder
    pipe = InProcessPipeline(artifacts / "model_repository")
    enc, tok = load_keyword_encoder(artifacts / "export")
    store = pipe.store
    encoded = []
    for q in held_out_queries(data, n_queries):
        states, mask = pipe.encode([q])
        with torch.inference_mode():
            qv = pool_cross(torch.from_numpy(states), torch.from_numpy(mask), pipe.params)[0].numpy()
        encoded.append((torch.from_numpy(states), torch.from_numpy(mask), np.asarray(store.search(qv, 100)[0][0])))
    union = sorted({int(p) for *_, pos in encoded for p in pos})
    fp32 = np.zeros((len(store), store.dim), dtype=np.float32)
    fp32[union] = embed_texts(enc, tok, [store.texts[i] for i in union], progress=False)
    fp16 = fp32.astype(np.float16)
    unit16, norms = fp16_unit_and_norm(fp32)  # exactly what an hnsw_fp16 store keeps
    variants = {"float16": lambda pos: torch.from_numpy(fp16[pos]).float(),
                "float16 unit x norm (hnsw_fp16)": lambda pos: torch.from_numpy(unit16[pos]).float()
                * torch.from_numpy(norms[pos, None])}
    stats: dict = {}
    crossings = ["cos", "res"] if pipe.default_crossing == "res" else ["cos"]
    for (variant, rounded), crossing in ((v, c) for v in variants.items() for c in crossings):
        diffs, overlap, rho = [], [], []
        with torch.inference_mode():
            for states, mask, pos in encoded:
                a = pool_cross(states, mask, pipe.params, torch.from_numpy(fp32[pos])[None], crossing)[1][0].numpy()
                b = pool_cross(states, mask, pipe.params, rounded(pos)[None], crossing)[1][0].numpy()
                diffs.append(float(np.abs(a - b).max()))
                overlap.append(len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10)
                rho.append(float(spearmanr(a, b).correlation))
        stats[f"{variant}, {crossing}"] = {"stored_as": variant, "crossing": crossing,
                           "max_abs_score_diff": float(f"{max(diffs):.3g}"),
                           "median_max_abs_score_diff": float(f"{np.median(diffs):.3g}"),
                           "top10_identical_fraction": round(float(np.mean([o == 1.0 for o in overlap])), 4),
                           "top10_overlap_mean": round(float(np.mean(overlap)), 4),
                           "spearman_min": round(min(rho), 6)}
    positions = np.random.default_rng(0).choice(len(store), 100, replace=False)
    lookup_us = {}
    for name, arr in (("float32", fp32), ("float16", fp16)):
        ts = []
        for _ in range(2000):
            t = time.perf_counter()
            as_float32(arr[positions])
            ts.append((time.perf_counter() - t) * 1e6)
        lookup_us[name] = round(float(np.median(ts)), 1)
    result = {"queries": len(encoded), "candidates_per_query": 100, "crossings": stats,
              "lookup_100_ids_median_us": lookup_us,
              "gb_per_million_vectors": {"float32": round(1e6 * store.dim * 4 / 2**30, 3),
                                         "float16": round(1e6 * store.dim * 2 / 2**30, 3)}}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_name(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
        lines = ["# Cached keyword vectors: float16 against float32", "",
                 f"{len(encoded)} held-out queries; each query's cosine top-100 from the built store is crossed "
                 "with the candidates' float32 vectors and with the same vectors rounded to float16: as they are "
                 "(vectors.npy), and as unit vectors times their float32 norm (the hnsw_fp16 index's own storage).",
                 "", "| stored as | crossing | max abs score diff | median of per-query max | top 10 identical | "
                 "top-10 overlap | min Spearman |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['stored_as']} | {v['crossing']} | {v['max_abs_score_diff']} | {v['median_max_abs_score_diff']} | "
                  f"{v['top10_identical_fraction']:.2%} | {v['top10_overlap_mean']:.2%} | {v['spearman_min']} |"
                  for c, v in stats.items()]
        lines += ["", f"Lookup of 100 ids (median): float32 {lookup_us['float32']} us, float16 -> float32 "
                  f"{lookup_us['float16']} us. Memory per million vectors: float32 "
                  f"{result['gb_per_million_vectors']['float32']} GiB, float16 {result['gb_per_million_vectors']['float16']} GiB.", ""]
        out.with_name(out.name + ".md").write_text("\n".join(lines))
    print(f"bench_store: vector dtype effect {json.dumps(result)}", flush=True)
    return result


def indexing_throughput(export_dir: Path, texts: list[str], batch_sizes=(DEFAULT_BATCH_SIZE, 256),
                        repeats: int = 3) -> dict:
    """Keywords per second embedding `texts` (tokenisation included), median of interleaved runs per
    batch size, so the indexer's default batch size is chosen by the same measurement."""
    import torch

    from training.index import embed_texts, load_keyword_encoder
    torch.set_num_threads(2)
    enc, tok = load_keyword_encoder(export_dir)
    embed_texts(enc, tok, texts[:512], progress=False)
    runs: dict[int, list[float]] = {b: [] for b in dict.fromkeys(batch_sizes)}
    for _ in range(repeats):
        for b in runs:
            t = time.perf_counter()
            embed_texts(enc, tok, texts, batch_size=b, progress=False)
            runs[b].append(len(texts) / (time.perf_counter() - t))
            print(f"bench_store: indexing batch {b}: {runs[b][-1]:.0f} keywords/s", flush=True)
    return {b: round(float(np.median(r)), 1) for b, r in runs.items()}


def _measure(args, workdir: Path, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
             ids: list[str], texts: list[str]) -> list[dict]:
    """Build (or reuse) each index type's store under `workdir` and probe it per efSearch."""
    qfile = workdir / "queries.npy"
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(qfile, queries)
    rows = []
    for index_type in args.index.split(","):
        t = time.perf_counter()
        built = workdir / index_type / "1"
        reused = (args.reuse and (built / "manifest.json").is_file()
                  and json.loads((built / "manifest.json").read_text()).get("vector_dtype") == args.vector_dtype)
        if reused:
            version = built
        else:
            shutil.rmtree(workdir / index_type, ignore_errors=True)
            version = write_version(workdir / index_type, ids, texts, vectors,
                                    IndexSpec(index_type, ef_construction=args.ef_construction), "bench",
                                    vector_dtype=args.vector_dtype)
        manifest = json.loads((version / "manifest.json").read_text())
        build_s, params = manifest["build_seconds"], manifest["index_params"]
        total_s = None if reused else round(time.perf_counter() - t, 1)  # build + write; unknown when reused
        for ef in [int(x) for x in args.search.split(",")]:
            out = subprocess.run([sys.executable, "-c", _PROBE, str(version), str(qfile), str(ef)],
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            recall = float(np.mean([len(set(f) & set(t_)) / 100 for f, t_ in zip(r["found"], truth)]))
            row = {"index": index_type, "efConstruction": params.get("efConstruction"), "efSearch": ef, "n": args.n, "dim": int(vectors.shape[1]),
                   "build_s": build_s, "write_s": total_s, "rss_gb": round(r["rss_bytes"] / 2**30, 3),
                   "rss_all_paged_gb": round(r["rss_all_bytes"] / 2**30, 3),
                   "of_which_shared_gb": round(r["rss_file_bytes"] / 2**30, 3),
                   "single_p50_ms": round(float(np.percentile(r["single"], 50)), 3),
                   "single_p99_ms": round(float(np.percentile(r["single"], 99)), 3),
                   "batch32_p50_ms": round(float(np.percentile(r["batch32"], 50)), 3),
                   "batch32_p99_ms": round(float(np.percentile(r["batch32"], 99)), 3),
                   "recall@100": round(recall, 4)}
            rows.append(row)
            print(f"bench_store: {row}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--n", type=positive_int, default=1_000_000)
    ap.add_argument("--index", default="hnsw_fp16,hnsw_sq8", help="comma-separated index types to measure")
    ap.add_argument("--search", default="160,192,224", help="efSearch (HNSW) values to measure")
    ap.add_argument("--queries", type=positive_int, default=500)
    ap.add_argument("--noise", type=nonnegative_float, default=0.03)
    ap.add_argument("--ef-construction", type=positive_int, default=80)
    ap.add_argument("--workdir", default=None, help="where the 1M store versions are written (default: temp)")
    ap.add_argument("--reuse", action="store_true", help="reuse a version already built in --workdir "
                    "(same --n, --noise and seed make the same vectors)")
    ap.add_argument("--vector-dtype", choices=VECTOR_DTYPES, default=DEFAULT_VECTOR_DTYPE)
    ap.add_argument("--out", default="reports/bench_store")
    ap.add_argument("--data")
    ap.add_argument("--part", choices=("all", "scale", "dtype"), default="all",
                    help="scale: the 1M benchmark and indexing throughput; dtype: float16 against float32 "
                         "cached vectors on real queries (-> reports/vector_dtype.*); all: both")
    args = ap.parse_args(argv)
    a = Path(args.artifacts)
    if args.part in ("all", "dtype"):
        vector_dtype_effect(a, data=args.data, out=Path(args.out).with_name("vector_dtype"))
    if args.part == "dtype":
        return
    real = KeywordStore(latest_version(a / "keyword_store"), load_index=False)
    vectors, picks = synthetic_vectors(real.vectors_at(np.arange(len(real))), args.n, args.noise)
    queries = query_vectors(a / "model_repository", args.queries, args.data).astype(np.float32)
    t = time.perf_counter()
    truth = exact_top(vectors, queries, 100)
    exact_ms = (time.perf_counter() - t) * 1000 / len(queries)
    print(f"bench_store: {args.n} vectors x {vectors.shape[1]}, exact top-100 {exact_ms:.1f} ms/query (batched)",
          flush=True)
    ids = [f"kw{i}" for i in range(args.n)]
    texts = [real.texts[p] for p in picks]  # real titles, so their memory is counted as served
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_store_"))
    try:
        rows = _measure(args, workdir, vectors, queries, truth, ids, texts)
    finally:
        if not args.workdir:  # a million-keyword store per index type: gigabytes of temp files
            shutil.rmtree(workdir, ignore_errors=True)
    kps = indexing_throughput(a / "export", real.texts)
    best = kps[DEFAULT_BATCH_SIZE]
    result = {"n": args.n, "dim": int(vectors.shape[1]), "queries": len(queries), "noise": args.noise,
              "exact_ms_per_query_batched": round(exact_ms, 2), "rows": rows,
              "indexing_keywords": len(real.texts), "indexing_default_batch_size": DEFAULT_BATCH_SIZE,
              "indexing_keywords_per_second": best,
              "indexing_keywords_per_second_by_batch_size": kps, "vector_dtype": args.vector_dtype}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    cols = list(rows[0])
    lines = ["# Keyword store at scale", "",
             f"{args.n:,} keyword vectors (real title embeddings resampled with N(0, {args.noise}) noise), "
             f"{len(queries)} real held-out query vectors, recall@100 against exact inner product. Latency: one "
             f"thread, as served. Cached vectors: {args.vector_dtype}. Memory: resident set of a fresh process "
             "holding the loaded store, after the queries (rss_gb) and with every page of the index and cached "
             "vectors touched (rss_all_paged_gb, the worst case once traffic has reached every keyword); of that, "
             "of_which_shared_gb is file-backed (the memory-mapped index and vectors.npy), shared by every "
             "instance that serves the same version. Keyword texts are real titles.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    by_batch = ", ".join(f"batch {b}: {v:,.0f}/s" for b, v in kps.items())
    lines += ["", f"Indexing throughput, all {len(real.texts):,} real titles through the real keyword encoder "
              f"(2 threads, tokenisation included, median of 3 interleaved runs): {best:,.0f} keywords/s at the "
              f"indexer's default batch size {DEFAULT_BATCH_SIZE} ({by_batch}).", ""]
    out.with_name(out.name + ".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
