"""Live keyword updates: add, replace and delete keywords while the server keeps answering.

1. A new store version is built from the latest one: unchanged keywords keep their cached vectors,
   added or replaced ones are embedded with the exported keyword encoder, deleted ones are dropped,
   and the ANN index is rebuilt (training.index's writer: atomic, checksummed).
2. It is published as a new Triton version of `keyword_store` and `keyword_vectors` (a directory
   renamed into place), loaded through the model-control API (server started with
   --model-control-mode=explicit) beside the old one, and the ensembles are switched over to it
   whole (serving/rollout.py): no request fails. If the new version fails to load, it is removed
   and the old one stays.

    python -m serving.update_store --export artifacts/export --store artifacts/keyword_store \\
        --repository artifacts/model_repository [--add FILE] [--delete FILE] [--url 127.0.0.1:8001]

--add takes `id,text` CSV or JSONL (an existing id is replaced); --delete a file of ids, one per line.
A whole catalogue is replaced the same way (--delete every served id, --add the new keywords).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from serving.keyword_store import (IndexSpec, KeywordStore, StoreError, UnknownKeywordError, latest_version,
                                   sha256_file, write_version)
from serving.repository import STORE_MODELS, served_version
from serving.rollout import RolloutError, publish_versions, recover
from training.textfiles import need_file, utf8_lines


def build_updated_version(export_dir: str | Path, store_root: str | Path, add: dict[str, str] | None = None,
                          delete: set[str] | None = None, spec: IndexSpec | None = None,
                          progress: bool = False) -> Path:
    from training.index import embed_texts, load_keyword_encoder
    add, delete = dict(add or {}), set(delete or ())
    both = sorted(set(add) & delete)
    if both:  # which one was meant? Neither is guessed.
        raise ValueError(f"{len(both)} keyword id(s) are both added and deleted, e.g. {both[:5]}")
    base_dir = latest_version(store_root)
    encoder_sha = sha256_file(Path(export_dir) / "export.json")
    # A base built with another encoder is refused here, before anything is embedded.
    base = KeywordStore(base_dir, expect_encoder_sha256=encoder_sha, load_index=False)
    base.positions(sorted(delete))  # UnknownKeywordError names the ids that are not in the store
    keep = [i for i, kid in enumerate(base.ids) if kid not in delete and kid not in add]
    if not keep and not add:
        raise ValueError(f"the update deletes all {len(base)} keywords and adds none; a store cannot be empty")
    ids = [base.ids[i] for i in keep] + list(add)
    texts = [base.texts[i] for i in keep] + list(add.values())
    # Kept keywords reuse their cached vectors (float16-rounded when the store keeps float16: their
    # index entries move by ~1e-4 in cosine, far below what separates neighbours).
    vectors = base.vectors_at(np.asarray(keep, dtype=np.int64))
    if add:
        encoder, tok = load_keyword_encoder(export_dir)
        vectors = np.concatenate([vectors, embed_texts(encoder, tok, list(add.values()), progress=progress)])
    m = base.manifest
    spec = spec or IndexSpec(m["index_type"], **{k: v for k, v in {
        "hnsw_m": m["index_params"].get("M"), "ef_construction": m["index_params"].get("efConstruction"),
        "ef_search": m["index_params"].get("efSearch")}.items() if v is not None})
    return write_version(store_root, ids, texts, vectors, spec, encoder_sha, vector_dtype=base.vector_dtype,
                         extra={"base_version": m["version"], "added_or_replaced": len(add), "deleted": len(delete)})


def publish(repository: str | Path, store_version: str | Path, url: str, timeout_s: float = 120.0) -> int:
    """Publish `store_version` as the next Triton version of the store models and swap the ensembles
    over to it (serving/rollout.py); the other files of their versions (the encoder's) carry over."""
    repo, store_version = Path(repository), Path(store_version)
    KeywordStore(store_version, load_index=False)  # refuse a corrupt version before touching the server
    try:
        recover(repo, url, timeout_s)  # an earlier swap cut off would have this read the wrong served files
        files = {}
        for model in STORE_MODELS:
            current = served_version(repo, model)
            entries = {f.name: f for f in current.iterdir() if f.is_file()}
            entries.update({f"store/{f.name}": f for f in store_version.iterdir()})
            files[model] = entries
        new = publish_versions(repo, files, url, timeout_s)
    except RolloutError as e:
        raise StoreError(str(e)) from None
    return max(new.values())


def read_ids(path: str | Path) -> set[str]:
    """Keyword ids, one per line (UTF-8, a byte-order mark allowed; blank lines skipped)."""
    path = need_file(path)
    ids = {line.strip() for line in utf8_lines(path) if line.strip()}
    if not ids:
        raise ValueError(f"{path}: no keyword ids")
    return ids


def main(argv=None) -> None:
    from client.core import DEFAULT_URL
    from training.index import read_corpus
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True)
    ap.add_argument("--store", required=True, help="keyword store root (a new version is added)")
    ap.add_argument("--repository", required=True, help="the model repository the server runs on")
    ap.add_argument("--add", help="id,text CSV or JSONL of keywords to add or replace")
    ap.add_argument("--delete", help="file of keyword ids to delete, one per line")
    ap.add_argument("--url", default=DEFAULT_URL)
    args = ap.parse_args(argv)
    if not args.add and not args.delete:
        raise SystemExit("update_store: nothing to do (give --add and/or --delete)")
    try:
        add = dict(zip(*read_corpus(args.add))) if args.add else {}
        delete = read_ids(args.delete) if args.delete else set()
        version = build_updated_version(args.export, args.store, add, delete, progress=True)
        triton_version = publish(args.repository, version, args.url)
    except UnknownKeywordError as e:
        raise SystemExit(f"update_store: {args.delete} names ids the store does not hold: {e.ids[:10]}; "
                         "nothing changed") from None
    except (ValueError, OSError, StoreError) as e:  # one line, not a traceback; the message says what serves
        raise SystemExit(f"update_store: {e}") from None
    print(f"update_store: +{len(add)} added/replaced, -{len(delete)} deleted -> store {version}, "
          f"serving as model version {triton_version}")


if __name__ == "__main__":
    main()
