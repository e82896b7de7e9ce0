"""Assemble a runnable Triton model repository from the committed configs plus built artifacts.

`model_repository/` in the source tree holds configs and model code only; artifacts are placed into
each model's version directory: a keyword store version's files as hard links (held only by that
version of the two store models, which are retired together), every other file as a copy, since
Triton reloads a served version whose files' ctime moved, and a shared inode's moves with any link or
unlink of it elsewhere (a retired version deleted, the same export rolled out again). The
`reranker` model and the `retrieve_rerank` ensemble are included only with a re-ranker export
(`--reranker`, from `python -m training.export --reranker`).

    python -m serving.repository --export artifacts/export --store artifacts/keyword_store --out artifacts/model_repository \
        [--reranker artifacts/export_reranker]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from serving.encoder import PAD_MULTIPLE
from serving.keyword_store import StoreError, latest_version, replace_dir
from serving.rerank import RERANKER_TRACES
from training.artifacts import check_output_apart

SOURCE = Path(__file__).resolve().parent.parent / "model_repository"

# model -> files from the export directory placed in its version directory
EXPORT_FILES = {
    # export.json everywhere: each model checks the files it loads against its checksums
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "export.json"),
    "query_encoder": ("query_encoder.pt", "tokenizer.json", "tokenizer_config.json", "export.json"),
    "pool_cross": ("pool_cross.safetensors", "pool_cross.json", "export.json"),
    # keyword_store encodes QUERY itself (the one-step retrieve ensemble), with query_encoder's files
    "keyword_store": ("query_encoder.pt", "tokenizer.json", "tokenizer_config.json", "pool_cross.safetensors",
                      "pool_cross.json", "export.json"),
}
STORE_MODELS = ("keyword_store", "keyword_vectors")  # models whose version dir holds store/
RERANKER_FILES = (*RERANKER_TRACES.values(), "reranker.json", "tokenizer.json")  # from the re-ranker export
RERANK_MODELS = ("reranker", "retrieve_rerank")  # present only with a re-ranker export
WARMUP_QUERY = "cordless drill"
# Longer than query_max_len: the encoder's other trimmed width (serving/encoder.py) is warmed as well.
WARMUP_LONG_QUERY = "milwaukee m18 fuel 18 volt lithium ion brushless cordless hammer drill driver kit with two batteries"


def parse_model_config(text: str):
    """A config.pbtxt as Triton reads it (tritonclient's ModelConfig protobuf)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def model_parameter(repository: str | Path, model: str, key: str, default: str | None = None) -> str | None:
    """The string value of parameter `key` in `model`'s config.pbtxt (`default` when it has none)."""
    config = parse_model_config((Path(repository) / model / "config.pbtxt").read_text())
    value = config.parameters.get(key)
    return value.string_value if value is not None else default


def pin_ensemble_text(text: str, versions: dict[str, int]) -> str:
    """An ensemble config.pbtxt with the steps of the models in `versions` pinned to those versions
    (comments and layout kept); checked by parsing the result."""
    for model, version in versions.items():
        text = re.sub(rf'(model_name:\s*"{re.escape(model)}"\s+model_version:\s*)-?\d+', rf"\g<1>{int(version)}", text)
    for step in parse_model_config(text).ensemble_scheduling.step:
        if step.model_name in versions and step.model_version != versions[step.model_name]:
            raise ValueError(f"could not pin {step.model_name} to version {versions[step.model_name]} "
                             "(model_version must follow model_name in each step)")
    return text


def warmup_dims_text(text: str, hidden: int, dim: int) -> str:
    """A config.pbtxt with its warm-up TOKEN_STATES [L, hidden] and KEYWORD_VECTORS [K, dim] widths set."""
    text = re.sub(r'(key: "TOKEN_STATES" value: \{[^}]*dims: \[ \d+, )\d+', rf"\g<1>{int(hidden)}", text)
    return re.sub(r'(key: "KEYWORD_VECTORS" value: \{[^}]*dims: \[ \d+, )\d+', rf"\g<1>{int(dim)}", text)


def numbered_versions(model_dir: Path) -> list[int]:
    """A model's version directories (Triton loads only numbered ones; a swap's .tmp-N is not)."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


class RepositoryBusy(OSError):
    """Another process is changing the repository (an update, a rollout or an assembly)."""


@contextmanager
def repository_lock(repository: str | Path):
    """One writer at a time per repository: a store update, a rollout or a re-assembly. The lock file
    is `<repository>.lock`, beside the repository: inside it, an assembly (which replaces the directory
    whole) would drop the lock a running swap holds, and a swap would lock a directory no longer served."""
    import fcntl
    path = _beside(repository, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryBusy(f"{Path(repository).resolve()}: another update, rollout or assembly is running "
                                 f"(it holds {path})") from None
        yield


def retired_root(repository: str | Path) -> Path:
    """Where a swap keeps the versions it retired (`<repository>.retired/<model>/<N>`), beside the
    repository and not in it: Triton counts any entry of a model directory whose name is not a version
    number as a file of every version, so a retired version kept there made the swap load the serving
    version again (measured: a whole second load of it, 3.4 s for the tokenizer)."""
    return _beside(repository, ".retired")


def _beside(repository: str | Path, suffix: str) -> Path:
    """`<repository><suffix>`, in the repository's parent directory."""
    repository = Path(repository).resolve()
    return repository.with_name(repository.name + suffix)


def served_version(repository: str | Path, model: str) -> Path:
    """The directory of the version of `model` the ensembles pin (what they serve, also in the middle
    of a swap), or its newest numbered version when no ensemble pins one."""
    repo = Path(repository)
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        config = parse_model_config(cfg.read_text())
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                if step.model_name == model and step.model_version > 0 and (repo / model / str(step.model_version)).is_dir():
                    return repo / model / str(step.model_version)
    model_dir = repo / model
    numbered = numbered_versions(model_dir)
    if not numbered:
        raise FileNotFoundError(f"{model_dir}: no version directory")
    return model_dir / str(numbered[-1])


def precompile(version_dir: Path) -> None:
    """Write the bytecode of a version's Python model before Triton loads it. The Python backend's stub
    would otherwise write it into the version directory while loading, and Triton takes that change
    for new files: the next load of the model, or of an ensemble that uses it, loads that version
    again (whole: its instances start over). The stub runs this interpreter (serving/server.py), so the
    cache tag matches; it ignores PYTHONDONTWRITEBYTECODE and PYTHONPYCACHEPREFIX (measured)."""
    import py_compile
    # timestamp-checked, as the stub would write it (py_compile makes hash-checked ones when
    # SOURCE_DATE_EPOCH is set)
    for f in sorted(version_dir.glob("*.py")):
        py_compile.compile(str(f), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)


def _place(src: Path, dst: Path, link: bool = True) -> None:
    """`src` at `dst`: a hard link where the file system allows one (and `link`), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def write_warmup_files(repo: Path, export_dir: Path) -> None:
    """Sample inputs for `model_warmup` (raw little-endian tensors; BYTES as 4-byte length + data). They
    name no keyword id: every version of a model shares them, and versions of the store may share no id
    (keyword_vectors warms up on its own version's ids in `initialize`)."""
    import numpy as np
    length = json.loads((export_dir / "tokenizer_config.json").read_text())["query_max_len"]
    mask = np.zeros(length, dtype="<i8")
    mask[:4] = 1
    short = mask[:PAD_MULTIPLE]  # the width most queries arrive at after the encoder trims padding

    def put(model: str, name: str, data: bytes) -> None:
        path = repo / model / "warmup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def text(query: str) -> bytes:
        return len(query).to_bytes(4, "little") + query.encode()

    for model in ("tokenizer", "query_encoder", "keyword_store"):
        put(model, "query", text(WARMUP_QUERY))
    for model in ("query_encoder", "keyword_store"):
        put(model, "long_query", text(WARMUP_LONG_QUERY))
    put("query_encoder", "attention_mask_full", np.ones(length, dtype="<i8").tobytes())  # batched, untrimmed
    for model in ("keyword_store", "pool_cross", "query_encoder"):
        put(model, "attention_mask", mask.tobytes())
        put(model, "attention_mask_short", short.tobytes())
    put("keyword_store", "top_k", np.array([10], dtype="<i4").tobytes())


def assemble(export_dir: str | Path, store: str | Path, out: str | Path,
             reranker_dir: str | Path | None = None) -> Path:
    """Write the repository to `out` (replaced whole). `store` is a store root or one version dir;
    `reranker_dir`, a re-ranker export, adds the `reranker` model and the `retrieve_rerank` ensemble."""
    export_dir, out = Path(export_dir), Path(out)
    check_output_apart(out, "the repository", export=export_dir, store=store, reranker_export=reranker_dir)
    if reranker_dir is not None:
        missing = [n for n in RERANKER_FILES if not (Path(reranker_dir) / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{reranker_dir}: re-ranker export lacks {', '.join(missing)}; run "
                                    "`python -m training.export --reranker CKPT --reranker-out DIR`")
    store = Path(store)
    store_version = store if (store / "manifest.json").is_file() else latest_version(store)
    with repository_lock(out):
        _assemble(export_dir, store_version, out, reranker_dir)
    return out


def _assemble(export_dir: Path, store_version: Path, out: Path, reranker_dir) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for model_dir in sorted(p for p in SOURCE.iterdir() if (p / "config.pbtxt").is_file()):
        if model_dir.name in RERANK_MODELS and reranker_dir is None:
            continue
        dst = tmp / model_dir.name
        shutil.copytree(model_dir, dst, ignore=shutil.ignore_patterns("__pycache__", ".gitkeep"))
        (dst / "1").mkdir(exist_ok=True)
        for name in EXPORT_FILES.get(model_dir.name, ()):
            src = export_dir / name
            if not src.is_file():
                raise FileNotFoundError(f"{src} not found; run `python -m training.export` first")
            _place(src, dst / "1" / name, link=False)  # several models hold the same export files
    if reranker_dir is not None:
        for name in RERANKER_FILES:
            _place(Path(reranker_dir) / name, tmp / "reranker" / "1" / name, link=False)
    for model in STORE_MODELS:
        for f in store_version.iterdir():
            _place(f, tmp / model / "1" / "store" / f.name)
    for version_dir in tmp.glob("*/1"):
        precompile(version_dir)
    write_warmup_files(tmp, export_dir)
    # warm-up shapes follow the export: a model trained with --proj-dim crosses narrower keyword vectors
    dims = json.loads((export_dir / "pool_cross.json").read_text())
    for cfg in (tmp / m / "config.pbtxt" for m in ("pool_cross", "keyword_store")):
        cfg.write_text(warmup_dims_text(cfg.read_text(), dims["hidden"], dims["dim"]))
    # ensembles pin their steps' versions, so that a rollout swaps them whole (serving/rollout.py)
    for cfg in tmp.glob("*/config.pbtxt"):
        config = parse_model_config(cfg.read_text())
        if config.platform == "ensemble":
            cfg.write_text(pin_ensemble_text(cfg.read_text(), {s.model_name: 1 for s in config.ensemble_scheduling.step}))
    replace_dir(tmp, out)
    shutil.rmtree(retired_root(out), ignore_errors=True)  # the replaced repository's versions


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True)
    ap.add_argument("--store", required=True, help="keyword store root (latest version) or a version dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reranker", help="re-ranker export (adds the reranker model and retrieve_rerank)")
    args = ap.parse_args(argv)
    try:
        print(f"repository: {assemble(args.export, args.store, args.out, args.reranker)}")
    except (ValueError, OSError, StoreError) as e:  # the message names the path; nothing was replaced
        raise SystemExit(f"repository: {e}") from None


if __name__ == "__main__":
    main()
