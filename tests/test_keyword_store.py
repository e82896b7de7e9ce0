import json

import numpy as np
import pytest

from serving.keyword_store import IndexSpec, KeywordStore, StoreError, UnknownKeywordError, latest_version, write_version


def make_store(root, n=200, dim=16, index_type="flat", seed=0, vector_dtype="float32"):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"kw{i}" for i in range(n)]
    return write_version(root, ids, [f"text {i}" for i in range(n)], vectors, IndexSpec(index_type), "enc",
                         vector_dtype=vector_dtype), vectors


@pytest.mark.parametrize("index_type, tolerance", [("flat", 1e-5), ("hnsw", 1e-5), ("hnsw_sq8", 2e-2)])
def test_search_finds_the_keyword_itself(tmp_path, index_type, tolerance):
    path, vectors = make_store(tmp_path, index_type=index_type)
    store = KeywordStore(path)
    positions, scores = store.search(vectors[[3, 150]] * 2.5, 5)  # scale does not matter for cosine
    assert positions[0][0] == 3 and positions[1][0] == 150
    assert scores[0, 0] == pytest.approx(1.0, abs=tolerance)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_lookup_returns_cached_vectors_and_names_unknown_ids(tmp_path):
    path, vectors = make_store(tmp_path)
    store = KeywordStore(path)
    np.testing.assert_array_equal(store.lookup(["kw7", "kw1"]), vectors[[7, 1]])
    with pytest.raises(UnknownKeywordError, match="'nope'"):
        store.lookup(["kw1", "nope"])
    lookup_only = KeywordStore(path, load_index=False, load_texts=False)  # what keyword_vectors loads
    assert lookup_only.texts is None and lookup_only.index is None
    np.testing.assert_array_equal(lookup_only.lookup(["kw7", "kw1"]), vectors[[7, 1]])


def test_float16_cached_vectors_come_back_as_float32(tmp_path):
    path, vectors = make_store(tmp_path, vector_dtype="float16")
    store = KeywordStore(path)
    assert store.manifest["vector_dtype"] == "float16" and store.vector_dtype == "float16"
    assert (path / "vectors.npy").stat().st_size < vectors.nbytes * 0.6
    got = store.lookup(["kw7", "kw1"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors[[7, 1]], rtol=1e-3, atol=1e-3)
    grid = store.vectors_at(np.array([[7, 1], [0, 199]]))
    assert grid.shape == (2, 2, 16) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[0], got)
    positions, _ = store.search(vectors[[42]], 1)  # the index is built from the float32 vectors
    assert positions[0][0] == 42


def test_a_vector_file_that_disagrees_with_the_manifest_is_refused(tmp_path):
    path, vectors = make_store(tmp_path, vector_dtype="float16")
    np.save(path / "vectors.npy", vectors)  # float32 now; checksums off to reach the dtype check
    with pytest.raises(StoreError, match="float32.*manifest says float16"):
        KeywordStore(path, verify=False)
    with pytest.raises(ValueError, match="vector_dtype"):
        make_store(tmp_path, vector_dtype="int8")
    huge = np.full((2, 4), 1e6, dtype=np.float32)  # beyond float16's range
    with pytest.raises(ValueError, match="beyond the range of float16"):
        write_version(tmp_path, ["a", "b"], ["x", "y"], huge, IndexSpec("flat"), "enc", vector_dtype="float16")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "hnsw_fp16"])
def test_every_build_records_ann_recall_against_exact_search(tmp_path, index_type):
    path, vectors = make_store(tmp_path, n=2000, index_type=index_type,
                               vector_dtype="float16" if index_type == "hnsw_fp16" else "float32")
    manifest = KeywordStore(path).manifest
    assert manifest["recall_queries"] == 200
    assert manifest["recall_at_100"] == 1.0 if index_type == "flat" else 0.9 <= manifest["recall_at_100"] <= 1.0
    from serving.keyword_store import ann_recall, build_index
    bad = build_index(vectors[::-1].copy(), IndexSpec("flat"))  # positions shuffled: exact but wrong ids
    assert ann_recall(bad, vectors) < 0.2


def test_versions_are_numbered_and_written_atomically(tmp_path):
    first, _ = make_store(tmp_path)
    second, _ = make_store(tmp_path, seed=1)
    assert (first.name, second.name) == ("1", "2") and latest_version(tmp_path) == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_failed_build_leaves_no_version(tmp_path):
    with pytest.raises(ValueError):
        write_version(tmp_path, ["a", "a"], ["x", "y"], np.ones((2, 4), np.float32), IndexSpec("flat"), "enc")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_refused(tmp_path):
    path, _ = make_store(tmp_path)
    with open(path / "vectors.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(StoreError, match="checksum mismatch"):
        KeywordStore(path)


def test_other_encoder_or_dimension_is_refused(tmp_path):
    path, _ = make_store(tmp_path)
    with pytest.raises(StoreError, match="rebuild the index"):
        KeywordStore(path, expect_encoder_sha256="other")
    with pytest.raises(StoreError, match="dimension 16"):
        KeywordStore(path, expect_dim=384)
    assert json.loads((path / "manifest.json").read_text())["count"] == 200


@pytest.mark.parametrize("k", [0, 1001])
def test_search_rejects_bad_k_and_shapes(tmp_path, k):
    path, vectors = make_store(tmp_path)
    store = KeywordStore(path)
    with pytest.raises(ValueError, match="top_k"):
        store.search(vectors[:1], k)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        store.search(np.ones((1, 8)), 5)


def test_hnsw_fp16_serves_cached_vectors_from_the_index_itself(tmp_path):
    path, vectors = make_store(tmp_path, index_type="hnsw_fp16", vector_dtype="float16")
    assert not (path / "vectors.npy").exists() and (path / "norms.npy").is_file()
    store = KeywordStore(path)
    assert store.vector_dtype == "float16" and store.norms is not None
    got = store.lookup(["kw7", "kw1"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors[[7, 1]], rtol=2e-3, atol=2e-3)  # float16 of the unit vector x norm
    positions, scores = store.search(vectors[[3, 150]], 5)
    assert positions[0][0] == 3 and positions[1][0] == 150
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-3)
    without_search = KeywordStore(path, load_index=False)  # the vectors live in the index: still readable
    np.testing.assert_array_equal(without_search.lookup(["kw7", "kw1"]), got)
    with pytest.raises(ValueError, match="float16"):
        make_store(tmp_path, index_type="hnsw_fp16", vector_dtype="float32")
    with open(path / "norms.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(StoreError, match="norms.npy: checksum mismatch"):
        KeywordStore(path)


def test_string_table_round_trips_unicode_and_bounds():
    from serving.keyword_store import StringTable
    strings = ["drill", "", "60° elbow", "日本語", "x" * 1000]
    table = StringTable(strings)
    assert len(table) == 5 and list(table) == strings and table[-1] == "x" * 1000
    assert table.encoded(2) == "60° elbow".encode() and table[1:3] == ["", "60° elbow"]
    with pytest.raises(IndexError):
        table[5]
    assert len(StringTable([])) == 0


def test_string_table_encoded_array_matches_one_by_one():
    from serving.keyword_store import StringTable
    strings = ["drill", "", "60° elbow", "日本語", "x" * 1000, "ab", "cd"]
    table = StringTable(strings)
    pos = np.array([[2, 0, 1, 6], [5, 6, 4, 3]])
    got = table.encoded_array(pos)
    assert got.shape == (2, 4) and got.dtype == object
    assert got.tolist() == [[table.encoded(int(i)) for i in row] for row in pos]
    # equal-length bytes stay whole strings (numpy must not unpack them), and empty selections keep their shape
    assert table.encoded_array(np.array([5, 6])).tolist() == [b"ab", b"cd"]
    assert table.encoded_array(np.zeros((3, 0), np.int64)).shape == (3, 0)


def test_id_lookup_survives_hash_collisions(tmp_path, monkeypatch):
    from serving import keyword_store
    monkeypatch.setattr(keyword_store.IdTable, "hash", staticmethod(len))  # every id of a length collides
    path, vectors = make_store(tmp_path, n=200)
    store = KeywordStore(path)
    want = ["kw199", "kw7", "kw10", "kw0"]
    np.testing.assert_array_equal(store.positions(want), [199, 7, 10, 0])
    np.testing.assert_array_equal(store.lookup(want), vectors[[199, 7, 10, 0]])
    with pytest.raises(UnknownKeywordError) as e:
        store.positions(["kw5", "kw999", "zz", "kw3"])
    assert e.value.ids == ["kw999", "zz"]
    assert store.positions([]).shape == (0,)


@pytest.mark.parametrize("index_type, vector_dtype", [("flat", "float32"), ("hnsw", "float16"),
                                                      ("hnsw_sq8", "float16"), ("hnsw_fp16", "float16")])
def test_index_is_memory_mapped_and_pages_in(tmp_path, index_type, vector_dtype):
    path, vectors = make_store(tmp_path, index_type=index_type, vector_dtype=vector_dtype)
    store = KeywordStore(path)
    maps = open("/proc/self/maps").read()
    assert str(path / "index.faiss") in maps  # file-backed: instances serving one version share it
    touched = store.page_in()
    assert touched >= vectors.size * (2 if vector_dtype == "float16" else 4)
    positions, _ = store.search(vectors[[5]], 1)
    assert positions[0][0] == 5
    if index_type == "hnsw_fp16":
        with pytest.raises(ValueError):  # a read-only mapping: never written through
            store._stored[0, 0] = 1


def test_hnsw_fp16_vectors_do_not_drift_across_live_updates(tmp_path):
    """A kept keyword is read back (float16 unit x norm) and written into the next version: the
    stored form must be a fixed point, or every update would move it further."""
    path, vectors = make_store(tmp_path, dim=384, index_type="hnsw_fp16", vector_dtype="float16")
    first = KeywordStore(path).vectors_at(np.arange(200))
    for _ in range(5):
        store = KeywordStore(latest_version(tmp_path))
        path = write_version(tmp_path, list(store.ids), list(store.texts), store.vectors_at(np.arange(200)),
                             IndexSpec("hnsw_fp16"), "enc", vector_dtype="float16")
    last = KeywordStore(path).vectors_at(np.arange(200))
    assert np.abs(last - first).max() <= 1e-5 * np.abs(first).max()  # was 2e-4 with norm = |v|
    assert np.abs(first - vectors).max() <= 2e-3 * np.abs(vectors).max()  # one float16 rounding


def test_hnsw_fp16_view_keeps_its_index_alive_and_large_vectors_are_fine(tmp_path):
    big = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32) * 1e6  # beyond float16
    path = write_version(tmp_path, [f"k{i}" for i in range(50)], ["t"] * 50, big, IndexSpec("hnsw_fp16"), "enc")
    rows = KeywordStore(path)._stored[:10]  # the store itself is gone after this line
    import gc
    gc.collect()
    assert np.isfinite(rows.astype(np.float32)).all() and rows.shape == (10, 16)
    np.testing.assert_allclose(KeywordStore(path).lookup(["k3"])[0], big[3], rtol=2e-3)


def test_ids_and_texts_must_be_valid_unicode(tmp_path):
    with pytest.raises(ValueError, match="keyword id at row 1 is not valid Unicode"):
        write_version(tmp_path, ["a", "b\ud800"], ["x", "y"], np.ones((2, 4), np.float32), IndexSpec("flat"), "enc")
    with pytest.raises(ValueError, match="keyword text at row 0"):
        write_version(tmp_path, ["a", "b"], ["\udfff", "y"], np.ones((2, 4), np.float32), IndexSpec("flat"), "enc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit", [lambda m: m.pop("sha256"), lambda m: m.pop("dim"), None,
                                  lambda m: m.update(dim=str(m["dim"])), lambda m: m.update(count=-1),
                                  lambda m: m.update(sha256=list(m["sha256"])), lambda m: m.update(index_params=3),
                                  lambda m: m.update(vector_dtype="float99")])
def test_a_manifest_missing_fields_is_a_store_error(tmp_path, edit):
    path, _ = make_store(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    if edit is None:
        manifest = ["not", "an", "object"]
    else:
        edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="corrupt manifest"):
        KeywordStore(path)


def test_ids_and_texts_of_the_wrong_kind_are_a_store_error(tmp_path):
    """Only a hand-edited version gets here (the manifest's checksums cover the files): named, not an
    AttributeError from deep inside the id table."""
    path, _ = make_store(tmp_path)
    ids = json.loads((path / "ids.json").read_text())
    (path / "ids.json").write_text(json.dumps([1] + ids[1:]))
    with pytest.raises(StoreError, match="ids.json is not a list of strings"):
        KeywordStore(path, verify=False)
    (path / "ids.json").write_text(json.dumps(ids))
    lines = (path / "texts.jsonl").read_text().splitlines()
    (path / "texts.jsonl").write_text("\n".join(lines[:2] + ["42"] + lines[3:]) + "\n")
    with pytest.raises(StoreError, match=r"texts.jsonl:3: not a JSON string"):
        KeywordStore(path, verify=False)
