"""Offline keyword indexer: embed a keyword corpus with the exported keyword encoder and write
a new keyword-store version (see serving/keyword_store.py for the layout).

Corpus: the Home Depot titles (default, from --data / $TWINBERT_DATA), or --corpus FILE with
columns `id,text` (CSV with a header) or one JSON object {"id": ..., "text": ...} per line (JSONL);
`read_corpus` says what each may hold.

    python -m training.index --export artifacts/export --store artifacts/keyword_store [--index-type hnsw_fp16]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from serving.keyword_store import (DEFAULT_INDEX_TYPE, DEFAULT_VECTOR_DTYPE, INDEX_TYPES, VECTOR_DTYPES, IndexSpec,
                                   check_vector_dtype, sha256_file, write_version)
from training.artifacts import ArtifactError, int_field, load_torchscript, read_json_object, verify_checksums
from training.data import keyword_corpus, load_pairs, repair_text
from training.textfiles import csv_records, first_id, jsonl_objects, need_file, utf8_lines
from training.tokenize import WordPiece
from training.cli import one_line_errors, positive_int


def read_corpus(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a keyword corpus: `id,text` CSV (a header naming both, other columns ignored, RFC
    4180 quoting) or one JSON object {"id", "text"} per line (.jsonl/.json, or another suffix whose
    first line is an object). UTF-8, a byte-order mark allowed. Ids are strings or integers, stripped,
    each once; texts are non-blank strings, whitespace collapsed and Home Depot's known mojibake
    repaired (training.data.repair_text). Any other row is an error naming the
    file and line."""
    path = need_file(path)
    lines = utf8_lines(path)
    first = next(lines, "")
    suffix = path.suffix.lower()
    rows: list[tuple[str, str, str]] = []  # (path:line, id, text)
    if suffix in (".jsonl", ".json") or (suffix != ".csv" and first.lstrip().startswith("{")):
        for where, kid, obj in jsonl_objects(path, ("id", "text"), "id", itertools.chain([first], lines)):
            if not isinstance(obj["text"], str):
                raise ValueError(f"{where}: \"text\" must be a string, got {obj['text']!r}")
            rows.append((where, kid, obj["text"]))
    else:
        seen: dict[str, int] = {}
        for where, n, (kid, text) in csv_records(path, itertools.chain([first], lines), ("id", "text"), strict=True):
            rows.append((where, first_id(seen, kid, where, n, "id", label="id"), text))
    ids, texts = [], []
    for where, kid, text in rows:
        text = repair_text(text)  # as load_pairs does: a Home Depot dump indexes as its titles do
        if not text:
            raise ValueError(f"{where}: blank text")
        ids.append(kid)
        texts.append(text)
    if not ids:
        raise ValueError(f"{path}: no keywords")
    return ids, texts


# Batches of 64 length-sorted titles beat 256 on 2 cores (smaller activations stay in cache):
# `make bench-store` measures both over all real titles, reports/bench_store.md.
DEFAULT_BATCH_SIZE = 64


def embed_texts(encoder, tokenizer: WordPiece, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE,
                progress: bool = True, desc: str = "embed keywords") -> np.ndarray:
    """Pooled vectors [N, D] in input order; batches sorted by length and trimmed of padding, which gives the
    full-width vectors to float rounding (about 1e-6). Each distinct text is embedded once, so ids that share
    a text (2,095 of the Home Depot corpus ids) get one vector and tie exactly whatever batch they fall in.
    `encoder(ids, mask)` is any module or function that pools token ids into vectors."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        raise ValueError("nothing to embed: no texts")
    ids, mask = tokenizer(distinct)
    lengths = mask.sum(1)
    order = np.argsort(-lengths, kind="stable")
    out: np.ndarray | None = None
    with torch.inference_mode():
        for start in tqdm(range(0, len(distinct), batch_size), desc=desc, unit="batch", disable=not progress):
            sel = order[start:start + batch_size]
            width = int(lengths[sel].max())
            vec = encoder(torch.from_numpy(ids[sel, :width]), torch.from_numpy(mask[sel, :width])).float().numpy()
            if out is None:
                out = np.empty((len(distinct), vec.shape[1]), dtype=np.float32)
            out[sel] = vec
    if len(distinct) == len(texts):
        return out
    row = {t: i for i, t in enumerate(distinct)}
    return out[[row[t] for t in texts]]


def load_keyword_encoder(export_dir: str | Path) -> tuple[torch.jit.ScriptModule, WordPiece]:
    """The exported keyword encoder and its tokenizer (keyword_max_len), as every indexer uses them."""
    export_dir = Path(export_dir)
    encoder_path = export_dir / "keyword_encoder.pt"
    if not encoder_path.is_file():
        raise FileNotFoundError(f"{encoder_path} not found; run `python -m training.export` first")
    made = verify_checksums(export_dir, "export.json",
                            ["keyword_encoder.pt", "tokenizer.json", "tokenizer_config.json"])
    config = export_dir / "tokenizer_config.json"
    max_len = int_field(read_json_object(config), "keyword_max_len", config, 2)
    from kernels import cpu_native
    # exports before format 2 traced the C++ pooling op into keyword_encoder.pt: it loads only with it
    if not cpu_native.load() and made.get("format", 1) < 2:
        raise ArtifactError(f"{encoder_path} was exported before format 2 and needs the C++ pool_cross op, "
                            f"which is unavailable here ({cpu_native.error()}); export it again")
    return load_torchscript(encoder_path).eval(), WordPiece(export_dir / "tokenizer.json", max_len)


def build(export_dir: str | Path, store_root: str | Path, ids: list[str], texts: list[str],
          spec: IndexSpec, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
          vector_dtype: str = DEFAULT_VECTOR_DTYPE) -> Path:
    export_dir = Path(export_dir)
    check_vector_dtype(spec.index_type, vector_dtype)  # before minutes of embedding
    encoder, tokenizer = load_keyword_encoder(export_dir)
    start = time.perf_counter()
    vectors = embed_texts(encoder, tokenizer, texts, batch_size, progress)
    embed_s = time.perf_counter() - start
    # The served encoder is the query encoder; tie the store to the whole export it came from.
    export_sha = sha256_file(export_dir / "export.json")
    version = write_version(store_root, ids, texts, vectors, spec, export_sha, vector_dtype=vector_dtype,
                            extra={"embed_seconds": round(embed_s, 3),
                                   "keywords_per_second": round(len(texts) / embed_s, 1)})
    manifest = json.loads((version / "manifest.json").read_text())
    print(f"index: {len(ids)} keywords, dim {manifest['dim']}, {spec.index_type}, embedded at "
          f"{manifest['keywords_per_second']:.0f}/s, index built in {manifest['build_seconds']:.1f}s, "
          f"recall@100 {manifest['recall_at_100']:.4f} against exact search ({manifest['recall_queries']} "
          f"keywords as queries) -> {version}", flush=True)
    return version


@one_line_errors("index")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="export directory from training.export")
    ap.add_argument("--store", required=True, help="keyword store root; a new version is added")
    ap.add_argument("--corpus", help="id,text CSV or JSONL (default: Home Depot titles)")
    ap.add_argument("--data", help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--index-type", choices=INDEX_TYPES, default=DEFAULT_INDEX_TYPE,
                    help="flat: exact; hnsw: float32 storage; hnsw_fp16 (default): float16 storage that is "
                         "also the cached vectors (1M: 1.34 GB, recall@100 0.951 at efSearch 192, "
                         "reports/bench_store.md); hnsw_sq8: 8-bit storage plus vectors.npy")
    ap.add_argument("--hnsw-m", type=positive_int, default=32)
    ap.add_argument("--ef-construction", type=positive_int, default=80)
    ap.add_argument("--ef-search", type=positive_int, default=128, help="HNSW search breadth stored in the manifest "
                    "(default %(default)s; 192 for hnsw_fp16 at a million keywords)")
    ap.add_argument("--vector-dtype", choices=VECTOR_DTYPES, default=DEFAULT_VECTOR_DTYPE,
                    help="how the cached vectors for exact crossing are stored (default %(default)s: half "
                         "the memory, scores within 1.1e-4 of float32)")
    ap.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.corpus:
            ids, texts = read_corpus(args.corpus)
        else:
            corpus = keyword_corpus(load_pairs(args.data))
            ids, texts = list(corpus), list(corpus.values())
    except (ValueError, OSError) as e:  # the file's line and problem, not a traceback (DataError: the decorator)
        raise SystemExit(f"index: {e}") from None
    spec = IndexSpec(args.index_type, args.hnsw_m, args.ef_construction, args.ef_search)
    build(args.export, args.store, ids, texts, spec, args.batch_size, vector_dtype=args.vector_dtype)


if __name__ == "__main__":
    main()
