"""serving.fast_bert: the re-assembled query encoder computes the exported BertModel's function (fp32
within float rounding; bf16 within its check), and QueryEncoder serves it only when it agrees."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from serving import fast_bert
from serving.encoder import QueryEncoder
from training.twin import Encoder


def _batch(vocab=30522):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 1:] = 0
    mask[3] = 0  # an all-padding row stays finite, as in Hugging Face's mask
    ids[:, 0] = 101
    return ids * mask, mask


@pytest.fixture(scope="module")
def eager():
    torch.manual_seed(0)
    return Encoder(2).eval()  # the pretrained lower two MiniLM layers


def _fast(enc, bf16):
    cfg = enc.bert.config
    return fast_bert.FastBert(dict(enc.named_parameters()), fast_bert.BertShape(cfg.num_attention_heads,
                              cfg.layer_norm_eps), bf16=bf16, prefix="bert.").eval()


def test_fp32_equals_the_eager_bert(eager):
    ids, mask = _batch()
    with torch.inference_mode():
        want, got = eager(ids, mask), _fast(eager, False)(ids, mask)
    assert torch.isfinite(got).all()
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)


def test_bf16_stays_close_to_the_eager_bert(eager):
    ids, mask = _batch()
    with torch.inference_mode():
        want, got = eager(ids, mask), _fast(eager, True)(ids, mask)
    real = mask.bool()
    cos = F.cosine_similarity(got[real], want[real], dim=-1)
    assert cos.min() >= fast_bert.BF16_MIN_COSINE
    assert (got[real] - want[real]).abs().max() > 1e-5  # it really ran in bf16


@pytest.mark.parametrize("precision, path, atol", [("fp32", "fast fp32", 1e-5), ("bf16", "fast bf16", 0.1),
                                                   ("torchscript", "torchscript", 1e-5)])
def test_query_encoder_serves_the_asked_path(encoder_dir, precision, path, atol):
    enc = QueryEncoder(encoder_dir, precision=precision)
    assert enc.path.startswith(path)
    plain = torch.jit.load(str(encoder_dir / "query_encoder.pt"))
    ids, mask = enc.tokenize(["cordless drill", "ceiling fan with light kit and remote control", "hose"])
    with torch.inference_mode():
        want = plain(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got, real = enc(ids, mask), mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=atol)
    cos = (got[real] * want[real]).sum(-1) / np.linalg.norm(got[real], axis=-1) / np.linalg.norm(want[real], axis=-1)
    assert cos.min() >= fast_bert.BF16_MIN_COSINE


def test_auto_follows_the_cpu(encoder_dir, monkeypatch):
    import training.precision as precision
    for flags, path in (({"amx_bf16", "avx512_bf16"}, "fast bf16"), ({"avx512_bf16"}, "fast bf16"),
                        ({"avx512f"}, "torchscript (auto")):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert QueryEncoder(encoder_dir).path.startswith(path)


def test_an_unknown_precision_is_refused(encoder_dir):
    with pytest.raises(ValueError, match="encoder precision must be one of"):
        QueryEncoder(encoder_dir, precision="int8")


def _with_encoder_shape(encoder_dir, tmp_path, shape):
    d = tmp_path / "v"
    shutil.copytree(encoder_dir, d)
    made = json.loads((d / "export.json").read_text())
    if shape is None:
        made.pop("encoder")
    else:
        made["encoder"] = shape
    (d / "export.json").write_text(json.dumps(made))
    return d


def test_an_export_without_the_encoder_shape_serves_the_file(encoder_dir, tmp_path):
    d = _with_encoder_shape(encoder_dir, tmp_path, None)
    with pytest.warns(UserWarning, match="predates the encoder shape.*make build"):
        enc = QueryEncoder(d, precision="fp32")
    assert enc.path.startswith("torchscript (export.json predates")


def test_a_fast_path_that_disagrees_is_not_served(encoder_dir, tmp_path):
    # 6 heads instead of 12: the same weights, another function; the load-time check catches it
    d = _with_encoder_shape(encoder_dir, tmp_path, {"heads": 6, "layer_norm_eps": 1e-12})
    for precision in ("fp32", "bf16"):
        with pytest.warns(UserWarning, match="disagrees with the file"):
            enc = QueryEncoder(d, precision=precision)
        assert enc.path.startswith("torchscript (the fast") and "disagrees" in enc.path
    d2 = _with_encoder_shape(encoder_dir, tmp_path / "b", {"heads": 7, "layer_norm_eps": 1e-12})
    with pytest.warns(UserWarning, match="does not apply"):
        assert QueryEncoder(d2, precision="fp32").path.startswith("torchscript (the fast path does not apply")
    d3 = _with_encoder_shape(encoder_dir, tmp_path / "c", {"heads": 12, "layer_norm_eps": 1e-12, "hidden_act": "gelu_new"})
    with pytest.warns(UserWarning, match="exact GELU"):
        assert QueryEncoder(d3, precision="bf16").path.startswith("torchscript")


@pytest.mark.parametrize("shape", [{"heads": 0, "layer_norm_eps": 1e-12}, {"heads": "12", "layer_norm_eps": 1e-12},
                                   {"heads": 12}, [12], {"heads": 12, "layer_norm_eps": 2.0},
                                   {"heads": 12, "layer_norm_eps": 1e-12, "hidden_act": 1}])
def test_a_malformed_encoder_shape_is_refused(encoder_dir, tmp_path, shape):
    d = _with_encoder_shape(encoder_dir, tmp_path, shape)
    with pytest.raises(ValueError, match="encoder shape"):
        QueryEncoder(d, precision="fp32")


def test_the_export_names_the_encoder_shape(tiny_export):
    assert json.loads((tiny_export / "export.json").read_text())["encoder"] == {
        "heads": 12, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}


@pytest.mark.parametrize("flags, want", [({"amx_bf16", "avx512_bf16"}, "bf16"), ({"avx512_bf16"}, "bf16"),
                                         ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_serving_auto_is_bf16_with_bf16_matmul_hardware(monkeypatch, flags, want):
    import training.precision as precision
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_serving("auto") == want
    assert precision.resolve_serving("bf16") == "bf16" and precision.resolve_serving("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_serving("torchscript")


def test_twin_served_specs_are_checked():
    from training.evaluate import load_model
    for spec in ("twin-served-int8:/x", "twin-served:"):
        with pytest.raises(ValueError, match="twin-served needs"):
            load_model(spec, None, None)


@pytest.mark.parametrize("batch, length", [(1, 1), (2, 5), (5, 13), (1, 16), (7, 8)])
def test_the_traced_fast_path_holds_at_shapes_it_was_not_traced_at(encoder_dir, batch, length):
    enc = QueryEncoder(encoder_dir, precision="fp32")
    plain = torch.jit.load(str(encoder_dir / "query_encoder.pt"))
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(1000, enc.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, max(1, length // 2):] = 0
    with torch.inference_mode():
        want = plain(ids * mask, mask).numpy()
    got = enc((ids * mask).numpy(), mask.numpy())
    real = mask.numpy().astype(bool)
    assert got.shape == want.shape
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_twin_served_encodes_queries_as_serving_and_keywords_eagerly(tiny_export, precision):
    from training.evaluate import load_model
    served = load_model(f"twin-served-{precision}:{tiny_export.parent / 'model'}", None, None)
    eager = load_model(f"twin:{tiny_export.parent / 'model'}", None, None)
    assert served.params == eager.params
    texts = ["cordless drill", "ceiling fan with light kit"]
    for side in ("query", "keyword"):
        a, b = served.encode(texts, side), eager.encode(texts, side)
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() >= 0.9999
        if side == "keyword" or precision == "fp32":
            np.testing.assert_allclose(a, b, atol=1e-5)
