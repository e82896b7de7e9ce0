import json

import numpy as np
import pytest
import torch

from kernels import PoolCrossParams
from training.export import KeywordEncoder
from training.pretrained import minilm_dir
from training.tokenize import WordPiece
from training.twin import TwinBERT


def test_export_writes_every_artifact_with_checksums(tiny_export):
    manifest = json.loads((tiny_export / "export.json").read_text())
    for name in ("query_encoder.pt", "keyword_encoder.pt", "pool_cross.safetensors", "pool_cross.json",
                 "tokenizer.json", "tokenizer_config.json"):
        assert name in manifest["sha256"]
    params, cfg = PoolCrossParams.load(tiny_export)
    assert cfg["dim"] == params.dim == 384


def test_torchscript_equals_eager_on_real_text(tiny_export):
    model = TwinBERT.load(tiny_export.parent / "model")
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    ids, mask = map(torch.from_numpy, tok(["cordless drill", "ceiling fan with light", "x"]))
    qenc = torch.jit.load(str(tiny_export / "query_encoder.pt"))
    kenc = torch.jit.load(str(tiny_export / "keyword_encoder.pt"))
    with torch.no_grad():
        assert (qenc(ids, mask) - model.query_encoder(ids, mask)).abs().max() <= 1e-5
        assert (kenc(ids[:, :6], mask[:, :6]) - KeywordEncoder(model)(ids[:, :6], mask[:, :6])).abs().max() <= 1e-5


def test_checkpoint_round_trip_is_exact(tmp_path, tiny_export):
    model = TwinBERT.load(tiny_export.parent / "model")
    model.save(tmp_path / "again")
    again = TwinBERT.load(tmp_path / "again")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_loading_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TwinBERT.load(tmp_path)


def test_indexer_builds_an_hnsw_fp16_store_and_refuses_float32_before_embedding(tmp_path, tiny_export):
    from serving.keyword_store import IndexSpec, KeywordStore
    from training.index import build, embed_texts, load_keyword_encoder
    ids = ["d1", "d2", "d3", "d4"]
    texts = ["cordless drill 18v", "garden hose 50 ft", "led light bulb", "toilet seat white"]
    with pytest.raises(ValueError, match="float16"):
        build(tiny_export, tmp_path / "store", ids, texts, IndexSpec("hnsw_fp16"), progress=False,
              vector_dtype="float32")
    assert not (tmp_path / "store").exists()
    store = KeywordStore(build(tiny_export, tmp_path / "store", ids, texts, IndexSpec("hnsw_fp16"), progress=False))
    encoder, tokenizer = load_keyword_encoder(tiny_export)
    vectors = embed_texts(encoder, tokenizer, texts, progress=False)
    np.testing.assert_allclose(store.lookup(["d3", "d1"]), vectors[[2, 0]], rtol=2e-3, atol=2e-3)
    assert store.search(vectors[[1]], 1)[0][0] == [1]
