"""Weighted-average attention pooling fused with cos / res crossing.

Formulas (ARCHITECTURE.md): over real tokens only, a_i = softmax_i(v . t_i + b),
e = sum_i a_i t_i, optionally e <- tanh(W e + c_p).
  cos: s = sigmoid(w * cos(q, k) + b0)
  res: x = max(q, k); y = relu(W2 relu(W1 x) + x); s = sigmoid(u . y + c)
A row with no real token (or none at all, L = 0) pools to the zero vector before the projection,
so to tanh(c_p) with one (defined, never NaN).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import List, Optional

import torch
import torch.nn.functional as F

CROSSINGS = ("cos", "res")
_COS_EPS = 1e-8


@dataclass
class PoolCrossParams:
    """Learned parameters of pooling and crossing (all fp32 tensors)."""

    pool_v: torch.Tensor                 # [H]
    pool_b: torch.Tensor                 # []
    proj_w: torch.Tensor | None = None   # [D, H]
    proj_b: torch.Tensor | None = None   # [D]
    cos_w: torch.Tensor | None = None    # []
    cos_b: torch.Tensor | None = None    # []
    res_w1: torch.Tensor | None = None   # [R, D]
    res_w2: torch.Tensor | None = None   # [D, R]
    res_u: torch.Tensor | None = None    # [D]
    res_c: torch.Tensor | None = None    # []

    @property
    def hidden(self) -> int:
        return self.pool_v.shape[0]

    @property
    def dim(self) -> int:
        return self.proj_w.shape[0] if self.proj_w is not None else self.hidden

    def to(self, *args, **kwargs) -> "PoolCrossParams":
        return PoolCrossParams(**{f.name: (None if getattr(self, f.name) is None
                                           else getattr(self, f.name).to(*args, **kwargs))
                                  for f in fields(self)})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).contiguous() for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def load(cls, export_dir) -> tuple["PoolCrossParams", dict]:
        """Read `pool_cross.safetensors` + `pool_cross.json` written by training.export: both checked
        against export.json's checksums, every parameter present (the optional projection as a pair),
        fp32 and of the shapes the config names, so that an altered file is refused here rather than
        served with a default in place of a missing scalar."""
        from pathlib import Path

        from training.artifacts import ArtifactError, read_json_object, read_tensors, verify_checksums
        export_dir = Path(export_dir)
        verify_checksums(export_dir, "export.json", ["pool_cross.safetensors", "pool_cross.json"], required=False)
        config = read_json_object(export_dir / "pool_cross.json")
        where = export_dir / "pool_cross.safetensors"
        crossings = config.get("trained_crossings")
        if not all(isinstance(config.get(k), int) and config[k] > 0 for k in ("hidden", "dim")) \
                or not isinstance(crossings, list) or not crossings or not set(crossings) <= set(CROSSINGS) \
                or config.get("crossing") not in CROSSINGS:
            raise ArtifactError(f"{export_dir / 'pool_cross.json'}: want positive int hidden and dim, crossing and "
                                f"trained_crossings from {CROSSINGS}; got {config}")
        state = read_tensors(where)
        try:
            params = cls.from_state_dict(state)
        except ValueError as e:
            raise ArtifactError(f"{where}: {e}") from None
        absent = [f.name for f in fields(cls) if getattr(params, f.name) is None and not f.name.startswith("proj_")]
        if absent or (params.proj_w is None) != (params.proj_b is None):
            raise ArtifactError(f"{where}: lacks {absent or ['proj_w or proj_b']}")
        wrong = [f.name for f in fields(cls) if getattr(params, f.name) is not None
                 and getattr(params, f.name).dtype != torch.float32]
        if wrong:
            raise ArtifactError(f"{where}: {wrong} are not float32")
        try:
            _check_pool(params)
            _check_res(params)
        except ValueError as e:
            raise ArtifactError(f"{where}: {e}") from None
        if params.hidden != config["hidden"] or params.dim != config["dim"]:
            raise ArtifactError(f"{export_dir}: pool_cross.json does not match pool_cross.safetensors")
        return params, config

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "PoolCrossParams":
        names = {f.name for f in fields(cls)}
        unknown = set(state) - names
        if unknown:
            raise ValueError(f"unknown pool/cross parameters: {sorted(unknown)}")
        if "pool_v" not in state or "pool_b" not in state:
            raise ValueError("pool/cross parameters need at least pool_v and pool_b")
        return cls(**state)


def attention_pool_ref(token_states: torch.Tensor, mask: torch.Tensor,
                       params: PoolCrossParams) -> torch.Tensor:
    """[B, L, H], [B, L] -> [B, D]; maths in fp32 (or fp64 if given fp64)."""
    compute = torch.float64 if token_states.dtype == torch.float64 else torch.float32
    t = token_states.to(compute)
    real = mask.to(torch.bool)
    logits = t @ params.pool_v.to(compute) + params.pool_b.to(compute)
    logits = logits.masked_fill(~real, float("-inf"))
    if logits.shape[1] == 0:  # no token at all (amax has nothing to reduce): pools like an all-padding row
        row_max = logits.new_zeros((logits.shape[0], 1))
    else:
        row_max = logits.amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    w = torch.exp(logits - row_max) * real
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(compute).tiny)
    # padding states are left out, not weighted by 0: a NaN or inf there must not reach e (0 * NaN)
    e = torch.einsum("bl,blh->bh", w, t.masked_fill(~real.unsqueeze(-1), 0.0))
    if params.proj_w is not None:
        e = e @ params.proj_w.to(compute).T
        if params.proj_b is not None:
            e = e + params.proj_b.to(compute)
        e = torch.tanh(e)
    return e


def cross_ref(q: torch.Tensor, k: torch.Tensor, params: PoolCrossParams, crossing: str) -> torch.Tensor:
    """q [B, D] with k [B, K, D] (per query) or [N, D] (shared) -> scores [B, K]."""
    compute = q.dtype
    k = k.to(compute)
    if crossing == "cos":
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(_COS_EPS)
        kn = k / k.norm(dim=-1, keepdim=True).clamp_min(_COS_EPS)
        cos = torch.einsum("bd,bkd->bk", qn, kn) if k.dim() == 3 else qn @ kn.T
        w = params.cos_w.to(compute) if params.cos_w is not None else torch.ones((), dtype=compute)
        b = params.cos_b.to(compute) if params.cos_b is not None else torch.zeros((), dtype=compute)
        return torch.sigmoid(w * cos + b)
    if crossing == "res":
        kk = k if k.dim() == 3 else k.unsqueeze(0).expand(q.shape[0], -1, -1)
        x = torch.maximum(q.unsqueeze(1), kk)                     # [B, K, D]
        h = F.relu(x @ params.res_w1.to(compute).T) @ params.res_w2.to(compute).T
        y = F.relu(h + x)
        return torch.sigmoid(y @ params.res_u.to(compute) + params.res_c.to(compute))
    raise ValueError(f"crossing must be one of {CROSSINGS}, got {crossing!r}")


def pool_cross_ref(token_states: torch.Tensor, mask: torch.Tensor, params: PoolCrossParams,
                   keywords: torch.Tensor | None = None, crossing: str = "cos"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: pooled query vectors [B, D] and scores [B, K] (K = 0 without keywords)."""
    q = attention_pool_ref(token_states, mask, params)
    if keywords is None or keywords.shape[-2] == 0:
        return q, q.new_zeros((q.shape[0], 0))
    return q, cross_ref(q, keywords, params, crossing)


def _check(token_states: torch.Tensor, mask: torch.Tensor, params: PoolCrossParams,
           keywords: torch.Tensor | None, crossing: str) -> None:
    if token_states.dim() != 3:
        raise ValueError(f"token_states must be [B, L, H], got shape {tuple(token_states.shape)}")
    if token_states.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"token_states dtype {token_states.dtype} is not supported "
                        "(float32, float16, bfloat16, float64)")
    b, l, h = token_states.shape
    if mask.shape != (b, l):
        raise ValueError(f"mask must be [B, L] = {(b, l)}, got {tuple(mask.shape)}")
    _check_pool(params)
    if params.hidden != h:
        raise ValueError(f"pooling parameters expect H = {params.hidden}, token_states have H = {h}")
    if crossing not in CROSSINGS:
        raise ValueError(f"crossing must be one of {CROSSINGS}, got {crossing!r}")
    # the parameters too: the C++ path would read CUDA parameters as host memory
    devices = {token_states.device, mask.device,
               *(t.device for t in (getattr(params, f.name) for f in fields(params)) if t is not None)}
    if keywords is not None:
        devices.add(keywords.device)
        if keywords.dim() not in (2, 3) or keywords.shape[-1] != params.dim:
            raise ValueError(f"keywords must be [B, K, {params.dim}] or [N, {params.dim}], "
                             f"got {tuple(keywords.shape)}")
        if keywords.dim() == 3 and keywords.shape[0] != b:
            raise ValueError(f"per-query keywords must have B = {b} rows, got {keywords.shape[0]}")
        if crossing == "res":
            _check_res(params)
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def _check_pool(params: PoolCrossParams) -> None:
    """pool_v [H], the optional projection proj_w [D, H] with proj_b [D], and one element in each of
    pool_b, cos_w and cos_b: the Triton path reads D bias values and a [D, H] weight tile through
    their pointers, past the end of a shorter tensor, and the C++ path reads the scalars as such."""
    v, w, b = params.pool_v, params.proj_w, params.proj_b
    wrong = v.dim() != 1 or any(t is not None and t.numel() != 1
                                for t in (params.pool_b, params.cos_w, params.cos_b))
    if w is not None:
        wrong = wrong or w.dim() != 2 or w.shape[1] != v.shape[0] or (b is not None and tuple(b.shape) != (w.shape[0],))
    if wrong:
        shapes = {f.name: tuple(getattr(params, f.name).shape) for f in fields(params)
                  if getattr(params, f.name) is not None and not f.name.startswith("res_")}
        raise ValueError(f"pooling parameters must be pool_v [H], proj_w [D, H], proj_b [D] and scalar pool_b, "
                         f"cos_w, cos_b; got {shapes}")


def _check_res(params: PoolCrossParams) -> None:
    """The res crossing's parameters, present and of matching shapes ([R, D], [D, R], [D], scalar): a
    short res_u would otherwise be read past its end by the C++ and Triton paths."""
    w1, w2, u, c = params.res_w1, params.res_w2, params.res_u, params.res_c
    if w1 is None or w2 is None or u is None or c is None:
        raise ValueError("res crossing needs res_w1, res_w2, res_u and res_c")
    d = params.dim
    if w1.dim() != 2 or w1.shape[1] != d or tuple(w2.shape) != (d, w1.shape[0]) or tuple(u.shape) != (d,) \
            or c.numel() != 1:
        raise ValueError(f"res parameters must be res_w1 [R, {d}], res_w2 [{d}, R], res_u [{d}] and a scalar "
                         f"res_c; got {tuple(w1.shape)}, {tuple(w2.shape)}, {tuple(u.shape)}, {tuple(c.shape)}")


def _pool_cross_lean(token_states: torch.Tensor, mask: torch.Tensor, pool_v: torch.Tensor,
                     pool_b: torch.Tensor, proj_w: Optional[torch.Tensor], proj_b: Optional[torch.Tensor],
                     keywords: Optional[torch.Tensor], crossing: int, cos_w: torch.Tensor,
                     cos_b: torch.Tensor, res_w1: Optional[torch.Tensor], res_w2: Optional[torch.Tensor],
                     res_u: Optional[torch.Tensor], res_c: torch.Tensor):
    """CPU path: fewer, larger ops than the reference (one softmax, bmm pooling, cosine from
    dot products and norms without materialising normalised keywords). TorchScript-compatible."""
    pad = mask == 0
    t = token_states.float().masked_fill(pad.unsqueeze(-1), 0.0)  # padding never reaches e (0 * NaN)
    logits = (t @ pool_v + pool_b).masked_fill(pad, float("-inf"))
    w = torch.softmax(logits, dim=1).masked_fill(pad, 0.0)  # all-padding row: NaN -> 0 weights
    e = torch.bmm(w.unsqueeze(1), t).squeeze(1)
    if proj_w is not None:
        e = e @ proj_w.t()
        if proj_b is not None:
            e = e + proj_b
        e = torch.tanh(e)
    if keywords is None or keywords.shape[-2] == 0:
        return e, e.new_zeros((e.shape[0], 0))
    k = keywords.float()
    if crossing == 0:
        q_unit = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True).clamp_min(1e-8)
        if k.dim() == 3:
            dots = torch.bmm(k, q_unit.unsqueeze(2)).squeeze(2)
            k_norm = torch.linalg.vector_norm(k, dim=-1).clamp_min(1e-8)
        else:
            dots = q_unit @ k.t()
            k_norm = torch.linalg.vector_norm(k, dim=-1).clamp_min(1e-8).unsqueeze(0)
        return e, torch.sigmoid(cos_w * (dots / k_norm) + cos_b)
    assert res_w1 is not None and res_w2 is not None and res_u is not None
    # Blocks of queries of at most 512 query-keyword pairs (one query a block when K > 512): the
    # block's [rows, D] and [rows, R] temporaries stay in cache and are too small to be fresh pages
    # from the OS on every call (one [3200, 384] pass at B=32, K=100 ran anywhere from 4.4 to 8.3 ms;
    # blocks hold 4.7-4.9).
    # Each block is one GEMM, one GEMM with the residual folded in (addmm), activations in place.
    shared = k.dim() == 2
    n_k = k.shape[-2]
    if e.shape[0] == 0:
        return e, e.new_zeros((0, n_k))
    step = max(1, 512 // n_k)
    parts: List[torch.Tensor] = []
    for start in range(0, e.shape[0], step):
        kb = k if shared else k[start:start + step]
        x = torch.maximum(e[start:start + step].unsqueeze(1), kb)
        rows = x.reshape(-1, x.shape[-1])
        h = torch.mm(rows, res_w1.t()).relu_()
        y = torch.addmm(rows, h, res_w2.t()).relu_()
        s = torch.addmv(res_c.expand(rows.shape[0]), y, res_u).sigmoid_()
        parts.append(s.view(x.shape[0], n_k))
    return e, parts[0] if len(parts) == 1 else torch.cat(parts)


# Chosen by `make bench-kernels` (reports/bench_kernels_cpu.md): the C++ path ("native") where it
# builds, else the TorchScript-compiled lean path (figures and their spread: README, "The
# pool_cross op"). Autograd always takes the TorchScript path: the C++ one is forward only.
CPU_IMPLS = ("native", "lean_script", "lean")
_CPU_IMPL = os.environ.get("TWINBERT_POOL_CROSS_CPU", "native")
if _CPU_IMPL not in CPU_IMPLS:
    raise ValueError(f"TWINBERT_POOL_CROSS_CPU must be one of {CPU_IMPLS}, got {_CPU_IMPL!r}")
_lean_scripted = None
_ONE, _ZERO = torch.ones(()), torch.zeros(())  # defaults of the optional scalars (never written)


def _op_args(token_states, mask, params: PoolCrossParams, keywords, crossing: str) -> tuple:
    """The flat argument list that both the C++ op and the TorchScript function take."""
    return (token_states, mask, params.pool_v, params.pool_b, params.proj_w, params.proj_b, keywords,
            0 if crossing == "cos" else 1, params.cos_w if params.cos_w is not None else _ONE,
            params.cos_b if params.cos_b is not None else _ZERO, params.res_w1, params.res_w2, params.res_u,
            params.res_c if params.res_c is not None else _ZERO)


def _native_out(token_states, mask, params: PoolCrossParams, keywords, crossing: str, q_out, s_out) -> None:
    """The C++ op into given outputs (the tests poison them first)."""
    torch.ops.twinbert.pool_cross_out(*_op_args(token_states, mask, params, keywords, crossing), q_out, s_out)


def _wants_grad(token_states, params: PoolCrossParams, keywords) -> bool:
    """Whether autograd has to see this call (the C++ path has no backward)."""
    if not torch.is_grad_enabled():
        return False
    tensors = [token_states, keywords, *(getattr(params, f.name) for f in fields(params))]
    return any(t is not None and t.requires_grad for t in tensors)


def _cpu_lean(token_states, mask, params: PoolCrossParams, keywords, crossing: str, impl: str = _CPU_IMPL):
    global _lean_scripted
    if impl == "native" and not _wants_grad(token_states, params, keywords):
        from kernels import cpu_native  # builds the extension on first use, not at import
        if cpu_native.load():
            return torch.ops.twinbert.pool_cross.default(*_op_args(token_states, mask, params, keywords, crossing))
    fn = _pool_cross_lean
    if impl != "lean":
        if _lean_scripted is None:
            _lean_scripted = torch.jit.script(_pool_cross_lean)
        fn = _lean_scripted
    return fn(*_op_args(token_states, mask, params, keywords, crossing))


BACKENDS = ("auto", "triton", "cpu", "ref")


def pool_cross(token_states: torch.Tensor, mask: torch.Tensor, params: PoolCrossParams,
               keywords: torch.Tensor | None = None, crossing: str = "cos", backend: str = "auto"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled query vectors [B, D] (fp32) and scores [B, K] (fp32); K = 0 without keywords (float64
    CPU inputs go through the reference and stay float64: that is for checking, not serving).

    backend "auto": CUDA tensors -> the fused Triton kernel; CPU tensors -> the CPU path chosen by
    benchmark. "triton" forces the kernel (CPU tensors need TRITON_INTERPRET=1), "cpu" the CPU
    path, "ref" the reference.
    """
    _check(token_states, mask, params, keywords, crossing)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ref":
        with torch.autocast("cpu", enabled=False):
            return pool_cross_ref(token_states, mask, params, keywords, crossing)
    if backend == "triton" or (backend == "auto" and token_states.is_cuda):
        from kernels.pool_cross_triton import pool_cross_autograd  # imports triton lazily
        return pool_cross_autograd(token_states, mask, params, keywords, crossing)
    # the maths is fp32 whatever the caller's autocast: inside a training step's bf16 autocast the
    # GEMMs here would round the scores to bf16, where a probability above 0.998 is 1.0 and BCE on it explodes
    with torch.autocast("cpu", enabled=False):
        if token_states.dtype == torch.float64:  # float64 is for checking, not speed
            return pool_cross_ref(token_states, mask, params, keywords, crossing)
        return _cpu_lean(token_states, mask, params, keywords, crossing)
