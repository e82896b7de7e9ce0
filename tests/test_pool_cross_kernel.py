"""The fused Triton kernel against the reference (CPU tensors under TRITON_INTERPRET=1 in CI)."""
import zlib

import pytest
import torch

from kernels import PoolCrossParams, pool_cross, pool_cross_ref
from kernels.pool_cross_triton import pool_cross_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Inputs are cast to the dtype first and the reference computes in float64 from the same values,
# so the tolerance covers fp32 accumulation order (and bf16/fp16 keyword loads), not input rounding.
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4),
             torch.float16: dict(atol=5e-5, rtol=2e-4),
             torch.bfloat16: dict(atol=5e-5, rtol=2e-4)}


@pytest.fixture(autouse=True)
def _seed(request):
    """Inputs from a seed of the test's own id: a failure reproduces with -k, whatever else runs."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_params(h, d, r=48, proj=False):
    p = dict(pool_v=torch.randn(h) / h ** 0.5, pool_b=torch.randn(()),
             cos_w=torch.randn(()) * 3, cos_b=torch.randn(()),
             res_w1=torch.randn(r, d) / d ** 0.5, res_w2=torch.randn(d, r) / r ** 0.5,
             res_u=torch.randn(d) / d ** 0.5, res_c=torch.randn(()))
    if proj:
        p.update(proj_w=torch.randn(d, h) / h ** 0.5, proj_b=torch.randn(d) * 0.1)
    return PoolCrossParams(**p).to(DEVICE)


def make_mask(b, l, one_token_row=True, all_pad_row=False):
    lengths = torch.randint(1, l + 1, (b,))
    if one_token_row:
        lengths[0] = 1
    if b > 1:
        lengths[-1] = l  # a full row
    mask = (torch.arange(l)[None, :] < lengths[:, None]).long()
    if all_pad_row and b > 2:
        mask[1] = 0
    return mask.to(DEVICE)


def run_kernel(ts, mask, params, kw, crossing):
    """Call the launcher with outputs poisoned, so an unwritten element fails the comparison."""
    k = 0 if kw is None else kw.shape[-2]
    out = (torch.full((ts.shape[0], params.dim), float("nan"), device=DEVICE),
           torch.full((ts.shape[0], k), float("nan"), device=DEVICE))
    return pool_cross_triton(ts, mask, params, kw, crossing, out=out)


def reference64(ts, mask, params, kw, crossing):
    return pool_cross_ref(ts.double(), mask, params.to(torch.float64),
                          None if kw is None else kw.double(), crossing)


SHAPES = [  # (B, L, H, K): every value the issue names appears with each crossing
    (1, 1, 32, 0), (1, 7, 384, 1), (1, 32, 32, 100),
    (3, 7, 32, 100), (3, 32, 384, 0), (3, 1, 384, 1),
    (17, 32, 32, 1), (17, 1, 32, 100), (17, 7, 384, 100),
]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("crossing", ["cos", "res"])
@pytest.mark.parametrize("b,l,h,k", SHAPES)
def test_kernel_matches_reference(b, l, h, k, crossing, dtype):
    params = make_params(h, h)
    ts = torch.randn(b, l, h, device=DEVICE).to(dtype)
    mask = make_mask(b, l)
    kw = torch.randn(b, k, h, device=DEVICE).to(dtype) if k else None
    pooled, scores = run_kernel(ts, mask, params, kw, crossing)
    ref_pooled, ref_scores = reference64(ts, mask, params, kw, crossing)
    torch.testing.assert_close(pooled.double(), ref_pooled, **TOLERANCE[dtype])
    torch.testing.assert_close(scores.double(), ref_scores, **TOLERANCE[dtype])


@pytest.mark.parametrize("crossing", ["cos", "res"])
def test_narrow_hidden_and_projection_without_bias(crossing):
    """H = 8 < 16 without a projection (the pooled vector and the keyword tiles must have as many
    lanes), and a projection without a bias (the kernel must not read D values of a missing bias)."""
    params = make_params(8, 8, r=16)
    ts, mask, kw = torch.randn(3, 5, 8, device=DEVICE), make_mask(3, 5), torch.randn(3, 4, 8, device=DEVICE)
    for got, want in zip(run_kernel(ts, mask, params, kw, crossing), reference64(ts, mask, params, kw, crossing)):
        torch.testing.assert_close(got.double(), want, **TOLERANCE[torch.float32])
    params = make_params(64, 24, proj=True)
    params.proj_b = None
    ts, mask, kw = torch.randn(3, 5, 64, device=DEVICE), make_mask(3, 5), torch.randn(3, 4, 24, device=DEVICE)
    for got, want in zip(run_kernel(ts, mask, params, kw, crossing), reference64(ts, mask, params, kw, crossing)):
        torch.testing.assert_close(got.double(), want, **TOLERANCE[torch.float32])


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the interpreter's NaN products, then masked
@pytest.mark.parametrize("proj", [False, True])
def test_non_finite_padding_states_do_not_reach_the_scores(proj):
    """Padding gets weight 0, but 0 * NaN is NaN: every path must leave padding states out."""
    params = make_params(32, 16 if proj else 32, proj=proj)
    ts, mask = torch.randn(3, 6, 32, device=DEVICE), make_mask(3, 6)
    clean = ts.clone()
    ts[mask == 0] = float("nan")
    ts[0, -1] = float("inf")  # row 0 has one real token, so its last position is padding
    kw = torch.randn(3, 5, params.dim, device=DEVICE)
    for crossing in ("cos", "res"):
        want = reference64(clean, mask, params, kw, crossing)
        got = {"triton": run_kernel(ts, mask, params, kw, crossing), "ref": reference64(ts, mask, params, kw, crossing)}
        if DEVICE == "cpu":
            for backend in ("cpu", "ref"):
                got[backend] = pool_cross(ts, mask, params, kw, crossing, backend=backend)
            from kernels.pool_cross import _cpu_lean
            got["lean"] = _cpu_lean(ts, mask, params, kw, crossing, impl="lean")
        for name, pair in got.items():
            for g, w in zip(pair, want):
                torch.testing.assert_close(g.double(), w, **TOLERANCE[torch.float32], msg=name)


@pytest.mark.parametrize("crossing", ["cos", "res"])
def test_projection_and_shared_keywords(crossing):
    params = make_params(64, 24, proj=True)
    ts, mask = torch.randn(5, 9, 64, device=DEVICE), make_mask(5, 9)
    shared = torch.randn(37, 24, device=DEVICE)
    pooled, scores = run_kernel(ts, mask, params, shared, crossing)
    ref_pooled, ref_scores = reference64(ts, mask, params, shared, crossing)
    torch.testing.assert_close(pooled.double(), ref_pooled, **TOLERANCE[torch.float32])
    torch.testing.assert_close(scores.double(), ref_scores, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("crossing", ["cos", "res"])
def test_projection_with_half_inputs_and_an_int32_mask(crossing, dtype):
    """The projection under fp16/bf16 token states and keywords, and a mask of int32 (the other tests
    give int64 or bool), through the Triton kernel and, on CPU, the C++ op."""
    params = make_params(40, 24, r=16, proj=True)
    ts, mask = torch.randn(4, 6, 40, device=DEVICE).to(dtype), make_mask(4, 6, all_pad_row=True).to(torch.int32)
    kw = torch.randn(4, 5, 24, device=DEVICE).to(dtype)
    want = reference64(ts, mask, params, kw, crossing)
    got = {"triton": run_kernel(ts, mask, params, kw, crossing)}
    if DEVICE == "cpu":
        from kernels import cpu_native
        assert cpu_native.load(), cpu_native.error()
        got["native"] = run_native(ts, mask, params, kw, crossing)
    for name, pair in got.items():
        for g, w in zip(pair, want):
            torch.testing.assert_close(g.double(), w, **TOLERANCE[dtype], msg=name)


def test_all_padding_row_pools_to_zero_without_nan():
    params = make_params(32, 32)
    ts, mask = torch.randn(4, 5, 32, device=DEVICE), make_mask(4, 5, all_pad_row=True)
    for crossing in ("cos", "res"):
        pooled, scores = run_kernel(ts, mask, params, torch.randn(4, 3, 32, device=DEVICE), crossing)
        assert (pooled[1] == 0).all() and torch.isfinite(scores).all()


def test_non_contiguous_inputs():
    params = make_params(32, 32)
    ts = torch.randn(3, 32, 6, device=DEVICE).transpose(1, 2)          # [3, 6, 32], strided
    mask = make_mask(3, 12)[:, ::2]                                    # [3, 6], strided
    kw = torch.randn(3, 20, 64, device=DEVICE)[:, ::2, ::2]            # [3, 10, 32], strided
    assert not (ts.is_contiguous() or mask.is_contiguous() or kw.is_contiguous())
    for crossing in ("cos", "res"):
        got = run_kernel(ts, mask, params, kw, crossing)
        want = reference64(ts, mask, params, kw, crossing)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, **TOLERANCE[torch.float32])


def test_bool_mask_and_empty_batch():
    params = make_params(32, 32)
    ts, mask = torch.randn(2, 4, 32, device=DEVICE), make_mask(2, 4)
    a = run_kernel(ts, mask.bool(), params, None, "cos")[0]
    b = run_kernel(ts, mask, params, None, "cos")[0]
    torch.testing.assert_close(a, b)
    pooled, scores = pool_cross(torch.randn(0, 4, 32, device=DEVICE), torch.ones(0, 4, device=DEVICE),
                                params, backend="triton")
    assert pooled.shape == (0, 32) and scores.shape == (0, 0)


@pytest.mark.parametrize("crossing", ["cos", "res"])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_gradients_match_the_reference(crossing, proj, backend):
    """The Triton op's backward, and autograd through the CPU path (which training on CPU uses)."""
    h, d = 32, (16 if proj else 32)
    params = make_params(h, d, r=16, proj=proj)
    for t in params.state_dict().values():
        t.requires_grad_(True)
    ts = torch.randn(3, 5, h, device=DEVICE, requires_grad=True)
    kw = torch.randn(3, 4, d, device=DEVICE, requires_grad=True)
    mask = make_mask(3, 5)
    leaves = [ts, kw, *params.state_dict().values()]
    g_pooled, g_scores = torch.randn(3, d, device=DEVICE), torch.randn(3, 4, device=DEVICE)

    def grads(backend):
        pooled, scores = pool_cross(ts, mask, params, kw, crossing, backend=backend)
        return torch.autograd.grad((pooled, scores), leaves, (g_pooled, g_scores), allow_unused=True)

    if backend == "cpu" and DEVICE != "cpu":
        ts, kw, mask, params = ts.cpu(), kw.cpu(), mask.cpu(), params.to("cpu")
        leaves = [ts, kw, *params.state_dict().values()]
        g_pooled, g_scores = g_pooled.cpu(), g_scores.cpu()
    for got, want in zip(grads(backend), grads("ref")):
        if want is None:
            assert got is None or (got == 0).all()
        else:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "auto"])
@pytest.mark.parametrize("crossing", ["cos", "res"])
def test_cpu_path_matches_reference(backend, crossing):
    params = make_params(384, 384, r=256).to("cpu")
    # res runs in blocks of up to 512 pairs: one block, several (9 x 100), one query wider than a
    # block (600), and no query at all.
    for b, k in ((1, 100), (17, 1), (3, 0), (9, 100), (2, 600), (0, 5)):
        ts = torch.randn(b, 16, 384)
        mask = make_mask(b, 16, all_pad_row=True).cpu() if b else torch.ones(0, 16, dtype=torch.long)
        for kw in (torch.randn(b, k, 384), torch.randn(k, 384)):
            got = pool_cross(ts, mask, params, kw, crossing, backend=backend)
            want = reference64(ts, mask, params, kw, crossing)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_cpu_res_gradients_across_blocks(shared):
    """Autograd through the CPU path's res blocks (7 queries x 100 keywords: two blocks)."""
    h, b, k = 32, 7, 100
    params = make_params(h, h, r=16).to("cpu")
    for t in params.state_dict().values():
        t.requires_grad_(True)
    ts = torch.randn(b, 5, h, requires_grad=True)
    kw = torch.randn(*((k, h) if shared else (b, k, h)), requires_grad=True)
    mask = make_mask(b, 5).cpu()
    leaves = [ts, kw, *params.state_dict().values()]
    g_scores = torch.randn(b, k)

    def grads(backend):
        _, scores = pool_cross(ts, mask, params, kw, "res", backend=backend)
        return torch.autograd.grad(scores, leaves, g_scores, allow_unused=True)

    for _ in range(3):  # TorchScript's profiling executor optimises the graph after the first calls
        got = grads("cpu")
    for g, w in zip(got, grads("ref")):
        if w is None:
            assert g is None or (g == 0).all()
        else:
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_bad_arguments_are_clear_errors():
    params = make_params(32, 32)
    ts, mask = torch.randn(2, 4, 32, device=DEVICE), make_mask(2, 4)
    with pytest.raises(ValueError, match="one device"):
        pool_cross(ts, mask, params, torch.randn(3, 32, device="meta"))
    with pytest.raises(ValueError, match="B = 2"):
        pool_cross(ts, mask, params, torch.randn(3, 5, 32, device=DEVICE))
    with pytest.raises(TypeError, match="not supported"):
        pool_cross(ts.to(torch.int32), mask, params)
    with pytest.raises(ValueError, match="backend"):
        pool_cross(ts, mask, params, backend="cuda")
    with pytest.raises(ValueError, match="one device"):  # parameters elsewhere: the C++ path would crash
        pool_cross(ts, mask, params.to("meta"))
    short_u = make_params(32, 32)
    short_u.res_u = short_u.res_u[:20]  # would be read past its end
    with pytest.raises(ValueError, match="res_u"):
        pool_cross(ts, mask, short_u, torch.randn(2, 3, 32, device=DEVICE), "res")
    no_c = make_params(32, 32)
    no_c.res_c = None
    with pytest.raises(ValueError, match="needs res_w1, res_w2, res_u and res_c"):
        pool_cross(ts, mask, no_c, torch.randn(2, 3, 32, device=DEVICE), "res")
    # the projection and the scalars: the Triton path reads D bias values and a [D, H] tile through pointers
    for name, bad in (("proj_b", torch.randn(1)), ("proj_b", torch.randn(16)), ("proj_w", torch.randn(24, 16)),
                      ("pool_b", torch.randn(2)), ("cos_w", torch.randn(3))):
        p = make_params(32, 24, proj=True)
        setattr(p, name, bad.to(DEVICE))
        with pytest.raises(ValueError, match=r"pooling parameters must be pool_v \[H\], proj_w \[D, H\]"):
            pool_cross(ts, mask, p.to(DEVICE), torch.randn(2, 3, p.dim, device=DEVICE))


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_no_token_at_all_pools_to_zero_on_every_cpu_backend(backend):
    """L = 0 (TOKEN_STATES' dims are [-1, -1] in the served config): every path pools like an all-padding row."""
    params = make_params(8, 8)
    q, s = pool_cross(torch.randn(2, 0, 8), torch.ones(2, 0), params, torch.randn(3, 8), "cos", backend=backend)
    assert torch.equal(q, torch.zeros(2, 8)) and torch.allclose(s, torch.sigmoid(params.cos_b).expand(2, 3))


def test_native_op_refuses_res_parameters_it_would_read_past():
    """The registered op is callable without pool_cross()'s checks (torch.ops.twinbert.pool_cross_out)."""
    params = make_params(32, 32)
    ts, mask, kw = torch.randn(2, 4, 32), make_mask(2, 4), torch.randn(2, 3, 32)
    for name, bad in (("res_u", params.res_u[:20]), ("res_w1", torch.randn(48, 20)), ("res_w2", torch.randn(32, 40))):
        p = make_params(32, 32)
        setattr(p, name, bad)
        with pytest.raises(RuntimeError, match=r"res parameters must be res_w1 \[R, D\]"):
            run_native(ts, mask, p, kw, "res")
    p = make_params(32, 24, proj=True)
    p.proj_b = torch.randn(16)
    with pytest.raises(RuntimeError, match=r"proj_b must be \[D = 24\]"):
        run_native(ts, mask, p, torch.randn(2, 3, 24), "cos")


# The C++ CPU path (kernels/csrc/pool_cross_cpu.cpp): the default for CPU tensors without autograd.

def run_native(ts, mask, params, kw, crossing):
    """The C++ op with outputs poisoned, so an unwritten element fails the comparison."""
    from kernels.pool_cross import _native_out
    k = 0 if kw is None else kw.shape[-2]
    q, s = torch.full((ts.shape[0], params.dim), float("nan")), torch.full((ts.shape[0], k), float("nan"))
    _native_out(ts, mask, params, kw, crossing, q, s)
    return q, s


def test_native_cpu_path_builds_here():
    from kernels import cpu_native
    assert cpu_native.load(), cpu_native.error()


def test_native_build_runs_the_pinned_ninja_whatever_path_names_first(tmp_path, monkeypatch):
    """Another ninja first on PATH (Debian's, in a shell without the venv) must not run: two ninja
    releases distrust each other's build log, so every process alternating with the server's stubs
    rebuilt the shared extension (about 10 s of both cores, inside a live update's publish)."""
    import os

    from kernels import cpu_native
    called = tmp_path / "other-ninja-ran"
    fake = tmp_path / "bin" / "ninja"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    fake.chmod(0o755)
    path = f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.setitem(cpu_native._state, "ok", None)  # build or load again, in this process
    assert cpu_native.load(), cpu_native.error()
    assert not called.exists()
    assert os.environ["PATH"] == path  # the build's PATH does not leak into the process


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("crossing", ["cos", "res"])
@pytest.mark.parametrize("b,l,h,k", SHAPES)
def test_native_matches_reference(b, l, h, k, crossing, dtype):
    params = make_params(h, h).to("cpu")
    ts = torch.randn(b, l, h).to(dtype)
    mask = make_mask(b, l, all_pad_row=True).cpu()
    for kw in ((torch.randn(b, k, h).to(dtype), torch.randn(k, h).to(dtype)) if k else (None,)):
        got = run_native(ts, mask, params, kw, crossing)
        for g, w in zip(got, reference64(ts, mask, params, kw, crossing)):
            torch.testing.assert_close(g.double(), w, **TOLERANCE[dtype])
        if b > 2:
            assert (got[0][1] == 0).all()  # the all-padding row pools to zero


@pytest.mark.parametrize("crossing", ["cos", "res"])
def test_native_projection_strides_masks_and_blocks(crossing):
    params = make_params(64, 24, r=16, proj=True).to("cpu")
    ts = torch.randn(5, 64, 18).transpose(1, 2)[:, ::2]                 # [5, 9, 64], strided
    mask = make_mask(5, 9).cpu().bool()
    for kw in (torch.randn(5, 40, 48)[:, ::2, ::2], torch.randn(300, 24)):  # strided per-query; 5 x 300 pairs: 3 blocks
        got = run_native(ts, mask, params, kw, crossing)
        for g, w in zip(got, reference64(ts, mask, params, kw, crossing)):
            torch.testing.assert_close(g.double(), w, **TOLERANCE[torch.float32])


def test_native_path_serves_inference_and_autograd_takes_torchscript():
    params = make_params(32, 32, r=16).to("cpu")
    ts, mask, kw = torch.randn(3, 5, 32), make_mask(3, 5).cpu(), torch.randn(3, 4, 32)
    with torch.inference_mode():
        q, s = pool_cross(ts, mask, params, kw, "res")
    torch.testing.assert_close(s, run_native(ts, mask, params, kw, "res")[1])
    ts.requires_grad_(True)
    _, s = pool_cross(ts, mask, params, kw, "res")
    assert s.grad_fn is not None  # the C++ op has no backward, so this went through TorchScript


def test_native_op_refuses_bad_outputs_and_keywords():
    from kernels.pool_cross import _native_out
    params = make_params(32, 32).to("cpu")
    ts, mask = torch.randn(2, 4, 32), make_mask(2, 4).cpu()
    with pytest.raises(RuntimeError, match="q_out"):
        _native_out(ts, mask, params, None, "cos", torch.empty(3, 32), torch.empty(2, 0))
    with pytest.raises(RuntimeError, match="s_out"):
        _native_out(ts, mask, params, torch.randn(2, 5, 32), "cos", torch.empty(2, 32), torch.empty(2, 4))
    with pytest.raises(RuntimeError, match="keywords"):
        _native_out(ts, mask, params, torch.randn(2, 5, 16), "res", torch.empty(2, 32), torch.empty(2, 5))


class _Recorder:
    """Stands in for the kernel: records each launch's arguments instead of running it."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def _triton_cache_keys(kernel_fn, launches, do_not_specialize):
    """Triton's own compile-cache key of each launch, for a GPU target, computed without a GPU: launches
    with one key share one compiled kernel, a new key compiles."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature
    kernel = JITFunction(kernel_fn, do_not_specialize=do_not_specialize)
    binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32)))
    keys = set()
    for args, kwargs in launches:
        _, specialization, options = binder(*args, **kwargs)
        keys.add(compute_cache_key({}, specialization, options))
    return keys


def _request_launches(params, monkeypatch, max_length):
    """The launches of requests of every length up to max_length, several numbers of keywords (per query
    and shared), batch sizes and crossings, as the served pool_cross model makes them (fp32, int64 mask)."""
    import kernels.pool_cross_triton as m
    rec = _Recorder()
    monkeypatch.setattr(m, "_pool_cross_fwd_kernel", rec)
    for length in range(1, max_length + 1):
        for b in (1, 3, 4):
            ts = torch.zeros(b, length, params.hidden, device=DEVICE)
            mask = torch.ones(b, length, dtype=torch.long, device=DEVICE)
            m.pool_cross_triton(ts, mask, params, None)
            for k in (0, 1, 2, 16, 30, 64, 100, 200):
                for crossing in ("cos", "res"):
                    m.pool_cross_triton(ts, mask, params, torch.zeros(b, k, params.dim, device=DEVICE), crossing)
                    m.pool_cross_triton(ts, mask, params, torch.zeros(k, params.dim, device=DEVICE), crossing)
    return rec.launches


def _unspecialised(kernel):
    """The kernel's do_not_specialize, as the JIT (GPU) or the interpreter (CPU tests) keeps it."""
    if hasattr(kernel, "kwargs"):
        return tuple(kernel.kwargs.get("do_not_specialize") or ())
    return tuple(kernel.do_not_specialize)


def test_after_warm_up_no_request_shape_compiles_the_kernel_again(monkeypatch):
    import kernels.pool_cross_triton as m
    fn, dns, params = m._pool_cross_fwd_kernel.fn, _unspecialised(m._pool_cross_fwd_kernel), make_params(384, 384)
    requests = _request_launches(params, monkeypatch, 16)
    rec = _Recorder()
    monkeypatch.setattr(m, "_pool_cross_fwd_kernel", rec)
    assert m.warm_up(params, torch.device(DEVICE), 16, ("cos", "res")) == len(rec.launches) == 15  # 5 buckets x 3
    warm = _triton_cache_keys(fn, rec.launches, dns)
    assert _triton_cache_keys(fn, requests, dns) <= warm and len(warm) == 15
    # with Triton's default specialisation the same requests need kernels the warm-up never compiled
    assert len(_triton_cache_keys(fn, requests, ()) - _triton_cache_keys(fn, rec.launches, ())) > 0


def test_the_kernel_leaves_the_shape_integers_unspecialised():
    import kernels.pool_cross_triton as m
    kernel = m._pool_cross_fwd_kernel
    assert set(_unspecialised(kernel)) == set(m.SHAPE_INTS) and set(m.SHAPE_INTS) <= set(kernel.arg_names)


@pytest.mark.parametrize("max_length, lengths", [(1, [1]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 16]), (16, [1, 2, 4, 8, 16])])
def test_warm_up_covers_every_length_bucket(max_length, lengths):
    from kernels.pool_cross_triton import warm_up_shapes
    shapes = warm_up_shapes(max_length, ("cos",))
    assert sorted({n for n, _ in shapes}) == lengths and {c for _, c in shapes} == {None, "cos"}
    with pytest.raises(ValueError, match="max_length"):
        warm_up_shapes(0, ("cos",))


def test_warm_up_runs_the_kernel():
    from kernels.pool_cross_triton import warm_up
    assert warm_up(make_params(16, 16, r=8), torch.device(DEVICE), 2, ("cos", "res")) == 6
