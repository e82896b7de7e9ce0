"""The tritonserver process wrapper on the real server: stopping a server that crashed still ends
the Python-backend stub processes it started (they otherwise stay alive, orphaned), and `make serve`
restarts a server that died."""
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
    repo = _tokenizer_repo(tiny_export, tmp_path, build_repository)
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


def _tokenizer_repo(tiny_export, tmp_path, build_repository) -> Path:
    _, full = build_repository(tiny_export, {"d1": "DEWALT Cordless Drill", "f1": "Ceiling Fan"}, tmp_path)
    repo = tmp_path / "tokenizer_only"
    shutil.copytree(full / "tokenizer", repo / "tokenizer")
    return repo


def test_serve_restarts_a_server_that_died_and_stops_cleanly(tiny_export, tmp_path, build_repository):
    """`python -m serving.server` (make serve): the server killed from outside comes back, ready, on the
    same ports; SIGTERM then stops it and every process it started."""
    import subprocess
    import sys
    import urllib.request
    repo = _tokenizer_repo(tiny_export, tmp_path / "b", build_repository)
    http = free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "serving.server", "--repository", str(repo), "--grpc-port",
                              str(free_port()), "--http-port", str(http), "--metrics-port", str(free_port())],
                             stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(predicate, seconds=180):
        deadline = time.monotonic() + seconds
        while not predicate():
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)

    def servers() -> list[int]:  # tritonserver processes started by `serve` (each leads its group)
        return [p for p in _group_children(serve.pid) if "tritonserver" in _cmdline(p)]

    try:
        wait(ready)
        first = servers()
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)
        wait(lambda: "restarting it" in (tmp_path / "serve.log").read_text())  # killed starting or serving
        wait(lambda: ready() and servers() and servers() != first)
        second = servers()[0]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
        assert _group(first[0]) == [] and _group(second) == []
        assert "signal 9" in (tmp_path / "serve.log").read_text() or "code -9" in (tmp_path / "serve.log").read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()


def _group_children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_serve_answers_again_after_its_stubs_stall_under_traffic(tiny_export, tmp_path, build_repository):
    """The trigger of the 2.51 Python-backend abort, for real: keyword_store's stubs stopped for 2 s
    while requests are in flight (the backend gives a stub 1 s). `make serve` must answer again, right,
    whether the server survived or was restarted (so far it has aborted every time)."""
    import subprocess
    import sys
    import threading
    from client import TwinBertClient
    from serving.stall_probe import stub_pids
    titles = {"d1": "DEWALT 20-Volt MAX Cordless Drill Driver Kit", "f1": "Hampton Bay 52 in. Ceiling Fan",
              "h1": "Flexzilla 50 ft. Garden Hose", "p1": "BEHR Premium Plus Interior Paint"}
    _, repo = build_repository(tiny_export, titles, tmp_path)
    grpc, http = free_port(), free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "serving.server", "--repository", str(repo), "--grpc-port",
                              str(grpc), "--http-port", str(http), "--metrics-port", str(free_port())],
                             stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{grpc}"

    def answer():
        try:
            with TwinBertClient(url) as c:
                return [h.keyword_id for h in c.retrieve("cordless drill", 4)]
        except Exception:
            return None

    def wait(predicate, seconds=240):
        deadline = time.monotonic() + seconds
        while not predicate():
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)

    stop = threading.Event()

    def traffic():
        with TwinBertClient(url) as c:
            while not stop.is_set():
                try:
                    c.retrieve("garden hose", 4)
                except Exception:
                    pass

    try:
        wait(lambda: answer() is not None)
        before = answer()
        servers = [p for p in _group_children(serve.pid) if "tritonserver" in _cmdline(p)]
        stubs = stub_pids("keyword_store", servers[0])
        assert len(stubs) == 2
        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1)
        for pid in stubs:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(2)
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(30)
        wait(lambda: answer() == before)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        stop.set()
        if serve.poll() is None:
            serve.kill()
        log.close()
