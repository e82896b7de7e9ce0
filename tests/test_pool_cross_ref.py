"""The PyTorch reference of pooling + crossing against hand-written float64 maths."""
import zlib

import pytest
import torch

from kernels import PoolCrossParams, pool_cross, pool_cross_ref


@pytest.fixture(autouse=True)
def _seed(request):
    """Inputs from a seed of the test's own id: a failure reproduces with -k, whatever else runs."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def params(h=8, d=None, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = d or h
    p = dict(pool_v=torch.randn(h, generator=g), pool_b=torch.randn((), generator=g),
             cos_w=torch.tensor(3.0), cos_b=torch.tensor(-1.0),
             res_w1=torch.randn(r, d, generator=g), res_w2=torch.randn(d, r, generator=g),
             res_u=torch.randn(d, generator=g), res_c=torch.randn((), generator=g))
    if d != h:
        p.update(proj_w=torch.randn(d, h, generator=g), proj_b=torch.randn(d, generator=g))
    return PoolCrossParams(**p)


def test_pooling_matches_float64_loop():
    p = params(h=8, d=4)
    t = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    q, _ = pool_cross_ref(t, mask, p)
    for b in range(2):
        real = t[b, mask[b].bool()]
        a = torch.softmax(real @ p.pool_v.double() + p.pool_b.double(), 0)
        e = torch.tanh(p.proj_w.double() @ (a @ real) + p.proj_b.double())
        torch.testing.assert_close(q[b], e)


def test_zero_attention_parameters_give_mean_pooling():
    p = PoolCrossParams(pool_v=torch.zeros(8), pool_b=torch.zeros(()))
    t = torch.randn(1, 4, 8)
    q, _ = pool_cross(t, torch.tensor([[1, 1, 0, 0]]), p)
    torch.testing.assert_close(q[0], t[0, :2].mean(0))


def test_single_real_token_and_all_padding_rows():
    p = params()
    t = torch.randn(2, 3, 8)
    q, s = pool_cross(t, torch.tensor([[0, 1, 0], [0, 0, 0]]), p, torch.randn(2, 5, 8), "cos")
    torch.testing.assert_close(q[0], t[0, 1])
    assert (q[1] == 0).all() and torch.isfinite(s).all()


def test_cos_and_res_crossing_match_float64_formulas():
    p = params(h=8)
    t = torch.randn(3, 4, 8, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.long)
    k = torch.randn(3, 6, 8, dtype=torch.float64)
    q, s_cos = pool_cross_ref(t, mask, p, k, "cos")
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], k, dim=-1)
    torch.testing.assert_close(s_cos, torch.sigmoid(3.0 * cos - 1.0))
    _, s_res = pool_cross_ref(t, mask, p, k, "res")
    x = torch.maximum(q[:, None, :], k)
    y = torch.relu(torch.relu(x @ p.res_w1.double().T) @ p.res_w2.double().T + x)
    torch.testing.assert_close(s_res, torch.sigmoid(y @ p.res_u.double() + p.res_c.double()))


@pytest.mark.parametrize("backend", ["auto", "cpu", "ref"])
def test_scores_stay_fp32_inside_a_callers_bf16_autocast(backend):
    """A training step runs the encoder under bf16 autocast: the op's GEMMs must not follow it. In bf16 a
    score above 0.998 rounds to 1.0 and BCE against a target below 1 gets a ~1e12 gradient."""
    p = params(h=64, d=64, r=32)
    t = torch.randn(4, 7, 64).bfloat16().requires_grad_(backend != "auto")  # as a bf16 encoder hands them over
    mask = torch.ones(4, 7, dtype=torch.long)
    k = torch.randn(4, 5, 64)
    for crossing in ("cos", "res"):
        want_q, want_s = pool_cross(t, mask, p, k, crossing, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, s = pool_cross(t, mask, p, k, crossing, backend=backend)
        assert q.dtype == s.dtype == torch.float32
        torch.testing.assert_close(s, want_s, atol=1e-6, rtol=1e-5)  # fp32 maths, as outside autocast


def test_a_call_outside_inference_mode_after_one_inside_it():
    """The C++ path keeps scratch matrices across calls; made under inference_mode they refused a later
    call's in-place writes outside it ("Inplace update to inference tensor"): an evaluation, then a
    training step's dev scoring."""
    p = params(h=1024, d=1024, r=16)  # wider than any other test's: new scratch, made in inference mode
    t, mask, k = torch.randn(3, 5, 1024), torch.ones(3, 5), torch.randn(700, 1024)
    with torch.inference_mode():
        _, inside = pool_cross(t, mask, p, k, "res")
    with torch.no_grad():
        _, outside = pool_cross(t, mask, p, k, "res")
    torch.testing.assert_close(outside, inside)


def test_shared_keywords_equal_per_query_keywords():
    p = params()
    t, mask = torch.randn(2, 3, 8), torch.ones(2, 3)
    k = torch.randn(5, 8)
    for crossing in ("cos", "res"):
        _, shared = pool_cross(t, mask, p, k, crossing)
        _, per_query = pool_cross(t, mask, p, k.expand(2, 5, 8), crossing)
        torch.testing.assert_close(shared, per_query)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: pool_cross(torch.randn(2, 3), torch.ones(2, 3), p), ValueError, r"\[B, L, H\]"),
    (lambda p: pool_cross(torch.randn(2, 3, 8), torch.ones(2, 4), p), ValueError, "mask must be"),
    (lambda p: pool_cross(torch.randn(2, 3, 7), torch.ones(2, 3), p), ValueError, "H = 8"),
    (lambda p: pool_cross(torch.randn(2, 3, 8).int(), torch.ones(2, 3), p), TypeError, "not supported"),
    (lambda p: pool_cross(torch.randn(2, 3, 8), torch.ones(2, 3), p, torch.randn(5, 6)), ValueError, "keywords must be"),
    (lambda p: pool_cross(torch.randn(2, 3, 8), torch.ones(2, 3), p, torch.randn(5, 8), "dot"), ValueError, "crossing"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(params())
