"""The demo: build (or reuse) a real TwinBERT model and keyword index from the Home Depot data,
serve it with the real tritonserver, and print the top 10 titles for a few queries over gRPC.
After `make train` the repository also has `retrieve_rerank`, and each query's cosine top
--rerank-depth re-ordered by the BiLSTM re-ranker is printed beside.

    python -m serving.demo [--artifacts DIR] [--data DIR] [--rerank-depth 30] [QUERY ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from training.cli import positive_int

EXAMPLE_QUERIES = ["cordless drill", "ceiling fan with light", "white kitchen faucet", "50 ft garden hose",
                   "toilet seat", "led light bulbs"]


def main(argv=None) -> int:
    start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("queries", nargs="*", default=EXAMPLE_QUERIES)
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--top-k", type=positive_int, default=10)
    ap.add_argument("--rerank-depth", type=positive_int, default=30,
                    help="cosine candidates the BiLSTM re-ranker re-orders, when the repository has it")
    args = ap.parse_args(argv)

    import torch

    from client import TwinBertClient
    from serving.build import DEFAULT_ARTIFACTS, build
    from serving.server import ServerError, TritonServer, free_server_ports
    from training.data import DataError

    torch.set_num_threads(2)
    artifacts = Path(args.artifacts or DEFAULT_ARTIFACTS)
    try:
        repo = build(artifacts, args.data)
    except DataError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    print("\n== serving", flush=True)
    log = artifacts / "tritonserver.log"
    server = TritonServer(repo, **free_server_ports(),
                          log_file=log)
    t = time.perf_counter()
    try:
        server.start()
    except ServerError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print(f"tritonserver ready on {server.grpc_url} in {time.perf_counter() - t:.1f}s (log: {log})")
    rerank = (repo / "retrieve_rerank").is_dir()
    latencies, rerank_latencies = [], []
    try:
        with TwinBertClient(server.grpc_url) as client:
            for _ in range(3):  # TorchScript's profiling executor optimises after a few calls
                client.retrieve("warm up", args.top_k)
            for query in args.queries:
                t = time.perf_counter()
                hits = client.retrieve(query, args.top_k)
                latencies.append((time.perf_counter() - t) * 1000)
                print(f"\nquery: {query!r}  ({latencies[-1]:.1f} ms over gRPC)")
                for h in hits:
                    print(f"  {h.rank:>2}. {h.score:.3f}  {h.keyword}  [{h.keyword_id}]")
                if rerank:
                    t = time.perf_counter()
                    hits = client.retrieve(query, args.top_k, rerank_depth=args.rerank_depth)
                    rerank_latencies.append((time.perf_counter() - t) * 1000)
                    print(f"  re-ranked by the BiLSTM from the cosine top {args.rerank_depth} "
                          f"({rerank_latencies[-1]:.1f} ms over gRPC):")
                    for h in hits:
                        print(f"  {h.rank:>2}. {h.score:.3f}  {h.keyword}  [{h.keyword_id}]")
    finally:
        server.stop()
    also = (f" (re-ranked: median {statistics.median(rerank_latencies):.1f} ms)" if rerank_latencies else "")
    print(f"\ndemo: {len(latencies)} queries, median {statistics.median(latencies):.1f} ms per query "
          f"over gRPC{also}; server stopped; total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
