"""The tritonserver process wrapper on the real server: stopping a server that crashed still ends
the Python-backend stub processes it started (they otherwise stay alive, orphaned)."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from serving.server import TritonServer, free_port

pytestmark = pytest.mark.server


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry.name))
    return pids


def test_stopping_a_crashed_server_ends_its_stub_processes(tiny_export, tmp_path, build_repository):
    _, full = build_repository(tiny_export, {"d1": "DEWALT Cordless Drill", "f1": "Ceiling Fan"}, tmp_path)
    repo = tmp_path / "tokenizer_only"
    shutil.copytree(full / "tokenizer", repo / "tokenizer")
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                          log_file=tmp_path / "server.log").start()
    pid = server.process.pid
    try:
        stubs = [p for p in _group(pid) if p != pid]
        assert stubs, "expected the tokenizer's stub process in the server's group"
        for stub in stubs:  # a stub too busy (or stuck) to notice its server is gone, as seen once
            os.kill(stub, signal.SIGSTOP)
        os.kill(pid, signal.SIGKILL)  # what an abort inside the server looks like from outside
        server.process.wait()
        assert set(stubs) <= set(_group(pid))
        server.stop()
        deadline = time.monotonic() + 5
        while _group(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(pid) == []
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
