"""Keyword store: FAISS index + id map + cached vectors + texts, as a versioned artifact.

A store root holds integer-named version directories (`1/`, `2/`, ...). Each version holds
  index.faiss     FAISS index over L2-normalised vectors (inner product = cosine)
  ids.json        external string ids; position i is FAISS id i
  vectors.npy     the pooled keyword vectors (un-normalised), for exact crossing: float16 by default
                  (half the memory of float32; crossing scores move by at most 1.1e-4 and the top 10
                  of 100 re-scored candidates stayed the same for 199 of 200 queries:
                  reports/vector_dtype.md), or float32
  texts.jsonl     one JSON string per keyword, for display
  manifest.json   format, encoder checksum, dim, count, metric, index type/params, sha256 of files
A version is written under a temporary name and renamed into place, so an interrupted build never
leaves a directory that looks valid; `load` verifies every checksum in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

FORMAT = "twinbert-keyword-store/1"
INDEX_TYPES = ("flat", "hnsw", "hnsw_sq8")
VECTOR_DTYPES = ("float16", "float32")
DEFAULT_VECTOR_DTYPE = "float16"
MAX_TOP_K = 1000
_DATA_FILES = ("index.faiss", "ids.json", "vectors.npy", "texts.jsonl")


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


@dataclass(frozen=True)
class IndexSpec:
    index_type: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def params(self) -> dict:
        if self.index_type in ("hnsw", "hnsw_sq8"):
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction, "efSearch": self.ef_search}
        return {}


def build_index(vectors: np.ndarray, spec: IndexSpec) -> faiss.Index:
    if spec.index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {spec.index_type!r}")
    dim = vectors.shape[1]
    if spec.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.index_type == "hnsw_sq8":  # 8-bit scalar-quantised storage: 1/4 of fp32 memory
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        unit = _normalized(vectors)
        index.train(unit)
        index.add(unit)
        return index
    else:
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    index.add(_normalized(vectors))
    return index


def next_version(root: str | Path) -> int:
    root = Path(root)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def write_version(root: str | Path, ids: list[str], texts: list[str], vectors: np.ndarray,
                  spec: IndexSpec, encoder_sha256: str, version: int | None = None,
                  extra: dict | None = None, vector_dtype: str = DEFAULT_VECTOR_DTYPE) -> Path:
    """Build the index and write a new version atomically; returns its directory. The index is built
    from the float32 vectors; `vector_dtype` is how the cached copy for exact crossing is stored."""
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector_dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
    if len(ids) != len(texts) or len(ids) != len(vectors):
        raise ValueError(f"ids ({len(ids)}), texts ({len(texts)}) and vectors ({len(vectors)}) differ in length")
    if len(set(ids)) != len(ids):
        raise ValueError("keyword ids must be unique")
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty [N, D] array, got shape {vectors.shape}")
    with np.errstate(over="ignore"):  # overflow is reported below, with what to do about it
        stored = np.ascontiguousarray(vectors, dtype=vector_dtype)
    if not np.isfinite(stored).all():
        raise ValueError(f"vectors are not finite as {vector_dtype} (NaN, or beyond its range); "
                         "store them as float32")
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
        index = build_index(vectors, spec)
        build_s = time.perf_counter() - start
        faiss.write_index(index, str(tmp / "index.faiss"))
        (tmp / "ids.json").write_text(json.dumps(list(ids)))
        np.save(tmp / "vectors.npy", stored)
        with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps(t, ensure_ascii=False) + "\n")
        manifest = {
            "format": FORMAT, "version": version, "count": len(ids), "dim": int(vectors.shape[1]),
            "metric": "cos", "index_type": spec.index_type, "index_params": spec.params(),
            "vector_dtype": vector_dtype, "encoder_sha256": encoder_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(build_s, 3), **(extra or {}),
            "sha256": {name: sha256_file(tmp / name) for name in _DATA_FILES},
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


class KeywordStore:
    """A loaded, verified store version: ANN search and lookup of cached vectors by id."""

    def __init__(self, version_dir: str | Path, expect_encoder_sha256: str | None = None,
                 expect_dim: int | None = None, verify: bool = True, load_index: bool = True):
        self.path = Path(version_dir)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise StoreError(f"{self.path}: no manifest.json (not a keyword store version)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{manifest_path}: corrupt manifest ({e})") from e
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        if verify:
            for name in _DATA_FILES:
                path = self.path / name
                if not path.is_file():
                    raise StoreError(f"{self.path}: missing {name}")
                if sha256_file(path) != self.manifest["sha256"][name]:
                    raise StoreError(f"{path}: checksum mismatch (file corrupt or changed after build)")
        if expect_encoder_sha256 and self.manifest["encoder_sha256"] != expect_encoder_sha256:
            raise StoreError(f"{self.path}: built with encoder {self.manifest['encoder_sha256'][:12]}, "
                             f"but the served encoder is {expect_encoder_sha256[:12]}; rebuild the index")
        if expect_dim is not None and self.manifest["dim"] != expect_dim:
            raise StoreError(f"{self.path}: dimension {self.manifest['dim']}, the served model needs {expect_dim}")
        self.index = faiss.read_index(str(self.path / "index.faiss")) if load_index else None
        self.ids: list[str] = json.loads((self.path / "ids.json").read_text())
        self.vectors = np.load(self.path / "vectors.npy", mmap_mode="r")
        with open(self.path / "texts.jsonl", encoding="utf-8") as f:
            self.texts: list[str] = [json.loads(line) for line in f]
        n, dim = self.manifest["count"], self.manifest["dim"]
        if self.vectors.dtype != np.dtype(self.manifest.get("vector_dtype", "float32")):
            raise StoreError(f"{self.path}: vectors.npy holds {self.vectors.dtype}, the manifest says "
                             f"{self.manifest.get('vector_dtype')}")
        index_ok = self.index is None or (self.index.ntotal == n and self.index.d == dim)
        if not (index_ok and len(self.ids) == len(self.texts) == len(self.vectors) == n) or self.vectors.shape[1] != dim:
            raise StoreError(f"{self.path}: index, ids, texts and vectors disagree with the manifest")
        self.position = {kid: i for i, kid in enumerate(self.ids)}
        if self.index is not None and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = self.manifest["index_params"].get("efSearch", 128)

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
        return str(self.vectors.dtype)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        return as_float32(self.vectors[positions])

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """Cached vectors (fp32) at store positions of any shape -> [..., D]."""
        return self._rows(positions.reshape(-1)).reshape(*positions.shape, self.dim)

    def positions(self, keyword_ids: list[str]) -> np.ndarray:
        unknown = [kid for kid in keyword_ids if kid not in self.position]
        if unknown:
            raise UnknownKeywordError(unknown)
        return np.asarray([self.position[kid] for kid in keyword_ids], dtype=np.int64)

    def lookup(self, keyword_ids: list[str]) -> np.ndarray:
        """Cached vectors [K, D] (fp32) for external ids; unknown ids raise UnknownKeywordError."""
        return self._rows(self.positions(keyword_ids))
