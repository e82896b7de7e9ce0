"""Probe how the server behaves when one Python-backend stub stalls under traffic.

A stub process that gets no CPU for over a second while it holds a request (a descheduled or
starved VM, a stopped process) is what precedes the tritonserver 2.51 abort described in the
README's known issue. This probe makes that stall on purpose: it starts the server on a repository,
sends `retrieve` traffic (16 requests in flight) and, in each cycle, stops one stub of `--model`
with SIGSTOP for `--pause` seconds, then resumes it. Every answer is compared with the answer the
same query got before any stall: an answer that belongs to another request is refused by the client
library (its QUERY_DIGEST is not the query's) and counted apart, and one that got past would be
counted as wrong.

    python -m serving.stall_probe --repository artifacts/model_repository --pause 0.8 2 --cycles 3 \
        --out reports/stall_probe.json

Prints and writes a JSON summary per pause length, each on a fresh server: answers right / wrong /
refused as another query's / failed, whether the server died, and the abort lines found in the
server log (kept at --log).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from training.cli import positive_float, positive_int

QUERIES = ["drill", "cordless drill with two batteries", "ceiling fan", "garden hose", "paint",
           "toilet seat", "led bulb", "concrete mix"]


class Proc(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int
    cmdline: str


def processes() -> list[Proc]:
    """The live processes, from /proc (those that end while it is read are left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        out.append(Proc(int(entry.name), state, int(ppid), int(pgrp), cmd))
    return out


def stub_pids(model: str, pgid: int | None = None) -> list[int]:
    """Pids of the Python-backend stub processes serving `model` (in process group `pgid` if given)."""
    return sorted(p.pid for p in processes() if "triton_python_backend_stub" in p.cmdline
                  and f"/{model}/" in p.cmdline and (pgid is None or p.pgrp == pgid))


def stall(pids: list[int], seconds: float) -> None:
    """Stop the processes `pids` for `seconds`, then let them go on (those still alive)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _traffic(url: str, stop: threading.Event, stats: dict) -> None:
    from client import AsyncTwinBertClient

    async def go():
        async with AsyncTwinBertClient(url) as c:
            expect = {q: [h.keyword_id for h in await c.retrieve(q, 100)] for q in QUERIES}
            stats["ready"].set()
            while not stop.is_set():
                answers = await asyncio.gather(*[c.retrieve(q, 100) for q in QUERIES * 2], return_exceptions=True)
                for q, a in zip(QUERIES * 2, answers):
                    if isinstance(a, Exception) and "another query's results" in str(a):
                        stats["refused"] += 1  # another request's answer, caught by its QUERY_DIGEST
                    elif isinstance(a, Exception):
                        stats["failed"] += 1
                        stats["errors"].add(str(a)[:200])
                    elif [h.keyword_id for h in a] != expect[q]:
                        stats["wrong"] += 1
                        got = [h.keyword_id for h in a]
                        if len(stats["wrong_examples"]) < 5:  # a re-ordering, or another query's list?
                            stats["wrong_examples"].append(
                                {"query": q, "shared_with_its_own": len(set(got) & set(expect[q])),
                                 "equals_the_answer_of": [o for o in QUERIES if o != q and expect[o] == got]})
                    else:
                        stats["right"] += 1
    try:
        asyncio.run(go())
    except Exception as e:  # the server went away under it
        stats["errors"].add(f"traffic stopped: {str(e)[:200]}")
    finally:
        stats["ready"].set()


def probe(repository: str | Path, model: str = "keyword_store", pause: float = 2.0, cycles: int = 3,
          log_file: str | Path | None = None) -> dict:
    from serving.server import TritonServer, free_server_ports
    server = TritonServer(repository, **free_server_ports(),
                          log_file=log_file, startup_timeout=400).start()
    stats = {"right": 0, "wrong": 0, "wrong_examples": [], "refused": 0, "failed": 0, "errors": set(),
             "ready": threading.Event()}
    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(server.grpc_url, stop, stats))
    worker.start()
    cycles_run = 0
    try:
        stats["ready"].wait(120)
        for i in range(cycles):
            if server.process.poll() is not None:
                break
            pids = stub_pids(model, server.process.pid)
            if not pids:
                raise RuntimeError(f"no stub process of {model!r} found")
            time.sleep(2)
            stall([pids[i % len(pids)]], pause)
            time.sleep(3)
            cycles_run += 1
    finally:
        stop.set()
        worker.join(60)
        died = server.process.poll() is not None
        code = server.process.returncode
        server.stop()
    log = Path(log_file).read_text(errors="replace") if log_file else ""
    return {"model": model, "pause_s": pause, "cycles": cycles_run, "right": stats["right"],
            "wrong": stats["wrong"], "wrong_examples": stats["wrong_examples"],
            "refused_as_another_querys": stats["refused"], "failed": stats["failed"],
            "server_died": died, "exit_code": code if died else None,
            "abort_lines": sorted(set(re.findall(r"terminate called after throwing an instance of '[^']+'|"
                                                 r"Signal \((?:6|11)\) received", log))),
            "errors": sorted(stats["errors"])[:6], "server_log": str(log_file) if log_file else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=os.environ.get("TWINBERT_REPOSITORY", "artifacts/model_repository"))
    ap.add_argument("--model", default="keyword_store", help="the model whose stub is stalled")
    ap.add_argument("--pause", type=positive_float, nargs="+", default=[0.8, 2.0],
                    help="seconds each stall lasts, one fresh server per value (the backend's limit is 1)")
    ap.add_argument("--cycles", type=positive_int, default=3, help="stalls, one stub after the other (stops early if "
                                                         "the server dies)")
    ap.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "twinbert-stall-probe.log"),
                    help="the server's log file (default: %(default)s)")
    ap.add_argument("--out", default=None, help="write the JSON summary here too")
    args = ap.parse_args(argv)
    if min(args.pause) <= 0 or args.cycles <= 0:
        ap.error("--pause and --cycles must be positive")
    runs = [probe(args.repository, args.model, pause, args.cycles, args.log) for pause in args.pause]
    text = json.dumps({"command": "python -m serving.stall_probe " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "runs": runs}, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
