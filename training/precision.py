"""Numeric precision of training and offline scoring on the CPU: fp32, or bf16 autocast.

bf16 pays only where the CPU multiplies bf16 matrices in hardware: AMX-BF16 tiles (Xeon Sapphire
Rapids and later) or AVX512-BF16 dot products (AMD Zen 4 and later, Xeon Cooper Lake). On an AMX host
here, oneDNN ran a [3200, 384] x [384, 1536] matmul at 3.3 TFLOP/s in bf16 against 0.35 in fp32, a
teacher training step took 190 ms against 440, and the teacher scored 100 pairs in 141 ms against
434. On an AMD EPYC host with AVX512-BF16 and no AMX (2026-12-02) the same matmul ran at 0.41
TFLOP/s against 0.19, a teacher training step took 435 ms against 640 and the teacher scored a pair in
1.45-1.72 ms against 3.39-3.52. On an earlier host with neither, the same bf16 GEMMs were about 2x
*slower* than fp32. So `auto` picks bf16 only where the CPU lists `amx_bf16` or `avx512_bf16`.

Autocast keeps the weights, optimizer state and checkpoints in fp32; only the matmuls and
their neighbours run in bf16. Exports stay fp32 (`training.export` checks eager against TorchScript at
1e-5); serving's query encoder runs bf16 matrix products where the CPU has either (`resolve_serving`,
serving.fast_bert), measured on both for one query: 1.5-1.8x faster than fp32 on the AMX host, 2x on the
EPYC host (docs/experiments.md, Serving).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
ENV = "TWINBERT_PRECISION"
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags of bf16 matmul hardware


def flags_of(cpuinfo: str) -> frozenset[str]:
    """The CPU flags on the first `flags` line of a /proc/cpuinfo text (none if it has no such line)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's flags (Linux /proc/cpuinfo; none elsewhere)."""
    try:
        return flags_of(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU lists bf16 matrix instructions, AMX-BF16 tiles or AVX512-BF16 dot products."""
    return bool(BF16_FLAGS & cpu_flags())


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tiles, where bf16 pays 2.2-3x rather than AVX512-BF16's 1.5-2x
    (training.pipeline sizes the full profile by it)."""
    return "amx_bf16" in cpu_flags()


def bf16_matmul_flags(cpuinfo: str) -> bool:
    """Whether the first `flags` line of a /proc/cpuinfo text names amx_bf16 or avx512_bf16."""
    return bool(BF16_FLAGS & flags_of(cpuinfo))


def resolve(precision: str | None = None) -> str:
    """'fp32' or 'bf16': `precision`, else $TWINBERT_PRECISION, else 'auto' (bf16 iff bf16 matmul hardware)."""
    p = precision or os.environ.get(ENV) or "auto"
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {p!r}")
    if p == "auto":
        return "bf16" if cpu_has_bf16_matmul() else "fp32"
    return p


def resolve_serving(precision: str) -> str:
    """'fp32' or 'bf16' for a served model's `precision` config parameter. `auto` is bf16 where the CPU
    has bf16 matrix hardware (AMX-BF16 or AVX512-BF16; serving's bf16 query encoder was measured on
    both), else fp32. $TWINBERT_PRECISION is not read: serving follows its config."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_has_bf16_matmul() else "fp32"
    return precision


def autocast(precision: str | None = None):
    """A context in which CPU matmuls run in bf16 when `precision` resolves to bf16 (else a no-op)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve(precision) == "bf16")


def add_precision_arg(ap) -> None:
    ap.add_argument("--precision", choices=PRECISIONS, default=None,
                    help=f"fp32, or bf16 autocast; auto (default, or ${ENV}): bf16 where the CPU has "
                         "AMX-BF16 or AVX512-BF16")
