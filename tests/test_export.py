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


def test_exported_encoders_load_in_a_process_without_the_kernels_extension(tiny_export):
    """Plain torch.jit.load in a fresh interpreter (as Triton's PyTorch backend, or the indexer on
    another machine, would): no custom op may be baked into either file."""
    import subprocess
    import sys
    code = "import sys, torch; [torch.jit.load(p) for p in sys.argv[1:]]"
    run = subprocess.run([sys.executable, "-c", code, str(tiny_export / "query_encoder.pt"),
                          str(tiny_export / "keyword_encoder.pt")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


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


def test_untied_towers_start_equal_train_apart_and_round_trip(tmp_path, tiny_export):
    model = TwinBERT.load(tiny_export.parent / "model").untie()
    assert not model.config.shared_encoders and model.keyword_encoder is not model.query_encoder
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    ids, mask = map(torch.from_numpy, tok(["cordless drill", "ceiling fan with light"]))
    with torch.no_grad():
        assert torch.equal(model.embed(ids, mask, "query"), model.embed(ids, mask, "keyword"))
        next(model.keyword_encoder.parameters()).add_(0.1)  # a step on the keyword side only
        assert not torch.equal(model.embed(ids, mask, "query"), model.embed(ids, mask, "keyword"))
    model.save(tmp_path / "untied")
    again = TwinBERT.load(tmp_path / "untied")
    assert not again.config.shared_encoders
    with torch.no_grad():
        assert torch.equal(again.embed(ids, mask, "keyword"), model.embed(ids, mask, "keyword"))
        assert torch.equal(again.embed(ids, mask, "query"), model.embed(ids, mask, "query"))


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


def test_reranker_export_scores_real_pairs_as_the_eager_bilstm(tiny_reranker):
    from serving.rerank import Reranker
    from training.bilstm import BiLSTMStudent
    manifest = json.loads((tiny_reranker / "reranker.json").read_text())
    assert set(manifest["sha256"]) == {"reranker.pt", "reranker_bf16.pt", "tokenizer.json"} and manifest["max_length"] == 40
    assert manifest["model_config"]["interaction"] is True
    eager = BiLSTMStudent.load(manifest["checkpoint"])
    reranker = Reranker(tiny_reranker)
    titles = ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", "Flexzilla 50 ft. Garden Hose",
              "x", "Hampton Bay 52 in. Ceiling Fan with Light Kit " * 8]  # the last is truncated to 40 pieces
    for query in ("cordless drill", "a", "milwaukee m18 fuel hammer drill driver kit with two batteries"):
        expected = torch.sigmoid(torch.from_numpy(eager.score([query] * len(titles), titles))).numpy()
        np.testing.assert_allclose(reranker.scores(query, titles), expected, atol=1e-5)
    ids = np.array([b"d", b"h", b"x", b"f"], dtype=object)
    top_ids, top_texts, top_scores = reranker.rerank("cordless drill", ids, np.array([t.encode() for t in titles], dtype=object), 3)
    s = reranker.scores("cordless drill", titles)
    assert list(top_ids) == list(ids[np.argsort(-s, kind="stable")[:3]]) and list(top_scores) == sorted(s, reverse=True)[:3]
    assert top_texts[0].decode() == titles[int(np.argmax(s))]
    assert reranker.scores("drill", []).shape == (0,)
    # the bf16 trace: the same pairs within bf16's rounding of the LSTM, the same top candidate here
    bf16 = Reranker(tiny_reranker, "bf16")
    assert bf16.precision == "bf16" and reranker.precision == "fp32"
    s16 = bf16.scores("cordless drill", titles)
    assert s16.dtype == np.float32 and 0 < np.abs(s16 - s).max() < 0.01 and np.argmax(s16) == np.argmax(s)
    with pytest.raises(ValueError, match="precision must be one of"):
        Reranker(tiny_reranker, "fp16")


def test_reranker_export_refuses_a_missing_checkpoint(tmp_path):
    from training.export import export_reranker
    with pytest.raises(FileNotFoundError, match="no BiLSTM checkpoint"):
        export_reranker(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_repository_has_the_rerank_models_only_with_a_reranker(tmp_path, tiny_export, tiny_reranker, build_repository):
    from serving.repository import assemble
    titles = {"d1": "cordless drill", "h1": "garden hose"}
    store, with_reranker = build_repository(tiny_export, titles, tmp_path, tiny_reranker)
    assert {"reranker", "retrieve_rerank"} <= {p.name for p in with_reranker.iterdir()}
    assert (with_reranker / "reranker/1/reranker.pt").is_file()
    without = assemble(tiny_export, store, tmp_path / "plain")
    names = {p.name for p in without.iterdir()}
    assert "retrieve" in names and not names & {"reranker", "retrieve_rerank"}
    assert (with_reranker / "reranker/1/reranker_bf16.pt").is_file()
    with pytest.raises(FileNotFoundError, match="lacks reranker.pt, reranker_bf16.pt"):
        assemble(tiny_export, store, tmp_path / "bad", tmp_path)


def test_build_exports_the_reranker_again_when_its_checkpoint_config_or_format_changes(tmp_path, tiny_reranker, capsys,
                                                                                        monkeypatch):
    import shutil
    from serving.build import _reranker
    from training import export as export_mod
    artifacts = tmp_path / "artifacts"
    shutil.copytree(json.loads((tiny_reranker / "reranker.json").read_text())["checkpoint"], artifacts / "bilstm")
    out = _reranker(artifacts, rebuild=False)
    assert json.loads((out / "reranker.json").read_text())["format"] == export_mod.RERANKER_FORMAT
    assert "reusing" not in capsys.readouterr().out
    assert _reranker(artifacts, rebuild=False) == out and "reusing" in capsys.readouterr().out
    # same weights, another config (here only its layout): the export no longer matches
    cfg = artifacts / "bilstm" / "config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()), indent=4))
    _reranker(artifacts, rebuild=False)
    assert "reusing" not in capsys.readouterr().out
    assert _reranker(artifacts, rebuild=False) == out and "reusing" in capsys.readouterr().out
    monkeypatch.setattr(export_mod, "RERANKER_FORMAT", export_mod.RERANKER_FORMAT + 1)
    _reranker(artifacts, rebuild=False)
    assert "reusing" not in capsys.readouterr().out


def test_build_exports_and_indexes_again_when_the_title_length_or_the_titles_change(tmp_path, tiny_export):
    """serving.build reuses an export only for the checkpoint's weights and config: a second pass that reads
    titles to 48 tokens (training.distill --keyword-max-len) exports a keyword encoder and tokenizer at 48.
    It reuses a keyword store only over the same ids and texts (a loader that repairs titles changes them)."""
    import shutil
    from serving.build import _current_export, _current_store
    from serving.keyword_store import IndexSpec
    from training.export import export
    from training.index import build as build_index, load_keyword_encoder
    model = tmp_path / "model"
    shutil.copytree(json.loads((tiny_export / "export.json").read_text())["checkpoint"], model)
    exported = export(model, tmp_path / "export")
    assert _current_export(model, exported)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "keyword_max_len": 48}))
    assert not _current_export(model, exported)
    export(model, exported)
    assert _current_export(model, exported)
    assert json.loads((exported / "tokenizer_config.json").read_text())["keyword_max_len"] == 48
    assert load_keyword_encoder(exported)[1].max_length == 48
    titles = {"1": "Baker's Rack", "2": "Black & Decker Drill"}
    build_index(exported, tmp_path / "store", list(titles), list(titles.values()), IndexSpec("flat"), progress=False)
    version = _current_store(tmp_path / "store", exported, "flat", titles)
    assert version is not None
    assert _current_store(tmp_path / "store", exported, "flat", {**titles, "1": "Baker&#39;s Rack"}) is None
    assert _current_store(tmp_path / "store", exported, "flat", {**titles, "3": "Fan"}) is None
    assert _current_store(tmp_path / "store", exported, "hnsw", titles) is None


def test_reranker_export_warns_for_an_unpacked_bilstm(tmp_path, tiny_reranker):
    import shutil
    from training.export import export_reranker
    ckpt = tmp_path / "bilstm"
    shutil.copytree(json.loads((tiny_reranker / "reranker.json").read_text())["checkpoint"], ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "packed": False}))
    with pytest.warns(UserWarning, match="before packed directions"):
        export_reranker(ckpt, tmp_path / "out")
    assert (tmp_path / "out" / "reranker.pt").is_file()


def test_repository_pins_ensembles_and_sizes_warmups_for_a_projected_model(tmp_path, build_repository):
    """A student trained with --proj-dim crosses narrower keyword vectors: the assembled warm-up samples
    follow the export (a 384-wide sample would fail pool_cross's warm-up and keep it from loading)."""
    import re

    from serving.repository import parse_model_config
    from training.export import export
    from training.twin import TwinConfig
    torch.manual_seed(0)
    TwinBERT(TwinConfig(num_layers=1, proj_dim=64)).save(tmp_path / "model")
    exported = export(tmp_path / "model", tmp_path / "export")
    _, repo = build_repository(exported, {"d1": "DEWALT drill", "f1": "ceiling fan"}, tmp_path)
    pool_cross = (repo / "pool_cross" / "config.pbtxt").read_text()
    assert re.findall(r'"KEYWORD_VECTORS" value: \{[^}]*dims: \[ (\d+), (\d+) \]', pool_cross) == [("100", "64")] * 2
    assert set(re.findall(r'"TOKEN_STATES" value: \{[^}]*dims: \[ \d+, (\d+) \]', pool_cross)) == {"384"}
    params, _ = PoolCrossParams.load(repo / "pool_cross" / "1")
    assert params.dim == 64
    for name in ("retrieve", "relevance"):  # every step pinned to version 1 (serving/rollout.py)
        steps = parse_model_config((repo / name / "config.pbtxt").read_text()).ensemble_scheduling.step
        assert steps and all(s.model_version == 1 for s in steps)


def test_every_python_model_version_is_assembled_with_its_bytecode(tmp_path, tiny_export, build_repository):
    """The Python backend's stub would otherwise write model.py's bytecode into the version directory
    as it loads, and Triton takes that for changed files: the next load of the model, or of an ensemble
    that uses it, would load that version again (a live update paid for it once per swap)."""
    import importlib.util
    from pathlib import Path
    _, repo = build_repository(tiny_export, {"d1": "DEWALT drill"}, tmp_path)
    models = sorted(repo.glob("*/1/model.py"))
    assert {m.parent.parent.name for m in models} >= {"tokenizer", "query_encoder", "pool_cross", "keyword_store",
                                                       "keyword_vectors"}
    for source in models:
        pyc = Path(importlib.util.cache_from_source(str(source))).read_bytes()
        st = source.stat()  # a timestamp-checked pyc: the source's mtime and size, so the stub accepts it as is
        assert int.from_bytes(pyc[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF, source
        assert int.from_bytes(pyc[12:16], "little") == st.st_size & 0xFFFFFFFF, source


def test_a_swap_refuses_an_unpinned_repository_a_running_swap_or_assembly_and_new_shapes(tmp_path, tiny_export, build_repository):
    """Checks that run before anything is placed or loaded (no server needed: none is contacted)."""
    import fcntl

    from serving.repository import RepositoryBusy, assemble
    from serving.rollout import RolloutError, check_swappable, publish_versions, rollout
    from training.export import export
    from training.twin import TwinConfig
    titles = {"d1": "DEWALT drill", "f1": "ceiling fan"}
    store, repo = build_repository(tiny_export, titles, tmp_path)
    assert set(check_swappable(repo, ["keyword_store"])) == {"retrieve", "relevance"}  # each one step of it
    assert set(check_swappable(repo, ["query_encoder", "keyword_vectors", "pool_cross"])) == set()  # composable parts
    cfg = repo / "keyword_store" / "config.pbtxt"
    original = cfg.read_text()
    cfg.write_text(original.replace("version_policy: { all: {} }", "version_policy: { latest: { num_versions: 1 } }"))
    with pytest.raises(RolloutError, match="version_policy must be all"):
        check_swappable(repo, ["keyword_store"])
    cfg.write_text(original)
    (repo / "keyword_store" / "2").mkdir()  # a version no ensemble pins: an earlier swap did not finish
    with pytest.raises(RolloutError, match="runs keyword_store version 1, not the newest present .2."):
        check_swappable(repo, ["keyword_store"])
    (repo / "keyword_store" / "2").rmdir()
    cfg = repo / "keyword_vectors" / "config.pbtxt"
    original = cfg.read_text()  # an earlier build's warm-up: one id, in a file every version shares
    cfg.write_text(original + 'model_warmup [ { name: "one_id" batch_size: 1 inputs { key: "KEYWORD_IDS" '
                   'value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "keyword_ids" } } } ]\n')
    with pytest.raises(RolloutError, match="earlier build.*re-assemble"):
        check_swappable(repo, ["keyword_store", "keyword_vectors"])
    cfg.write_text(original)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    with open(repo.with_name(repo.name + ".lock"), "a") as held:  # beside the repository, not in it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RolloutError, match="another update, rollout or assembly is running"):
            publish_versions(repo, {"keyword_store": {}}, "127.0.0.1:1")
        # re-assembling would replace the directory under a running swap
        with pytest.raises(RepositoryBusy, match="another update, rollout or assembly is running"):
            assemble(tiny_export, store, repo)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    assert not (repo / ".swap.lock").exists()
    torch.manual_seed(0)
    TwinBERT(TwinConfig(num_layers=1, proj_dim=64)).save(tmp_path / "narrow")
    narrow = export(tmp_path / "narrow", tmp_path / "narrow_export")
    (tmp_path / "n").mkdir()
    narrow_store, _ = build_repository(narrow, titles, tmp_path / "n")
    with pytest.raises(RolloutError, match="dim 384 -> 64"):
        rollout(repo, narrow, narrow_store, "127.0.0.1:1")
    assert sorted(p.name for p in (repo / "query_encoder").iterdir() if p.is_dir()) == ["1", "warmup"]  # nothing placed
