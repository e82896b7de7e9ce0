"""Keyword store: FAISS index + id map + cached vectors + texts, as a versioned artifact.

A store root holds integer-named version directories (`1/`, `2/`, ...). Each version holds
  index.faiss     FAISS index over L2-normalised vectors (inner product = cosine)
  ids.json        external string ids; position i is FAISS id i
  vectors.npy     the pooled keyword vectors (un-normalised), for exact crossing: float16 by default
                  (half the memory of float32; crossing scores move by at most 1.1e-4 and the top 10
                  of 100 re-scored candidates stayed the same for 199 of 200 queries:
                  reports/vector_dtype.md), or float32
  norms.npy       instead of vectors.npy for `hnsw_fp16`: that index already holds every vector as
                  float16 (unit length) for its own distance computations, so the cached vectors are
                  read from it (times these float32 norms) and not kept twice in memory
  texts.jsonl     one JSON string per keyword, for display
  manifest.json   format, encoder checksum, dim, count, metric, index type/params, sha256 of files
A version is written under a temporary name and renamed into place, so an interrupted build never
leaves a directory that looks valid; `load` verifies every checksum in the manifest.
"""
from __future__ import annotations

import json
import operator
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from training.artifacts import replace_dir, sha256_file  # noqa: F401  (re-exported: store users import them here)

FORMAT = "twinbert-keyword-store/1"
INDEX_TYPES = ("flat", "hnsw", "hnsw_sq8", "hnsw_fp16")
# Index types whose storage doubles as the cached float16 vectors (see norms.npy above).
SHARED_VECTOR_INDEX_TYPES = ("hnsw_fp16",)
# The indexer's default: at 55k titles the same recall@100 as float32 storage (0.9850 vs 0.9851) in
# half the memory, and at a million keywords the one type within 1.5 GB at recall 0.95
# (reports/bench_store.md), so demo, CI and production run the same path.
DEFAULT_INDEX_TYPE = "hnsw_fp16"
VECTOR_DTYPES = ("float16", "float32")
DEFAULT_VECTOR_DTYPE = "float16"
MAX_TOP_K = 1000


def data_files(index_type: str) -> tuple[str, ...]:
    vectors = "norms.npy" if index_type in SHARED_VECTOR_INDEX_TYPES else "vectors.npy"
    return ("index.faiss", "ids.json", vectors, "texts.jsonl")


class StoreError(RuntimeError):
    """A store version is missing, corrupt or incompatible."""


class UnknownKeywordError(KeyError):
    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids

    def __str__(self) -> str:
        shown = ", ".join(repr(i) for i in self.ids[:10])
        more = f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else ""
        return f"unknown keyword id(s): {shown}{more}"


def _json_strings(lines, path: Path):
    for n, line in enumerate(lines, 1):
        text = json.loads(line)
        if not isinstance(text, str):
            raise StoreError(f"{path}:{n}: not a JSON string")
        yield text


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


@dataclass(frozen=True)
class IndexSpec:
    index_type: str = DEFAULT_INDEX_TYPE
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def params(self) -> dict:
        if self.index_type.startswith("hnsw"):
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction, "efSearch": self.ef_search}
        return {}


def check_vector_dtype(index_type: str, vector_dtype: str) -> None:
    """Refuse a cached-vector dtype the index type cannot keep (the indexer asks before embedding)."""
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector_dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
    if index_type in SHARED_VECTOR_INDEX_TYPES and vector_dtype != "float16":
        raise ValueError(f"index type {index_type} keeps the cached vectors in the index as float16; "
                         f"use vector_dtype float16, or another index type for {vector_dtype}")


def fp16_unit_and_norm(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hnsw_fp16's form of the cached vectors: float16 unit directions u and float32 scales n with
    n * u as close to v as the rounding allows (n = v.u / u.u, not |v|). A kept keyword, read back
    as n * u and stored again by a live update, gets the same u and n: no drift across versions."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    unit16 = _normalized(vectors).astype(np.float16)
    u = unit16.astype(np.float32)
    norms = (vectors * u).sum(axis=1) / np.maximum((u * u).sum(axis=1), 1e-12)
    return unit16, norms.astype(np.float32)


def build_index(vectors: np.ndarray, spec: IndexSpec, prepared: np.ndarray | None = None) -> faiss.Index:
    """Index over the L2-normalised `vectors`; `prepared`, when given, is added instead (hnsw_fp16's
    float16 unit vectors as float32, so the index stores exactly the codes the norms were fitted to)."""
    if spec.index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {spec.index_type!r}")
    dim = vectors.shape[1]
    if spec.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.index_type in ("hnsw_sq8", "hnsw_fp16"):  # scalar-quantised storage: 1/4 or 1/2 of fp32
        qtype = faiss.ScalarQuantizer.QT_8bit if spec.index_type == "hnsw_sq8" else faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexHNSWSQ(dim, qtype, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        unit = _normalized(vectors) if prepared is None else np.ascontiguousarray(prepared, dtype=np.float32)
        index.train(unit)
        index.add(unit)
        return index
    else:
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    index.add(_normalized(vectors))
    return index


RECALL_SAMPLE = 200  # keywords used as queries for the recall check of every build


def ann_recall(index: faiss.Index, vectors: np.ndarray, k: int = 100, sample: int = RECALL_SAMPLE,
               seed: int = 0, chunk: int = 65536) -> float:
    """recall@k of `index` against exact inner product over the normalised `vectors`, with a seeded
    sample of the keywords themselves as queries (a keyword corpus comes without a query log). The
    exact search runs chunk by chunk, so it needs no second copy of the vectors."""
    n = len(vectors)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    queries = _normalized(vectors[rng.choice(n, min(sample, n), replace=False)])
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for s in range(0, n, chunk):
        block = queries @ _normalized(vectors[s:s + chunk]).T
        scores = np.concatenate([best_scores, block], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(s, s + block.shape[1]), block.shape)], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, axis=1)
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, best_ids)]))


def next_version(root: str | Path) -> int:
    root = Path(root)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def write_version(root: str | Path, ids: list[str], texts: list[str], vectors: np.ndarray,
                  spec: IndexSpec, encoder_sha256: str, version: int | None = None,
                  extra: dict | None = None, vector_dtype: str = DEFAULT_VECTOR_DTYPE) -> Path:
    """Build the index and write a new version atomically; returns its directory. The index is built
    from the float32 vectors; `vector_dtype` is how the cached copy for exact crossing is stored."""
    check_vector_dtype(spec.index_type, vector_dtype)
    shared = spec.index_type in SHARED_VECTOR_INDEX_TYPES
    if len(ids) != len(texts) or len(ids) != len(vectors):
        raise ValueError(f"ids ({len(ids)}), texts ({len(texts)}) and vectors ({len(vectors)}) differ in length")
    if len(set(ids)) != len(ids):
        raise ValueError("keyword ids must be unique")
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty [N, D] array, got shape {vectors.shape}")
    for kind, strings in (("id", ids), ("text", texts)):
        for i, value in enumerate(strings):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"keyword {kind} at row {i} is not valid Unicode ({e.reason}): {value!r}") from None
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    if shared:
        unit16, norms = fp16_unit_and_norm(vectors)
    else:
        with np.errstate(over="ignore"):  # overflow is reported below, with what to do about it
            stored = np.ascontiguousarray(vectors, dtype=vector_dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"vectors are beyond the range of {vector_dtype}; store them as float32")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or next_version(root)
    final = root / str(version)
    if final.exists():
        raise StoreError(f"{final} already exists; versions are immutable")
    tmp = root / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        index = build_index(vectors, spec, unit16.astype(np.float32) if shared else None)
        build_s = time.perf_counter() - start
        recall = 1.0 if spec.index_type == "flat" else round(ann_recall(index, vectors), 4)
        faiss.write_index(index, str(tmp / "index.faiss"))
        (tmp / "ids.json").write_text(json.dumps(list(ids)))
        if shared:
            np.save(tmp / "norms.npy", norms)
        else:
            np.save(tmp / "vectors.npy", stored)
        with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps(t, ensure_ascii=False) + "\n")
        manifest = {
            "format": FORMAT, "version": version, "count": len(ids), "dim": int(vectors.shape[1]),
            "metric": "cos", "index_type": spec.index_type, "index_params": spec.params(),
            "vector_dtype": vector_dtype, "encoder_sha256": encoder_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(build_s, 3),
            # ANN top-100 against exact search, the index's efSearch, keywords as queries (ann_recall)
            "recall_at_100": recall, "recall_queries": min(RECALL_SAMPLE, len(ids)), **(extra or {}),
            "sha256": {name: sha256_file(tmp / name) for name in data_files(spec.index_type)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_version(root: str | Path) -> Path:
    root = Path(root)
    versions = sorted((int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()),
                      reverse=True) if root.is_dir() else []
    if not versions:
        raise StoreError(f"no keyword store version under {root}; build one with `python -m training.index`")
    return root / str(versions[0])


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Cached-vector rows as float32 (float16 through torch's F16C conversion: ~5x numpy's astype)."""
    if rows.dtype == np.float32:
        return np.asarray(rows)
    return torch.from_numpy(np.ascontiguousarray(rows)).float().numpy()


class StringTable(Sequence[str]):
    """Read-only strings packed into one UTF-8 buffer with offsets. A million keyword ids or titles
    as a list of str costs ~60 bytes of object header each, plus an int and a dict entry per id for
    the reverse map; here each costs its bytes plus 8 (reports/bench_store.md measures the store)."""

    def __init__(self, strings: Iterable[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=self._offsets[1:])
        self._buffer = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def encoded(self, i: int) -> bytes:
        return self._buffer[self._offsets[i]:self._offsets[i + 1]]

    def _encoded_many(self, positions: np.ndarray) -> list[bytes]:
        """The UTF-8 bytes at 1-D `positions` (each in range): the offsets gathered in one numpy step,
        not one scalar lookup per string (100 strings: 35 us against 110-135 us)."""
        buf = self._buffer
        return [buf[a:b] for a, b in zip(self._offsets[positions].tolist(), self._offsets[positions + 1].tolist())]

    def encoded_array(self, positions: np.ndarray) -> np.ndarray:
        """The UTF-8 bytes at `positions` (any shape, each in range) as an object array of that shape."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(positions.shape, dtype=object)
        if positions.size:
            out.ravel()[:] = self._encoded_many(positions.ravel())
        return out

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"position {i} out of range for {len(self)} strings")
        return self.encoded(i).decode("utf-8")


class IdTable(StringTable):
    """Unique keyword ids, and id -> store position without a dict: the ids' hashes sorted once,
    binary-searched per lookup, and every hit confirmed against the id itself (a hash collision is
    never a match)."""

    hash = staticmethod(hash)  # per process, like the table built from it

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        hashes = np.fromiter(map(self.hash, ids), dtype=np.int64, count=len(ids))
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]

    def find(self, keyword_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """-> (positions, with -1 for unknown ids; the unknown ids in request order)."""
        if not keyword_ids:
            return np.empty(0, dtype=np.int64), []
        h = np.fromiter(map(self.hash, keyword_ids), dtype=np.int64, count=len(keyword_ids))
        at = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)  # a store is never empty
        pos, hit = self._order[at], self._hashes[at] == h
        # Vectorised common case: the first entry with the id's hash is the id itself.
        out = np.where(hit, pos, -1)
        unknown = []
        for i, (kid, ok, have) in enumerate(zip(keyword_ids, hit.tolist(), self._encoded_many(pos))):
            if ok and have == kid.encode("utf-8"):
                continue
            out[i] = self._scan(kid, int(h[i]), int(at[i])) if ok else -1
            if out[i] < 0:
                unknown.append(kid)
        return out, unknown

    def _scan(self, kid: str, h: int, j: int) -> int:
        """The rare case: other ids share this hash; look at each of them."""
        want = kid.encode("utf-8")
        while j < len(self._hashes) and self._hashes[j] == h:
            pos = int(self._order[j])
            if self.encoded(pos) == want:
                return pos
            j += 1
        return -1


class _IndexBacked(np.ndarray):
    """An array over memory owned by a FAISS index, holding that index alive."""


def _fp16_storage_view(index: faiss.Index, n: int, dim: int) -> np.ndarray:
    """The float16 codes of an HNSW-SQ(fp16) index as an [n, dim] array, without a copy: valid for
    as long as the index lives (the store keeps both)."""
    storage = faiss.downcast_index(index.storage)
    if not isinstance(storage, faiss.IndexScalarQuantizer) or storage.sq.qtype != faiss.ScalarQuantizer.QT_fp16:
        raise StoreError("an hnsw_fp16 index must store float16 codes")
    if storage.code_size != 2 * dim or storage.ntotal != n:
        raise StoreError(f"index storage holds {storage.ntotal} codes of {storage.code_size} bytes, "
                         f"expected {n} of {2 * dim}")
    view = faiss.rev_swig_ptr(storage.codes.data(), n * storage.code_size).view(np.float16).reshape(n, dim)
    pinned = view.view(_IndexBacked)
    pinned.index = index  # every slice's base chain leads here: the memory lives as long as any view
    pinned.flags.writeable = False  # a read-only mapping of index.faiss
    return pinned


class KeywordStore:
    """A loaded, verified store version: ANN search and lookup of cached vectors by id."""

    def __init__(self, version_dir: str | Path, expect_encoder_sha256: str | None = None,
                 expect_dim: int | None = None, verify: bool = True, load_index: bool = True,
                 load_texts: bool = True):
        self.path = Path(version_dir)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise StoreError(f"{self.path}: no manifest.json (not a keyword store version)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{manifest_path}: corrupt manifest ({e})") from e
        if not isinstance(self.manifest, dict):
            raise StoreError(f"{manifest_path}: corrupt manifest (not a JSON object)")
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        absent = [k for k in ("sha256", "encoder_sha256", "dim", "count") if k not in self.manifest]
        if absent:
            raise StoreError(f"{manifest_path}: corrupt manifest (no {', '.join(absent)})")
        m = self.manifest
        mistyped = [k for k, ok in (
            ("sha256", isinstance(m["sha256"], dict) and all(isinstance(v, str) for v in m["sha256"].values())),
            ("encoder_sha256", isinstance(m["encoder_sha256"], str)),
            ("dim", type(m["dim"]) is int and m["dim"] > 0), ("count", type(m["count"]) is int and m["count"] >= 0),
            ("index_params", isinstance(m.get("index_params", {}), dict)),
            ("vector_dtype", m.get("vector_dtype", "float32") in VECTOR_DTYPES)) if not ok]
        if mistyped:
            raise StoreError(f"{manifest_path}: corrupt manifest ({', '.join(mistyped)} of the wrong type or value)")
        index_type = self.manifest.get("index_type")
        if index_type not in INDEX_TYPES:
            raise StoreError(f"{self.path}: unknown index type {index_type!r} (this server knows {INDEX_TYPES})")
        shared = index_type in SHARED_VECTOR_INDEX_TYPES
        if verify:
            for name in data_files(index_type):
                path = self.path / name
                if not path.is_file():
                    raise StoreError(f"{self.path}: missing {name}")
                if sha256_file(path) != self.manifest["sha256"].get(name):
                    raise StoreError(f"{path}: checksum mismatch (file corrupt or changed after build)")
        if expect_encoder_sha256 and self.manifest["encoder_sha256"] != expect_encoder_sha256:
            raise StoreError(f"{self.path}: built with encoder {self.manifest['encoder_sha256'][:12]}, "
                             f"but the served encoder is {expect_encoder_sha256[:12]}; rebuild the index")
        if expect_dim is not None and self.manifest["dim"] != expect_dim:
            raise StoreError(f"{self.path}: dimension {self.manifest['dim']}, the served model needs {expect_dim}")
        n, dim = self.manifest["count"], self.manifest["dim"]
        # An index whose storage holds the cached vectors is needed even when search is not. The index
        # is memory-mapped (its codes and graph stay file-backed pages): instances of the serving model
        # that load the same version share one copy, and the checksum pass above has just read the
        # file into the page cache.
        self.index = (faiss.read_index(str(self.path / "index.faiss"), faiss.IO_FLAG_MMAP_IFC)
                      if load_index or shared else None)
        if self.index is not None and not (self.index.ntotal == n and self.index.d == dim):
            raise StoreError(f"{self.path}: the index holds {self.index.ntotal} x {self.index.d}, "
                             f"the manifest says {n} x {dim}")
        self.texts: StringTable | None = None  # only for display: a lookup-only model can skip them
        try:
            ids = json.loads((self.path / "ids.json").read_text(encoding="utf-8"))
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise StoreError(f"{self.path}: ids.json is not a list of strings")
            self.ids = IdTable(ids)
            if load_texts:
                with open(self.path / "texts.jsonl", encoding="utf-8") as f:
                    self.texts = StringTable(_json_strings(f, self.path / "texts.jsonl"))  # streamed: 1M texts
        except (UnicodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.path}: an id or text is unreadable ({e}); rebuild the store") from None
        del ids
        # _stored: the rows as stored, vectors.npy (memory-mapped), or for hnsw_fp16 the index's float16
        # unit directions, which times `norms` are the cached vectors. Read them through vectors_at.
        self._searchable = load_index
        if shared:
            self.norms: np.ndarray | None = np.load(self.path / "norms.npy")
            self._stored = _fp16_storage_view(self.index, n, dim)
            if self.norms.shape != (n,):
                raise StoreError(f"{self.path}: norms.npy has shape {self.norms.shape}, expected ({n},)")
        else:
            self.norms = None
            self._stored = np.load(self.path / "vectors.npy", mmap_mode="r")
        if self._stored.dtype != np.dtype(self.manifest.get("vector_dtype", "float32")):
            source = "the index's storage" if shared else "vectors.npy"
            raise StoreError(f"{self.path}: {source} holds {self._stored.dtype}, the manifest says "
                             f"{self.manifest.get('vector_dtype')}")
        texts_n = n if self.texts is None else len(self.texts)
        if not len(self.ids) == texts_n == len(self._stored) == n or self._stored.shape[1] != dim:
            raise StoreError(f"{self.path}: index, ids, texts and vectors disagree with the manifest")
        if self.index is not None and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = self.manifest.get("index_params", {}).get("efSearch", 128)

    def page_in(self) -> int:
        """Read one byte of every page of the memory-mapped data (the index's codes and graph, and
        vectors.npy): what traffic over every keyword would fault in. Returns the bytes covered."""
        buffers = []
        if self.index is not None:
            hnsw = getattr(self.index, "hnsw", None)
            storage = faiss.downcast_index(self.index.storage) if hnsw is not None else self.index
            buffers.append(faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size()))
            if self._searchable and hnsw is not None and hnsw.neighbors.size():  # the graph only serves search
                buffers.append(faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size()).view(np.uint8))
        if self.norms is None:
            buffers.append(np.asarray(self._stored).reshape(-1).view(np.uint8))
        for buf in buffers:
            int(buf[::4096].sum(dtype=np.int64))
        return sum(b.nbytes for b in buffers)

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[int]], np.ndarray]:
        """Top-k by cosine for [B, D] query vectors -> (positions per row, scores [B, k])."""
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [B, {self.dim}], got {list(queries.shape)}")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors contain NaN or infinity")
        scores, pos = self.index.search(_normalized(queries), min(k, len(self)))
        return [[int(p) for p in row if p >= 0] for row in pos], scores

    @property
    def vector_dtype(self) -> str:
        return str(self._stored.dtype)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        rows = as_float32(self._stored[positions])
        if self.norms is not None:
            rows *= self.norms[positions, None]
        return rows

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """Cached vectors (fp32) at store positions of any shape -> [..., D]."""
        return self._rows(positions.reshape(-1)).reshape(*positions.shape, self.dim)

    def positions(self, keyword_ids: list[str]) -> np.ndarray:
        """Store positions of external ids; unknown ids raise UnknownKeywordError naming them."""
        found, unknown = self.ids.find(list(keyword_ids))
        if unknown:
            raise UnknownKeywordError(unknown)
        return found

    def lookup(self, keyword_ids: list[str]) -> np.ndarray:
        """Cached vectors [K, D] (fp32) for external ids; unknown ids raise UnknownKeywordError."""
        return self._rows(self.positions(keyword_ids))
