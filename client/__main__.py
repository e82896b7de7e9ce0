"""Command line for a running TwinBERT server.

    python -m client query "cordless drill" --top-k 10 [--url HOST:PORT] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from client.core import DEFAULT_URL, ClientError, TwinBertClient


def cmd_query(args) -> int:
    with TwinBertClient(args.url, timeout_s=args.timeout) as c:
        start = time.perf_counter()
        hits = c.retrieve(args.text, args.top_k)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=DEFAULT_URL, help="gRPC HOST:PORT (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("query", help="top-K keywords for a query text")
    q.add_argument("text")
    q.add_argument("--top-k", type=int, default=10)
    q.add_argument("--json", action="store_true", help="one JSON object per result")
    q.add_argument("--url", default=argparse.SUPPRESS)
    q.set_defaults(func=cmd_query)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ClientError as e:
        print(f"error ({e.status}): {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
