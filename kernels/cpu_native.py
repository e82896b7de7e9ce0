"""The C++ CPU path of pool_cross (`kernels/csrc/pool_cross_cpu.cpp`), forward only.

Built on first use by this machine's C++ compiler into torch's extension cache
(`TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`), one build per Python environment,
and reused until the source changes; `make setup` builds it ahead. Where it cannot be built (no compiler), `load()` says
why once and returns False, and pool_cross takes the TorchScript path.

    python -m kernels.cpu_native     # build (or find) it and print where it is
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "pool_cross_cpu.cpp"
_state: dict = {"ok": None, "error": None}


def build_directory() -> Path:
    """One build per torch installation (two venvs sharing the cache would rebuild over each other;
    keyed by torch's location, which Triton's stubs see as the venv does)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    env = hashlib.sha256(os.path.dirname(os.path.realpath(torch.__file__)).encode()).hexdigest()[:10]
    path = root / f"twinbert_pool_cross_cpu-{env}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(verbose: bool = False) -> bool:
    """Build or load the extension once per process; True when `torch.ops.twinbert` has it."""
    if _state["ok"] is None:
        try:
            from torch.utils.cpp_extension import load as build
            path = os.environ.get("PATH")
            # torch runs whichever `ninja` PATH names first. Always the pinned one (requirements.txt):
            # the build directory is shared by every process of this torch, and a system ninja of another
            # release (Debian's 1.11 against the pinned 1.13) does not trust the other's build log, so
            # each process that followed one using the other rebuilt the extension (about 10 s of both
            # cores; a server's stubs, whose PATH starts with the venv, after any client that had not).
            os.environ["PATH"] = os.pathsep.join(filter(None, [_ninja_dir(), path]))
            try:
                build(name="twinbert_pool_cross_cpu", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                      extra_ldflags=["-fopenmp"], build_directory=str(build_directory()), is_python_module=False,
                      verbose=verbose)
            finally:
                if path is None:
                    os.environ.pop("PATH", None)
                else:
                    os.environ["PATH"] = path
            _state["ok"] = True
        except Exception as exc:  # no compiler, failed build: the TorchScript path still works
            _state["ok"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
            warnings.warn(f"pool_cross: the C++ CPU path is unavailable ({_state['error'][:300]}); "
                          "using the TorchScript path", RuntimeWarning, stacklevel=2)
    return _state["ok"]


def _ninja_dir() -> str | None:
    """The directory of the project's pinned ninja (the `ninja` package's), else the interpreter's."""
    try:
        import ninja
        if os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")):
            return ninja.BIN_DIR
    except Exception:  # noqa: BLE001 - not installed, or an old package without BIN_DIR
        pass
    return os.path.dirname(sys.executable) if os.path.isfile(os.path.join(os.path.dirname(sys.executable), "ninja")) \
        else None


def error() -> str | None:
    return _state["error"]


def describe() -> str:
    """Which CPU path pool_cross takes in this process, building the C++ one if need be (for logs)."""
    return "C++" if load() else f"TorchScript (the C++ path is unavailable: {error()})"


if __name__ == "__main__":
    import argparse
    import time
    argparse.ArgumentParser(prog="python -m kernels.cpu_native",
                            description="Build (or find) the C++ CPU path of pool_cross and say where it is, or why "
                                        "it is unavailable (about 10 s to build; no flags).").parse_args()
    t = time.perf_counter()
    ok = load(verbose=True)
    print(f"kernels.cpu_native: {'ready in ' + str(build_directory()) if ok else 'unavailable: ' + str(error())} "
          f"({time.perf_counter() - t:.1f} s)")
    raise SystemExit(0 if ok else 1)
