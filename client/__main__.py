"""Command line for a running TwinBERT server.

    python -m client query "cordless drill" [--top-k 10] [--candidates 100 | --rerank 50] [--json]
    python -m client relevance "cordless drill" 100001 100002 ... [--crossing res|cos] [--json]
    python -m client health [--json]
    python -m client loadtest --queries FILE [--target retrieve | --target relevance --keyword-ids FILE]
                              [--concurrency 1,4,16 | --rate 50,100]
                              [--requests 1000] [--duration 20] [--out reports/loadtest_own]

Every command takes --url HOST:PORT (default 127.0.0.1:$TRITON_GRPC_PORT or 8001) and --timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from client.core import DEFAULT_URL, ClientError, TwinBertClient
from training.cli import float_list, int_list, positive_float, positive_int


def _client(args) -> TwinBertClient:
    return TwinBertClient(args.url, timeout_s=args.timeout)


def cmd_query(args) -> int:
    with _client(args) as c:
        start = time.perf_counter()
        hits = c.retrieve(args.text, args.top_k, args.candidates, args.rerank)
        ms = (time.perf_counter() - start) * 1000
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
    else:
        print(f"{'rank':>4}  {'score':>6}  {'keyword id':>10}  keyword")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:6.3f}  {h.keyword_id:>10}  {h.keyword}")
        print(f"({len(hits)} results in {ms:.1f} ms)", file=sys.stderr)
    return 0


def cmd_relevance(args) -> int:
    with _client(args) as c:
        start = time.perf_counter()
        scores = c.relevance(args.text, args.keyword_ids, args.crossing)
        ms = (time.perf_counter() - start) * 1000
    for kid, s in zip(args.keyword_ids, scores):
        print(json.dumps({"keyword_id": kid, "score": s}) if args.json else f"{s:8.4f}  {kid}")
    if not args.json:
        print(f"({len(scores)} scores in {ms:.1f} ms)", file=sys.stderr)
    return 0


def cmd_health(args) -> int:
    metrics = args.metrics_url or f"http://{args.url.rsplit(':', 1)[0]}:{os.environ.get('TRITON_METRICS_PORT', '8002')}/metrics"
    with _client(args) as c:
        h = c.health(metrics)
    if args.json:
        print(json.dumps(h, indent=2))
    else:
        print(f"server {h['url']}: live={h['live']} ready={h['ready']}")
        for name, versions in sorted(h["models"].items()):
            print(f"  {name:<16} " + ", ".join(f"v{v['version'] or '?'} {v['state'] or '?'}" for v in versions))
        for version, n in sorted(h.get("keyword_store_size", {}).items()):
            print(f"  keyword store v{version}: {n} keywords")
    return 0 if h["ready"] else 1


def cmd_loadtest(args) -> int:
    from client.loadtest import sweep
    from client.report import write_load_report
    try:
        queries = [q.strip() for q in Path(args.queries).read_text(encoding="utf-8").splitlines() if q.strip()]
        ids = [k.strip() for k in Path(args.keyword_ids).read_text(encoding="utf-8").split()] if args.keyword_ids else None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the loadtest input: {e}") from None
    out = Path(args.out)
    try:  # before the sweep: a report that cannot be written would lose its minutes of load
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the report folder {out.parent}: {e}") from None
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"cannot write the report under {out.parent}: not writable")
    mode, levels = ("open", args.rate) if args.rate else ("closed", args.concurrency)
    results = sweep(args.url, queries, args.target, levels, mode, args.requests, args.duration, args.top_k, ids,
                    client=args.client, timeout_s=args.timeout)
    write_load_report(results, out, title=f"{args.target}, {mode} loop (project load generator)")
    print(f"loadtest: report {args.out}.md / .json / .csv / .png")
    return 0 if all(r.errors == 0 for r in results) else 1


def main(argv=None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help="gRPC HOST:PORT (default %(default)s)")
    common.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per request")
    ap = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", parents=[common], help="top-K keywords for a query text")
    q.add_argument("text")
    q.add_argument("--top-k", type=int, default=10)
    order = q.add_mutually_exclusive_group()
    order.add_argument("--candidates", type=int, default=None, help="K' re-scored with res (0 = cosine only; default: the server's, the cosine order as shipped)")
    order.add_argument("--rerank", type=int, default=None, metavar="DEPTH",
                       help="re-order the cosine top DEPTH (top-k..200) with the BiLSTM re-ranker (retrieve_rerank)")
    q.add_argument("--json", action="store_true", help="one JSON object per result")
    q.set_defaults(func=cmd_query)
    r = sub.add_parser("relevance", parents=[common], help="scores of a query against keyword ids")
    r.add_argument("text")
    r.add_argument("keyword_ids", nargs="+")
    r.add_argument("--crossing", choices=("res", "cos"), default=None)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_relevance)
    h = sub.add_parser("health", parents=[common], help="server and model readiness, versions")
    h.add_argument("--json", action="store_true")
    h.add_argument("--metrics-url", help="Prometheus endpoint (default http://HOST:$TRITON_METRICS_PORT/metrics)")
    h.set_defaults(func=cmd_health)
    lt = sub.add_parser("loadtest", parents=[common], help="closed- or open-loop load with a report")
    lt.add_argument("--queries", required=True, help="text file, one query per line")
    lt.add_argument("--target", choices=("retrieve", "relevance"), default="retrieve")
    lt.add_argument("--keyword-ids", help="file of whitespace-separated keyword ids, scored against every query (required by --target relevance)")
    loop = lt.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=int_list, default=[1, 4, 16],
                      help="closed loop: comma-separated levels (default 1,4,16)")
    loop.add_argument("--rate", type=float_list, default=None, help="open loop: comma-separated requests/second")
    lt.add_argument("--requests", type=positive_int, default=1000, help="at most this many requests per level")
    lt.add_argument("--duration", type=positive_float, default=20.0, help="at most this many seconds per level")
    lt.add_argument("--top-k", type=int, default=100)
    lt.add_argument("--client", choices=("wire", "library"), default="wire",
                    help="wire: pre-serialised requests, answers not decoded (measures the server, like "
                         "perf_analyzer); library: through AsyncTwinBertClient, decoding included")
    lt.add_argument("--out", default="reports/loadtest_own")
    lt.set_defaults(func=cmd_loadtest)
    args = ap.parse_args(argv)
    if args.command == "loadtest" and args.keyword_ids and args.target != "relevance":
        ap.error("--keyword-ids is for --target relevance")
    try:
        return args.func(args)
    except ClientError as e:
        print(f"error ({e.status}): {e}" if e.status else f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more, as a Unix filter does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit too
        return 0
    except ValueError as e:  # the request was refused before it was sent (client-side checks)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
