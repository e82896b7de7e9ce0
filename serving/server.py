"""Start and stop the real `tritonserver` (from the nvidia-pytriton wheel) on a model repository.

    python -m serving.server --repository artifacts/model_repository     # foreground, Ctrl-C stops

Ports come from flags or TRITON_GRPC_PORT / TRITON_HTTP_PORT / TRITON_METRICS_PORT (8001/8000/8002).
If tritonserver dies, or fails to start, it is restarted (its stubs killed first) from the repository
on disk, after 1, 2, 4 ... 30 seconds; more than --max-restarts failures in a row, each within a
minute of starting, end it. --no-restart exits instead.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from training.cli import nonnegative_int, port


class ServerError(RuntimeError):
    pass


# what tritonserver 2.51's Python backend prints when it aborts the server after a stub stalled past
# its 1-second limit (README, known issue; serving/stall_probe.py reproduces it)
BACKEND_ABORT = ("boost::interprocess::lock_exception", "Signal (11) received")


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as e:
        raise ServerError("nvidia-pytriton is not installed: run `make setup`") from e
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def backend_dir(cache: Path | None = None) -> Path:
    """A backends/ directory with the Python backend and the stub matching this interpreter."""
    root = _pytriton_root()
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the Triton Python backend has no stub for Python {pyver} ({stub})")
    # one directory per installation: a server started from another venv re-pointing the links would
    # have a running server start its next stubs (a rollout's) from that venv
    where = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    cache = cache or Path(tempfile.gettempdir()) / f"twinbert-backends-{os.getuid()}-{pyver}-{where}"
    py = cache / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = py / src.name
        if not dst.exists() or dst.resolve() != src:
            tmp = py / f".{src.name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(src)
            os.replace(tmp, dst)  # atomic: a server starting meanwhile sees the old link or the new one
    return cache


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = _pytriton_root().parent.parent / "nvidia_pytriton.libs"
    # The stub must load the libpython of the interpreter that owns the venv: a different patch
    # release (e.g. Debian's) breaks on the venv's stdlib extension modules (_ssl, ...).
    py_libdir = sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [py_libdir, str(libs), env.get("LD_LIBRARY_PATH")]))
    # The stub's embedded Python finds the venv's packages only when the venv's bin/ comes first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), sysconfig.get_path("scripts"), env.get("PATH", "")])
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # each model sets its own thread count
    # Idle OpenMP workers sleep instead of spinning: eight processes share 2 cores, and a spinning
    # worker steals them from the others. Measured (`client.suite tune`): an encoder configured with
    # two instances of two threads went from 21 to 424 req/s at 16 clients; one-thread models unchanged.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: all `n` sockets stay bound until every port is picked, since a port
    released by one pick can be the next pick (it happened: gRPC and metrics got the same port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def free_server_ports() -> dict[str, int]:
    """TritonServer's three port arguments, free and distinct."""
    return dict(zip(("grpc_port", "http_port", "metrics_port"), free_ports(3)))


class TritonServer:
    """Context manager around one tritonserver process; stops it (and its stubs) on exit."""

    def __init__(self, repository: str | Path, grpc_port: int = 8001, http_port: int = 8000,
                 metrics_port: int = 8002, log_file: str | Path | None = None,
                 extra_args: list[str] | None = None, startup_timeout: float = 180.0, rate_limit: bool = True):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} not found; build it with `make demo` "
                              "(or training.export, training.index and serving.repository)")
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = extra_args or []
        self.rate_limit = rate_limit
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(_pytriton_root() / "bin" / "tritonserver"),
                f"--model-repository={self.repository}",
                f"--backend-directory={backend_dir()}",
                f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}",
                # explicit control: every model loads at start, and new versions (keyword store
                # updates, encoder swaps) are loaded through the model-control API while serving
                "--model-control-mode=explicit", "--load-model=*",
                # instance priorities in the configs: a model's first instance takes nearly every
                # request while it is free, the others the overflow (see keyword_store's config)
                f"--rate-limit={'execution_count' if self.rate_limit else 'off'}",
                "--exit-timeout-secs=10", *self.extra_args]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        if self.log_file and self.log_file.is_file():
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def aborted(self) -> bool:
        """Whether the server died of the Python backend's abort (known from its log)."""
        if self.process is None or self.process.poll() is None or not self.log_file or not self.log_file.is_file():
            return False
        text = self.log_file.read_text(errors="replace")
        return any(mark in text for mark in BACKEND_ABORT)

    def start(self, abort_retries: int = 1) -> "TritonServer":
        """Start and wait until ready; a start-up killed by the Python backend's abort (seen while stubs
        initialise on a loaded host) is tried again `abort_retries` times (needs a log file to tell)."""
        while True:
            try:
                return self._start()
            except ServerError:
                if abort_retries <= 0 or not self.aborted():
                    raise
                abort_retries -= 1
                self._keep_log("start-up aborted")

    def revive(self) -> bool:
        """Start the server again, on the same ports, if it died of the Python backend's abort;
        True if it did. (`make serve` restarts on any death; this is for tests and benchmarks.)"""
        if not self.aborted():
            return False
        self.stop()
        self._keep_log("died")
        self.start()
        return True

    def _keep_log(self, what: str) -> None:
        if self.log_file and self.log_file.is_file():
            kept = self.log_file.with_name(f"{self.log_file.name}.{what.split()[0]}-{int(time.time())}")
            self.log_file.rename(kept)
            print(f"tritonserver {what} (Python-backend abort, README known issue); log kept at {kept}, "
                  "starting it again", flush=True)

    def _start(self) -> "TritonServer":
        out = open(self.log_file, "w") if self.log_file else None
        try:
            self.process = subprocess.Popen(self.command(), env=server_env(), stdout=out or None,
                                            stderr=subprocess.STDOUT if out else None, start_new_session=True)
        finally:  # the child holds its own copy: each (re)start would leak one descriptor otherwise
            if out:
                out.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # stubs it started
                raise ServerError(f"tritonserver exited with code {self.process.returncode} during start-up\n"
                                  + self.log_tail())
            if self._ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {self.startup_timeout:.0f}s\n" + self.log_tail())

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        # the server leads its own session (start_new_session), so its process group id is its pid,
        # and the group outlives it: a server that crashed leaves its Python-backend stubs running
        # (one was seen alive 33 minutes after an abort), so the group is killed in every case
        pgid = self.process.pid
        if self.process.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.process.wait()
        try:  # stubs left behind by a hard kill or a crash
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port(flag: int | None, env: str, default: int) -> int:
    if flag is not None:
        return flag
    try:
        return port(os.environ.get(env, str(default)))
    except argparse.ArgumentTypeError as e:
        raise ServerError(f"{env} {e}") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=os.environ.get("TWINBERT_REPOSITORY", "artifacts/model_repository"))
    ap.add_argument("--grpc-port", type=port)
    ap.add_argument("--http-port", type=port)
    ap.add_argument("--metrics-port", type=port)
    ap.add_argument("--no-restart", dest="restart", action="store_false",
                    help="exit when tritonserver dies instead of restarting it (the Python backend of 2.51 "
                         "can abort the server under heavy load; see the README's known issue)")
    ap.add_argument("--max-restarts", type=nonnegative_int, default=5,
                    help="give up after this many restarts in a row that each served under a minute")
    args = ap.parse_args(argv)
    given = [p for p in (args.grpc_port, args.http_port, args.metrics_port) if p is not None]
    if len(set(given)) < len(given):
        ap.error("the gRPC, HTTP and metrics ports must differ")
    try:
        server = TritonServer(args.repository, _port(args.grpc_port, "TRITON_GRPC_PORT", 8001),
                              _port(args.http_port, "TRITON_HTTP_PORT", 8000),
                              _port(args.metrics_port, "TRITON_METRICS_PORT", 8002))
    except ServerError as e:  # no repository: nothing a restart would mend
        sys.exit(f"serve: {e}")
    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    quick_deaths = 0
    try:
        while not stopping:
            started = time.monotonic()
            try:
                server.start(abort_retries=0)  # this loop restarts it, on any death
            except ServerError as e:  # also the abort, which can strike while the stubs start
                what = str(e)
            else:
                print(f"serve: ready. gRPC 127.0.0.1:{server.grpc_port}, HTTP :{server.http_port}, "
                      f"metrics :{server.metrics_port}. Ctrl-C stops.", flush=True)
                while not stopping and server.process.poll() is None:
                    time.sleep(0.2)
                if stopping:
                    break
                code = server.process.returncode
                server.stop()  # the stubs it left
                what = "tritonserver exited with " + (f"signal {-code}" if code < 0 else f"code {code}")
            if not args.restart:
                sys.exit(f"serve: {what}")
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < 60 else 1
            if quick_deaths > args.max_restarts:
                sys.exit(f"serve: {what}\nserve: {quick_deaths} times in a row within a minute of starting; "
                         "not restarting it again")
            print(f"serve: {what}\nserve: restarting it (the model repository on disk, with every published "
                  "version, is what loads)", flush=True)
            time.sleep(min(30.0, 2.0 ** (quick_deaths - 1)))
    finally:
        print("serve: stopping", flush=True)
        server.stop()


if __name__ == "__main__":
    main()
