"""Build every serving artifact, reusing what is already built and still consistent.

    artifacts/model/             TwinBERT checkpoint (safetensors + JSON)      training.train_twin
    artifacts/export/            TorchScript encoders, pool/cross weights      training.export
    artifacts/keyword_store/N/   FAISS keyword store version N                 training.index
    artifacts/export_reranker/   TorchScript BiLSTM re-ranker, when            training.export --reranker
                                 artifacts/bilstm holds one (make train)
    artifacts/model_repository/  runnable Triton repository                    serving.repository

    python -m serving.build [--artifacts DIR] [--steps 400] [--rebuild] [--no-reranker]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from serving.keyword_store import DEFAULT_INDEX_TYPE, INDEX_TYPES, IndexSpec, latest_version
from training.cli import one_line_errors, positive_float, positive_int

DEFAULT_ARTIFACTS = os.environ.get("TWINBERT_ARTIFACTS", "artifacts")


def _step(name: str):
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _current_export(model_dir: Path, export_dir: Path) -> bool:
    """Whether export_dir was exported from this checkpoint's weights and config (export.json records both),
    in this format. The config decides how long a title the keyword encoder reads (--keyword-max-len)."""
    from serving.keyword_store import sha256_file
    from training.artifacts import ArtifactError, read_config, read_json_object
    from training.export import EXPORT_FORMAT
    from training.twin import TwinConfig
    current = export_dir / "export.json"
    try:
        made = read_json_object(current) if current.is_file() else {}
        config = json.loads(read_config(TwinConfig, model_dir / "config.json").to_json())
    except (ArtifactError, OSError):  # unreadable or absent: exported again, which reports a bad checkpoint
        return False
    return (made.get("checkpoint_sha256") == sha256_file(model_dir / "model.safetensors")
            and made.get("model_config") == config and made.get("format") == EXPORT_FORMAT)


def _current_store(store_root: Path, export_dir: Path, index_type: str, corpus: dict[str, str]) -> Path | None:
    """The latest store version if it was built from this export with this index type, over these
    keywords: the same ids with the same texts (a loader that repairs titles differently changes them)."""
    from serving.keyword_store import sha256_file
    try:
        version = latest_version(store_root)
        manifest = json.loads((version / "manifest.json").read_text())
        same_keywords = (json.loads((version / "ids.json").read_text()) == list(corpus)
                         and [json.loads(line) for line in (version / "texts.jsonl").read_text(encoding="utf-8")
                              .splitlines()] == list(corpus.values()))
    except Exception:
        return None
    same_encoder = manifest.get("encoder_sha256") == sha256_file(export_dir / "export.json")
    return version if same_encoder and same_keywords and manifest.get("index_type") == index_type else None


def _reranker(artifacts: Path, rebuild: bool) -> Path | None:
    """The re-ranker export for artifacts/bilstm (exported again when the checkpoint, its config or
    the export format changed); None when no BiLSTM student has been trained."""
    from training.export import export_reranker, reranker_export_key
    checkpoint, out = artifacts / "bilstm", artifacts / "export_reranker"
    if not (checkpoint / "model.safetensors").is_file():
        print(f"no BiLSTM student in {checkpoint} (make train): serving without the re-ranker")
        return None
    current = out / "reranker.json"
    key = reranker_export_key(checkpoint)
    made_from = json.loads(current.read_text()) if current.is_file() else {}
    if not rebuild and {k: made_from.get(k) for k in key} == key:
        print(f"reusing {out}")
        return out
    return export_reranker(checkpoint, out)


def build(artifacts: str | Path = DEFAULT_ARTIFACTS, data: str | None = None, steps: int = 400,
          minutes: float = 15.0, index_type: str = DEFAULT_INDEX_TYPE, rebuild: bool = False,
          reranker: bool = True) -> Path:
    from training.data import keyword_corpus, load_pairs
    from training.export import export
    from training.index import build as build_index
    from training.train_twin import TrainConfig, train
    from serving.repository import assemble

    artifacts = Path(artifacts)
    export_dir = artifacts / "export"
    # The distilled student from `make train` when there is one, else the demo's quick student.
    distilled = artifacts / "twin"
    model_dir = distilled if (distilled / "model.safetensors").is_file() else artifacts / "model"
    store_root, repo = artifacts / "keyword_store", artifacts / "model_repository"
    pairs = load_pairs(data)  # fails early, with a clear message, when there is no data (and before --rebuild)
    if rebuild:
        # The distilled students are `make train`'s (an hour of training), never discarded here;
        # the quick student is this command's own.
        for d in ((model_dir,) if model_dir != distilled else ()) + (export_dir, store_root, repo,
                                                                     artifacts / "export_reranker"):
            shutil.rmtree(d, ignore_errors=True)

    t = _step("model")
    if (model_dir / "model.safetensors").is_file():
        print(f"reusing {model_dir}" + (" (distilled by make train)" if model_dir == distilled else ""))
    else:
        # A fixed, seeded step count keeps the model the same on a busy machine; minutes is a cap.
        train(TrainConfig(data=data, out=str(model_dir), max_steps=steps, minutes=minutes))
    print(f"[{time.perf_counter() - t:.1f}s]")

    t = _step("export")
    if _current_export(model_dir, export_dir):
        print(f"reusing {export_dir}")
    else:
        export(model_dir, export_dir)
    print(f"[{time.perf_counter() - t:.1f}s]")

    t = _step("keyword store")
    corpus = keyword_corpus(pairs)
    version = _current_store(store_root, export_dir, index_type, corpus)
    if version:
        print(f"reusing {version}")
    else:
        version = build_index(export_dir, store_root, list(corpus), list(corpus.values()), IndexSpec(index_type))
    print(f"[{time.perf_counter() - t:.1f}s]")

    t = _step("re-ranker")
    reranker_dir = _reranker(artifacts, rebuild) if reranker else None
    print(f"[{time.perf_counter() - t:.1f}s]")

    t = _step("model repository")
    assemble(export_dir, version, repo, reranker_dir)
    print(f"{repo} [{time.perf_counter() - t:.1f}s]")
    return repo


@one_line_errors("build")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help="artifact root (default: $TWINBERT_ARTIFACTS or ./artifacts)")
    ap.add_argument("--data", help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--steps", type=positive_int, default=400, help="training steps (batch 64) when no model is built")
    ap.add_argument("--minutes", type=positive_float, default=15.0, help="cap on training time")
    ap.add_argument("--index-type", default=DEFAULT_INDEX_TYPE, choices=INDEX_TYPES,
                    help="keyword index (default %(default)s; see `python -m training.index --help`)")
    ap.add_argument("--rebuild", action="store_true",
                    help="discard built serving artifacts first (never the students `make train` distilled)")
    ap.add_argument("--no-reranker", dest="reranker", action="store_false",
                    help="leave the BiLSTM re-ranker (retrieve_rerank) out of the repository")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    build(args.artifacts, args.data, args.steps, args.minutes, args.index_type, args.rebuild, args.reranker)


if __name__ == "__main__":
    main()
