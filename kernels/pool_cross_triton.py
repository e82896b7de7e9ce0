"""Fused attention pooling + crossing in Triton (the GPU kernel language).

One program per query row: it pools the row's token states, optionally projects, stores the pooled
vector and, while the vector is still in registers, crosses it with that row's keyword vectors
(per query [B, K, D] or shared [N, D]). Maths in fp32, one cast on store; int64 row and keyword offsets; masks on
every load and store. Runs on CPU tensors under TRITON_INTERPRET=1 (tests), on CUDA otherwise.

Layers: `_pool_cross_fwd_kernel` -> `pool_cross_triton` (checked launcher) -> `PoolCrossFunction`
(autograd: backward recomputes through the PyTorch reference, so training can use the op).
`warm_up` compiles, before serving, every kernel variant requests can need (SHAPE_INTS below).
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from kernels.pool_cross import PoolCrossParams, pool_cross_ref

_NO_CROSS, _COS, _RES = 0, 1, 2
_CROSSING_CODE = {None: _NO_CROSS, "cos": _COS, "res": _RES}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _load_tokens(t_row, offs_l, offs_h, l_ok, h_ok, stride_tl, stride_th):
    """A [BLOCK_L, BLOCK] tile of one row's token states, masked, as fp32."""
    return tl.load(t_row + offs_l[:, None] * stride_tl + offs_h[None, :] * stride_th,
                   mask=l_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)


# The integer arguments that change with a request's shape: its length L, its number of keywords K, and
# the mask's and scores' batch strides (L and K again). By default Triton compiles one kernel per value
# class of each integer argument (1, a multiple of 16, any other), so a served model would compile again
# (about a second on a GPU) on the first request whose L or K fell in a class not seen yet, K = 100 and
# K = 64 alike. Left unspecialised, a (BLOCK_L, crossing, dtypes) combination compiles once, and
# `warm_up` compiles every combination a model can meet before its first request. The other strides stay
# specialised: along H and D they are 1 for contiguous tensors, and the batch strides of the token states
# and keywords (L * H, K * D, or 0) are multiples of 16 whenever H and D are; that is what tells the
# compiler each row's token and keyword tiles are aligned, so their loads vectorise.
SHAPE_INTS = ("L", "K", "stride_mb", "stride_sb")


@triton.jit(do_not_specialize=SHAPE_INTS)
def _pool_cross_fwd_kernel(
    T, M, V, W, WB, KW, W1, W2, U, SCAL, Q, S,
    L, H, D, K, R,
    stride_tb, stride_tl, stride_th,
    stride_mb, stride_ml,
    stride_wd, stride_wh,
    stride_kb, stride_kk, stride_kd,
    stride_w1r, stride_w1d, stride_w2d, stride_w2r,
    stride_qb, stride_sb,
    BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HC: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, HAS_PROJ: tl.constexpr, CROSSING: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    t_row = T + b * stride_tb
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    real = (tl.load(M + b * stride_mb + offs_l * stride_ml, mask=l_ok, other=0) != 0) & l_ok
    pool_b = tl.load(SCAL + 0)

    # --- attention logits v . t_i + b over real tokens
    if HAS_PROJ:
        logits = tl.zeros([BLOCK_L], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_HC):
            offs_h = h0 + tl.arange(0, BLOCK_HC)
            h_ok = offs_h < H
            t = _load_tokens(t_row, offs_l, offs_h, l_ok, h_ok, stride_tl, stride_th)
            v = tl.load(V + offs_h, mask=h_ok, other=0.0)
            logits += tl.sum(t * v[None, :], axis=1)
    else:
        offs_h = tl.arange(0, BLOCK_H)
        h_ok = offs_h < H
        t_full = _load_tokens(t_row, offs_l, offs_h, l_ok, h_ok, stride_tl, stride_th)
        v = tl.load(V + offs_h, mask=h_ok, other=0.0)
        logits = tl.sum(t_full * v[None, :], axis=1)
    logits = tl.where(real, logits + pool_b, float("-inf"))
    row_max = tl.max(logits, axis=0)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # all-padding row
    p = tl.where(real, tl.exp(logits - row_max), 0.0)
    a = p / tl.maximum(tl.sum(p, axis=0), 1e-30)  # all-padding row -> all weights 0, no NaN

    # --- pooled vector (optionally tanh(W e + c)), kept in registers for the crossing
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    if HAS_PROJ:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_HC):
            offs_h = h0 + tl.arange(0, BLOCK_HC)
            h_ok = offs_h < H
            t = _load_tokens(t_row, offs_l, offs_h, l_ok, h_ok, stride_tl, stride_th)
            e_chunk = tl.sum(tl.where(real[:, None], a[:, None] * t, 0.0), axis=0)  # padding: 0, even if NaN
            w = tl.load(W + offs_d[:, None] * stride_wd + offs_h[None, :] * stride_wh,
                        mask=d_ok[:, None] & h_ok[None, :], other=0.0)
            acc += tl.sum(w * e_chunk[None, :], axis=1)
        q = _tanh(acc + tl.load(WB + offs_d, mask=d_ok, other=0.0))
        q = tl.where(d_ok, q, 0.0)
    else:
        q = tl.sum(tl.where(real[:, None], a[:, None] * t_full, 0.0), axis=0)  # padding: 0, even if NaN
    tl.store(Q + b * stride_qb + offs_d, q, mask=d_ok)

    # --- crossing with K keyword vectors of this row
    k_base = KW + b * stride_kb
    if CROSSING == 1:
        cos_w = tl.load(SCAL + 1)
        cos_b = tl.load(SCAL + 2)
        q_norm = tl.maximum(tl.sqrt(tl.sum(q * q, axis=0)), 1e-8)
        for k0 in range(0, K, BLOCK_K):
            offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            k_ok = offs_k < K
            kv = tl.load(k_base + offs_k[:, None] * stride_kk + offs_d[None, :] * stride_kd,
                         mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            dots = tl.sum(kv * q[None, :], axis=1)
            k_norm = tl.maximum(tl.sqrt(tl.sum(kv * kv, axis=1)), 1e-8)
            s = _sigmoid(cos_w * (dots / (q_norm * k_norm)) + cos_b)
            tl.store(S + b * stride_sb + offs_k, s, mask=k_ok)
    elif CROSSING == 2:
        res_c = tl.load(SCAL + 3)
        u = tl.load(U + offs_d, mask=d_ok, other=0.0)
        for k0 in range(0, K, BLOCK_K):
            offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            k_ok = offs_k < K
            kv = tl.load(k_base + offs_k[:, None] * stride_kk + offs_d[None, :] * stride_kd,
                         mask=k_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            x = tl.maximum(q[None, :], kv)                                    # [BLOCK_K, BLOCK_D]
            h = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
            for r0 in range(0, R, BLOCK_R):
                offs_r = r0 + tl.arange(0, BLOCK_R)
                r_ok = offs_r < R
                w1t = tl.load(W1 + offs_r[None, :] * stride_w1r + offs_d[:, None] * stride_w1d,
                              mask=d_ok[:, None] & r_ok[None, :], other=0.0)   # [BLOCK_D, BLOCK_R]
                h1 = tl.maximum(tl.dot(x, w1t, input_precision="ieee"), 0.0)
                w2t = tl.load(W2 + offs_d[None, :] * stride_w2d + offs_r[:, None] * stride_w2r,
                              mask=r_ok[:, None] & d_ok[None, :], other=0.0)   # [BLOCK_R, BLOCK_D]
                h += tl.dot(h1, w2t, input_precision="ieee")
            y = tl.maximum(h + x, 0.0)
            s = _sigmoid(tl.sum(y * u[None, :], axis=1) + res_c)
            tl.store(S + b * stride_sb + offs_k, s, mask=k_ok)


def _scalars(params: PoolCrossParams, device: torch.device) -> torch.Tensor:
    def scalar(t, default):
        return t.reshape(()).float() if t is not None else torch.tensor(default, device=device)
    return torch.stack([scalar(params.pool_b, 0.0), scalar(params.cos_w, 1.0),
                        scalar(params.cos_b, 0.0), scalar(params.res_c, 0.0)]).to(device).contiguous()


def _f32(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous() if t is not None else like.new_zeros(1, dtype=torch.float32)


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pool_cross_triton(token_states: torch.Tensor, mask: torch.Tensor, params: PoolCrossParams,
                      keywords: torch.Tensor | None = None, crossing: str = "cos",
                      out: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel (arguments already checked by kernels.pool_cross).

    `out` = (pooled [B, D], scores [B, K]) fp32 contiguous buffers to write into (tests poison them).
    """
    if not token_states.is_cuda and not interpreter_active():
        raise RuntimeError("the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
    dev = token_states.device
    bsz, dim = token_states.shape[0], params.dim
    has_keywords = keywords is not None and keywords.shape[-2] > 0
    code = _CROSSING_CODE[crossing] if has_keywords else _NO_CROSS
    n_k = keywords.shape[-2] if has_keywords else 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if out is None:
        pooled = torch.empty((bsz, dim), device=dev, dtype=torch.float32)
        scores = torch.empty((bsz, n_k), device=dev, dtype=torch.float32)
    else:
        pooled, scores = out
        if pooled.shape != (bsz, dim) or scores.shape != (bsz, n_k) or not pooled.is_contiguous() \
                or not scores.is_contiguous() or pooled.dtype != torch.float32 or scores.dtype != torch.float32:
            raise ValueError(f"out must be contiguous fp32 buffers of shapes {(bsz, dim)} and {(bsz, n_k)}")
    if bsz == 0:
        return pooled, scores
    args, kwargs = _launch_args(token_states, mask, params, keywords if has_keywords else None, code, pooled, scores)
    # Triton launches on the current CUDA device, not the tensors': an instance placed on cuda:1
    # (instance_group gives one per GPU) would otherwise run on device 0's stream with device-1 pointers
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _pool_cross_fwd_kernel[(bsz,)](*args, **kwargs)
    return pooled, scores


def _launch_args(token_states: torch.Tensor, mask: torch.Tensor, params: PoolCrossParams,
                 keywords: torch.Tensor | None, code: int, pooled: torch.Tensor, scores: torch.Tensor
                 ) -> tuple[tuple, dict]:
    """The kernel's positional arguments and its constexpr / launch options for one launch (`keywords`
    None unless crossed; `code` the crossing's code). Kept apart from the launch so that tests can compute
    Triton's cache key for any request shape without a GPU (tests/test_pool_cross_kernel.py)."""
    dev = token_states.device
    _, length, hidden = token_states.shape
    dim = params.dim
    has_keywords = keywords is not None
    n_k = keywords.shape[-2] if has_keywords else 0
    kw = keywords if has_keywords else pooled
    if has_keywords and kw.dim() == 3:
        stride_kb, stride_kk, stride_kd = kw.stride()
    elif has_keywords:
        stride_kb, (stride_kk, stride_kd) = 0, kw.stride()
    else:
        stride_kb = stride_kk = stride_kd = 0
    has_proj = params.proj_w is not None
    proj_w = _f32(params.proj_w, pooled)
    # the kernel reads D bias values whenever it projects: no bias = zeros, not a 1-element stand-in
    proj_b = _f32(params.proj_b, pooled) if params.proj_b is not None else pooled.new_zeros(max(dim, 1))
    w1, w2 = _f32(params.res_w1, pooled), _f32(params.res_w2, pooled)
    n_r = params.res_w1.shape[0] if (code == _RES) else 0
    # at least 16 lanes, as BLOCK_D: without a projection the pooled vector (BLOCK_H lanes) is crossed
    # with keyword tiles of BLOCK_D lanes, so the two must agree also when H < 16
    block_h = max(triton.next_power_of_2(hidden), 16)
    block_l = max(triton.next_power_of_2(length), 1)
    args = (token_states, mask, _f32(params.pool_v, pooled), proj_w, proj_b, kw,
            w1, w2, _f32(params.res_u, pooled), _scalars(params, dev), pooled, scores,
            length, hidden, dim, n_k, n_r,
            *token_states.stride(), *mask.stride(),
            *(proj_w.stride() if has_proj else (0, 0)),
            stride_kb, stride_kk, stride_kd,
            *(w1.stride() if code == _RES else (0, 0)), *(w2.stride() if code == _RES else (0, 0)),
            pooled.stride(0), scores.stride(0) if n_k else 0)
    kwargs = dict(BLOCK_L=block_l, BLOCK_H=block_h, BLOCK_HC=min(block_h, 32),
                  BLOCK_D=max(triton.next_power_of_2(dim), 16), BLOCK_K=16 if code == _RES else 64,
                  BLOCK_R=32, HAS_PROJ=has_proj, CROSSING=code,
                  num_warps=8 if block_l * block_h >= 8192 else 4)
    return args, kwargs


def warm_up_shapes(max_length: int, crossings: tuple[str, ...]) -> list[tuple[int, str | None]]:
    """(length, crossing) of one launch per kernel variant that requests of 1..`max_length` tokens can
    need: one length per BLOCK_L bucket (powers of two), pooling alone and each crossing. With
    SHAPE_INTS unspecialised, neither the number of keywords nor the batch size adds a variant."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1; got {max_length}")
    lengths = [1 << i for i in range(max(triton.next_power_of_2(max_length), 1).bit_length())]
    return [(n, c) for n in lengths for c in (None, *crossings)]


def warm_up(params: PoolCrossParams, device: torch.device, max_length: int, crossings: tuple[str, ...],
            dtype: torch.dtype = torch.float32, mask_dtype: torch.dtype = torch.int64) -> int:
    """Compile, by running once, every kernel variant that requests of up to `max_length` tokens (any
    number of keywords, any batch size) with these dtypes and crossings need; returns the launches.
    A served GPU instance calls it while loading (model_repository/pool_cross), so no user request
    waits for Triton's compiler. Longer requests compile their bucket on first use."""
    launches = 0
    for length, crossing in warm_up_shapes(max_length, crossings):
        states = torch.zeros(1, length, params.hidden, device=device, dtype=dtype)
        mask = torch.ones(1, length, device=device, dtype=mask_dtype)
        keywords = None if crossing is None else torch.zeros(1, 2, params.dim, device=device, dtype=dtype)
        pool_cross_triton(states, mask, params, keywords, crossing or "cos")
        launches += 1
    return launches


class PoolCrossFunction(torch.autograd.Function):
    """Fused forward; backward recomputes through the reference (inputs saved, no activations)."""

    @staticmethod
    def forward(ctx, crossing, names, token_states, mask, keywords, *values):
        params = PoolCrossParams(**dict(zip(names, values)))
        ctx.crossing, ctx.names = crossing, names
        ctx.save_for_backward(token_states, mask, keywords, *values)
        return pool_cross_triton(token_states, mask, params, keywords, crossing)

    @staticmethod
    def backward(ctx, grad_pooled, grad_scores):
        token_states, mask, keywords, *values = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                      for t in (token_states, keywords, *values)]
            ts, kw, *vals = inputs
            params = PoolCrossParams(**dict(zip(ctx.names, vals)))
            pooled, scores = pool_cross_ref(ts, mask, params, kw, ctx.crossing)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad((pooled, scores), wanted, (grad_pooled, grad_scores),
                                             allow_unused=True)) if wanted else iter(())
        out = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (None, None, out[0], None, out[1], *out[2:])


def pool_cross_autograd(token_states, mask, params: PoolCrossParams, keywords=None, crossing="cos"):
    state = params.state_dict()
    names = tuple(state)
    return PoolCrossFunction.apply(crossing, names, token_states, mask, keywords, *state.values())
