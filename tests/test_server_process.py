"""The tritonserver process wrapper on the real server: stopping a server that crashed still ends
the Python-backend stub processes it started (they otherwise stay alive, orphaned), and `make serve`
restarts a server that died."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from serving.server import TritonServer, free_ports, free_server_ports
from serving.stall_probe import processes, stall, stub_pids

pytestmark = pytest.mark.server


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    return [p.pid for p in processes() if p.state != "Z" and p.pgrp == pgid]


def _servers(ppid: int) -> list[int]:
    """The tritonserver processes that `ppid` (python -m serving.server) started."""
    return [p.pid for p in processes() if p.ppid == ppid and "tritonserver" in p.cmdline]


class Serve:
    """`python -m serving.server` (what make serve runs) on `repo`, its output in `log`."""

    def __init__(self, repo: Path, log: Path):
        (self.grpc, self.http, metrics), self.log_path = free_ports(3), log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--repository", str(repo),
                                      "--grpc-port", str(self.grpc), "--http-port", str(self.http),
                                      "--metrics-port", str(metrics)], stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text()

    def wait(self, predicate, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


def test_stopping_a_crashed_server_ends_its_stub_processes(tiny_export, tmp_path, build_repository):
    repo = _tokenizer_repo(tiny_export, tmp_path, build_repository)
    server = TritonServer(repo, **free_server_ports(),
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


def _tokenizer_repo(tiny_export, tmp_path, build_repository) -> Path:
    _, full = build_repository(tiny_export, {"d1": "DEWALT Cordless Drill", "f1": "Ceiling Fan"}, tmp_path)
    repo = tmp_path / "tokenizer_only"
    shutil.copytree(full / "tokenizer", repo / "tokenizer")
    return repo


def test_serve_restarts_a_server_that_died_and_stops_cleanly(tiny_export, tmp_path, build_repository):
    """`python -m serving.server` (make serve): the server killed from outside comes back, ready, on the
    same ports; SIGTERM then stops it and every process it started."""
    repo = _tokenizer_repo(tiny_export, tmp_path / "b", build_repository)
    serve = Serve(repo, tmp_path / "serve.log")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{serve.http}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        serve.wait(ready)
        first = _servers(serve.proc.pid)
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)
        serve.wait(lambda: "restarting it" in serve.output())  # killed starting or serving
        serve.wait(lambda: ready() and _servers(serve.proc.pid) and _servers(serve.proc.pid) != first)
        second = _servers(serve.proc.pid)[0]
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(60) == 0
        deadline = time.monotonic() + 5  # the killed group can take a moment to be reaped on a loaded host
        while (_group(first[0]) or _group(second)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(first[0]) == [] and _group(second) == []
        assert "signal 9" in serve.output() or "code -9" in serve.output()
    finally:
        serve.close()


def test_serve_answers_again_after_its_stubs_stall_under_traffic(tiny_export, tmp_path, build_repository):
    """The trigger of the 2.51 Python-backend abort, for real: keyword_store's stubs stopped for 2 s
    while requests are in flight (the backend gives a stub 1 s). `make serve` must answer again, right,
    whether the server survived or was restarted (so far it has aborted every time)."""
    from client import TwinBertClient
    titles = {"d1": "DEWALT 20-Volt MAX Cordless Drill Driver Kit", "f1": "Hampton Bay 52 in. Ceiling Fan",
              "h1": "Flexzilla 50 ft. Garden Hose", "p1": "BEHR Premium Plus Interior Paint"}
    _, repo = build_repository(tiny_export, titles, tmp_path)
    serve = Serve(repo, tmp_path / "serve.log")
    url = f"127.0.0.1:{serve.grpc}"

    def answer():
        try:
            with TwinBertClient(url) as c:
                return [h.keyword_id for h in c.retrieve("cordless drill", 4)]
        except Exception:
            return None

    stop = threading.Event()

    def traffic():
        with TwinBertClient(url) as c:
            while not stop.is_set():
                try:
                    c.retrieve("garden hose", 4)
                except Exception:
                    pass

    try:
        serve.wait(lambda: answer() is not None, 240)
        before = answer()
        stubs = stub_pids("keyword_store", _servers(serve.proc.pid)[0])
        assert len(stubs) == 2
        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1)
        stall(stubs, 2)
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(30)
        serve.wait(lambda: answer() == before, 240)
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(60) == 0
    finally:
        stop.set()
        serve.close()


def test_free_ports_are_distinct():
    ports = free_ports(16)
    assert len(set(ports)) == 16 and all(0 < p < 65536 for p in ports)
