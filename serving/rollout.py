"""Swap model versions on a running server with no failed request and no mixed versions.

The encoder family (tokenizer, query_encoder, pool_cross, keyword_store, keyword_vectors) keeps
`version_policy: { all {} }`: every numbered version directory present is loaded. The ensembles pin
each step to one version (`serving.repository` pins version 1 when it assembles the repository);
the shipped ensembles run keyword_store, which encodes the query itself. A client that chains the
composable parts itself (query_encoder's states into keyword_store) without naming versions gets the
newest loaded version of each, so in the seconds between the two loading during a swap it can
pair a new encoder with the old index: such clients should name the versions they use.
`publish_versions` then swaps a set of models in three steps:

1. each model's files become its next version directory, and the models are loaded: the new
   versions come up beside the old ones, which keep serving because the ensembles still pin them;
2. every ensemble that uses one of the models is rewritten to pin the new versions and reloaded
   (once every version it pins is ready: Triton unloads an ensemble whose reload names a version
   that is not loaded, taking the serving one with it):
   Triton swaps an ensemble whole, so a request runs entirely on the old versions or entirely on
   the new ones (a new query encoder never meets the old index);
3. the old version directories are moved to `<repository>.retired/<model>/<N>` (beside the
   repository: an entry of the model directory that is not a version number would make Triton load
   the serving version again; the last retired version stays for rollback) and the models reloaded,
   which unloads them once their in-flight requests are done.

Any failure before every ensemble has switched (a version that fails to load, an ensemble that fails
to reload, a file that cannot be placed) puts everything back: the ensembles onto the old versions
first, then the new versions are dropped; the old versions never stop serving. A swap whose process
is killed before it has switched or put back leaves a record beside the repository
(`<repository>.retired/.swap-in-progress.json`: the new versions, the ensembles' configs before it);
the next update or rollout finishes with it first (`recover`): undone, or, when every ensemble had
switched, finished (the ensembles reloaded, its old versions retired); it says which on stderr, and
keeps the record until the server has taken every step.
Refused before anything changes: a repository assembled before pinning, and a second swap or a
re-assembly while one runs (`<repository>.lock`, beside the repository).

A new encoder (`python -m training.export`, then `python -m training.index` with it) is rolled out
with every model of the family at once:

    python -m serving.rollout --export artifacts/export_new --store artifacts/keyword_store_new \\
        --repository artifacts/model_repository [--url 127.0.0.1:8001]

Keyword additions and deletions with the same encoder go through `python -m serving.update_store`,
which uses the same swap for the two store models.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

from serving.keyword_store import KeywordStore, StoreError, latest_version, sha256_file
from serving.repository import (EXPORT_FILES, STORE_MODELS, _place, numbered_versions, parse_model_config,
                                pin_ensemble_text, precompile, repository_lock, RepositoryBusy, retired_root,
                                served_version)
from training.artifacts import ArtifactError, verify_checksums
from training.cli import positive_float

ENCODER_MODELS = ("tokenizer", "query_encoder", "pool_cross", "keyword_store", "keyword_vectors")


class RolloutError(RuntimeError):
    """A swap failed; the versions that served before it still serve."""


def ensembles(repo: Path) -> dict[str, str]:
    """{ensemble name: its config text} for the ensembles in the repository."""
    out = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        text = cfg.read_text()
        if parse_model_config(text).platform == "ensemble":
            out[cfg.parent.name] = text
    return out


def check_swappable(repo: Path, models) -> dict[str, str]:
    """The repository must load every version of `models` and its ensembles must pin the ones serving
    now; a repository assembled before pinning (latest-1 policy, version -1) would swap model by model
    and mix versions. Returns {ensemble: config text} of the ensembles that use the models."""
    for m in models:
        config = parse_model_config((repo / m / "config.pbtxt").read_text())
        if config.version_policy.WhichOneof("policy_choice") != "all":
            raise RolloutError(f"{repo / m}: version_policy must be all {{}} for a swap; re-assemble the repository "
                               "(python -m serving.build or serving.repository)")
        if m == "keyword_vectors" and len(config.model_warmup):
            # earlier builds warmed it up on one keyword id from a file every version shares
            raise RolloutError(f"{repo / m}: assembled by an earlier build, whose warm-up names a keyword id that "
                               "every loaded version would have to hold; re-assemble the repository "
                               "(python -m serving.build or serving.repository)")
    affected = {}
    for name, text in ensembles(repo).items():
        steps = [s for s in parse_model_config(text).ensemble_scheduling.step if s.model_name in models]
        for step in steps:
            serving = max(numbered_versions(repo / step.model_name))
            if step.model_version != serving:
                raise RolloutError(f"ensemble {name} runs {step.model_name} version {step.model_version}, not the "
                                   f"newest present ({serving}); re-assemble the repository, or finish the earlier swap")
        if steps:
            affected[name] = text
    return affected


JOURNAL = ".swap-in-progress.json"  # in <repository>.retired: what a swap is changing, until it has switched


def _write_whole(path: Path, text: str) -> None:
    """Replace a file whole (a kill mid-write must not leave a truncated config or record to read)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _load_all(client, names, timeout_s: float) -> list[str]:
    """Load (reload, reconcile) each model; the failures, as 'name (reason)'."""
    from tritonclient.utils import InferenceServerException
    failed = []
    for name in names:
        try:
            client.load_model(name, client_timeout=timeout_s)
        except InferenceServerException as e:
            failed.append(f"{name} ({e.message()})")
    return failed


def _undo(repo: Path, client, before: dict[str, str], new: dict[str, int], timeout_s: float) -> list[str]:
    """Put the ensembles back on their configs from before a swap (their old versions never stopped
    serving), then drop the swap's new versions and have the server unload whatever of them loaded.
    Returns the loads that failed: until they succeed the server may still run what was dropped."""
    for name, text in before.items():
        _write_whole(repo / name / "config.pbtxt", text)
    failed = _load_all(client, before, timeout_s)
    for m, v in new.items():
        shutil.rmtree(repo / m / f".tmp-{v}", ignore_errors=True)
        shutil.rmtree(repo / m / str(v), ignore_errors=True)
    return failed + _load_all(client, new, timeout_s)  # reconcile: unload whatever of them had loaded


def _retire(repo: Path, client, old: dict[str, list[int]], timeout_s: float) -> list[str]:
    """Move each model's `old` version directories out to <repository>.retired/<model>/ (retired_root
    says why) and reload the model, which unloads them once their requests are done; keep only the
    newest retired version, for rollback. Returns the models whose retiring failed (those stay loaded,
    their directories back in place, which serves correctly: the next swap retires them)."""
    from tritonclient.utils import InferenceServerException
    failed = []
    for m, versions in old.items():
        retired = retired_root(repo) / m
        moved = []
        try:
            retired.mkdir(parents=True, exist_ok=True)
            for v in versions:  # by rename: <repository>.retired is on the repository's file system
                os.rename(repo / m / str(v), retired / f".retiring-{v}")
                moved.append(v)
            client.load_model(m, client_timeout=timeout_s)
        except (OSError, InferenceServerException) as e:
            try:
                for v in moved:  # keep the directories in step with what is loaded
                    os.rename(retired / f".retiring-{v}", repo / m / str(v))
            except OSError:
                pass
            reason = e.message() if isinstance(e, InferenceServerException) else f"{e.strerror or e}"
            failed.append(f"{m} ({reason})")
            continue
        mine = {f".retiring-{v}" for v in versions}
        for p in retired.iterdir():  # the newest retired version only (and none of what a swap cut
            if p.name not in mine:    # off mid-way left here)
                shutil.rmtree(p, ignore_errors=True)
        for v in versions:
            (retired / f".retiring-{v}").rename(retired / str(v))
        for v in versions[:-1]:
            shutil.rmtree(retired / str(v), ignore_errors=True)
    return failed


def _recover(repo: Path, journal: Path, client, timeout_s: float) -> str | None:
    """Finish with a swap that was cut off (its process killed) before it could put things back or
    had switched every ensemble: undo it, or, when every ensemble's config already pins its new
    versions, reload them (the last may not have been) and retire its old versions. The record is
    kept until the server has taken every step, so a later call tries again."""
    if not journal.is_file():
        return None
    try:
        state = json.loads(journal.read_text())
        new, before = {m: int(v) for m, v in state["new"].items()}, dict(state["ensembles"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RolloutError(f"{journal}: unreadable record of an earlier swap ({e}); check the repository's "
                           "versions and ensembles by hand, then remove it") from None
    from tritonclient.utils import InferenceServerException
    try:
        live = client.is_server_live()
    except InferenceServerException:
        live = False
    if not live:
        raise RolloutError(f"an earlier swap was cut off ({journal}), and the server is not reachable to "
                           "finish with it; nothing was changed") from None
    now = {name: (repo / name / "config.pbtxt").read_text() for name in before}
    if before and all(now[n] == pin_ensemble_text(t, new) for n, t in before.items()):
        failed = _load_all(client, before, timeout_s)
        if not failed:
            failed = _retire(repo, client, {m: [x for x in numbered_versions(repo / m) if x < v]
                                            for m, v in new.items()}, timeout_s)
        if failed:
            raise RolloutError(f"an earlier swap was cut off after it had switched; finishing it failed for "
                               f"{', '.join(failed)} (its record is kept: the next update retries)")
        journal.unlink()
        return "an earlier swap was cut off after it had switched; it was finished (its old versions retired)"
    failed = _undo(repo, client, before, new, timeout_s)
    if failed:
        raise RolloutError(f"an earlier swap was cut off before it had switched; undoing it failed for "
                           f"{', '.join(failed)} (its record is kept: the next update retries)")
    journal.unlink()
    return (f"an earlier swap was cut off before it had switched; it was undone (versions "
            f"{', '.join(f'{m} {v}' for m, v in sorted(new.items()))} dropped)")


@contextmanager
def _swap_lock(repo: Path):
    """One update, rollout or assembly at a time per repository (`repository_lock`)."""
    try:
        with repository_lock(repo):
            yield
    except RepositoryBusy as e:
        raise RolloutError(str(e)) from None


def recover(repository: str | Path, url: str, timeout_s: float = 120.0) -> str | None:
    """Before a swap reads what serves: finish with an earlier swap that was cut off (see `_recover`),
    saying what was done on stderr; None when there was none."""
    import tritonclient.grpc as grpcclient
    repo = Path(repository)
    journal = retired_root(repo) / JOURNAL
    if not journal.is_file():
        return None
    with _swap_lock(repo), closing(grpcclient.InferenceServerClient(url)) as client:
        done = _recover(repo, journal, client, timeout_s)
    if done:
        print(f"{repo}: {done}", file=sys.stderr, flush=True)
    return done


def publish_versions(repository: str | Path, files: dict[str, dict[str, Path]], url: str,
                     timeout_s: float = 120.0) -> dict[str, int]:
    """Add `files[model]` ({path inside the version directory: source file}) as each model's next
    version and swap the ensembles over to them (see the module doc). Returns {model: new version}.
    One swap at a time per repository (a lock file); any failure before the ensembles have all
    switched puts everything back. Files the versions share (configs, warm-up samples) are left as
    they are: loading a model whose shared files changed reloads its serving versions too."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    repo = Path(repository)
    with _swap_lock(repo), closing(grpcclient.InferenceServerClient(url)) as client:
        retired_base = retired_root(repo)
        journal = retired_base / JOURNAL
        if journal.is_file():  # the callers recover() before they read the served versions' files
            raise RolloutError(f"an earlier swap was cut off ({journal}); serving.rollout.recover() it first")
        affected = check_swappable(repo, files)
        try:  # before anything loads: retiring the old versions later must be a rename that cannot fail here
            retired_base.mkdir(exist_ok=True)
            if not retired_base.is_dir():
                raise NotADirectoryError(20, "not a directory")
        except OSError as e:
            raise RolloutError(f"cannot keep the retired versions in {retired_base} ({e.strerror or e}); "
                               "nothing was changed") from None
        if retired_base.stat().st_dev != repo.resolve().stat().st_dev:
            raise RolloutError(f"{retired_base} is on another file system than {repo}: retiring a version "
                               "would copy it; make it a directory on the repository's file system") from None
        new = {m: max(numbered_versions(repo / m)) + 1 for m in files}
        old = {m: numbered_versions(repo / m) for m in files}
        pinned = {name: pin_ensemble_text(text, new) for name, text in affected.items()}  # fails before any change

        def put_back(reason: str) -> RolloutError:
            failed = _undo(repo, client, affected, new, timeout_s)
            if failed:  # the record stays: the next update finishes the undoing
                return RolloutError(f"{reason}; putting the previous versions back failed for {', '.join(failed)} "
                                    "(the next update or rollout finishes it)")
            journal.unlink(missing_ok=True)
            return RolloutError(f"{reason}; the previous versions keep serving")

        try:
            # what to undo should this process be killed before it has switched (the next swap does)
            _write_whole(journal, json.dumps({"new": new, "ensembles": affected}))
            for m, entries in files.items():
                tmp = repo / m / f".tmp-{new[m]}"
                shutil.rmtree(tmp, ignore_errors=True)
                for rel, src in entries.items():
                    # Only a new store version's files are linked (serving/repository.py says why):
                    # linking a served version's file, or an export's that served versions hold,
                    # would change its ctime, and Triton takes a version whose files' mtime or
                    # ctime moved for a changed one and loads it again in the middle of the swap.
                    inside = Path(src).resolve().is_relative_to(repo.resolve())
                    _place(Path(src), tmp / rel, link=rel.startswith("store/") and not inside)
                precompile(tmp)
            for m in files:  # every model's files first, then the renames: a crash while copying
                (repo / m / f".tmp-{new[m]}").rename(repo / m / str(new[m]))  # leaves no version behind
            for m in files:
                try:
                    client.load_model(m, client_timeout=timeout_s)
                except InferenceServerException as e:
                    raise RolloutError(f"version {new[m]} of {m} failed to load ({e.message()})") from None
            deadline = time.monotonic() + timeout_s
            while not all(client.is_model_ready(m, str(new[m])) for m in files):
                if time.monotonic() > deadline:
                    raise RolloutError(f"the new versions were not ready after {timeout_s:.0f}s")
                time.sleep(0.1)
            for name, text in pinned.items():
                # Triton unloads an ensemble whose reload names a composing version that is not
                # loaded, and the old one stops serving with it: check every pin first
                for s in parse_model_config(text).ensemble_scheduling.step:
                    version = "" if s.model_version < 0 else str(s.model_version)
                    if not client.is_model_ready(s.model_name, version):
                        raise RolloutError(f"ensemble {name} would run {s.model_name} version "
                                           f"{version or 'latest'}, which is not ready")
                _write_whole(repo / name / "config.pbtxt", text)
                try:
                    client.load_model(name, client_timeout=timeout_s)
                except InferenceServerException as e:
                    raise RolloutError(f"ensemble {name} failed to reload on the new versions "
                                       f"({e.message()})") from None
            journal.unlink()  # switched: nothing to undo any more
        except BaseException as e:  # noqa: BLE001 - whatever failed, the old versions must keep serving
            reason = str(e) if isinstance(e, RolloutError) else f"{type(e).__name__}: {e}"
            raise put_back(reason) from None
        # the ensembles serve the new versions: retire the old ones (a failure here leaves both loaded,
        # which serves correctly; it is reported, not undone)
        failed = _retire(repo, client, old, timeout_s)
        if failed:
            raise RolloutError(f"the new versions serve, but retiring the old ones failed for {', '.join(failed)}; "
                               "they stay loaded beside the new ones until the next update or rollout retires them")
    return new


def rollout(repository: str | Path, export_dir: str | Path, store: str | Path, url: str,
            timeout_s: float = 120.0) -> dict[str, int]:
    """Roll a new encoder out: its export and a keyword store indexed with it become the next
    versions of the whole encoder family, swapped in together."""
    repo, export_dir, store = Path(repository), Path(export_dir), Path(store)
    # refuse a corrupt export, or a store indexed with another encoder or corrupt, before touching the server
    try:
        verify_checksums(export_dir, "export.json", sorted({n for names in EXPORT_FILES.values() for n in names}
                                                           - {"export.json"}))
    except ArtifactError as e:
        raise RolloutError(str(e)) from None
    store_version = store if (store / "manifest.json").is_file() else latest_version(store)
    KeywordStore(store_version, expect_encoder_sha256=sha256_file(export_dir / "export.json"), load_index=False)
    recover(repo, url, timeout_s)  # an earlier swap cut off would have this read the wrong served files
    # the warm-up samples' shapes live in the configs, which every version shares: a new width or query
    # length needs a re-assembled repository (and a restart), not a swap
    # (keyword_store's served version holds both files: it encodes and crosses for the ensembles)
    for name, keys in (("pool_cross.json", ("hidden", "dim")), ("tokenizer_config.json", ("query_max_len",))):
        now = json.loads((served_version(repo, "keyword_store") / name).read_text())
        then = json.loads((export_dir / name).read_text())
        changed = [f"{k} {now.get(k)} -> {then.get(k)}" for k in keys if now.get(k) != then.get(k)]
        if changed:
            raise RolloutError(f"{export_dir}: {', '.join(changed)}; a rollout keeps the served shapes, so "
                               "re-assemble the repository (python -m serving.build) and restart instead")
    files: dict[str, dict[str, Path]] = {}
    for m in ENCODER_MODELS:
        # the model's code (model.py) as served now; the export's files and the store are new
        entries = {f.name: f for f in served_version(repo, m).iterdir()
                   if f.is_file() and f.name not in EXPORT_FILES.get(m, ())}
        for name in EXPORT_FILES.get(m, ()):
            if not (export_dir / name).is_file():
                raise FileNotFoundError(f"{export_dir / name} not found; run `python -m training.export` first")
            entries[name] = export_dir / name
        if m in STORE_MODELS:
            entries.update({f"store/{f.name}": f for f in store_version.iterdir()})
        files[m] = entries
    return publish_versions(repo, files, url, timeout_s)


def main(argv=None) -> None:
    from client.core import DEFAULT_URL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="the new encoder's export (python -m training.export)")
    ap.add_argument("--store", required=True, help="a keyword store indexed with it (root: its latest version)")
    ap.add_argument("--repository", required=True, help="the model repository the server runs on")
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--timeout", type=positive_float, default=120.0, help="seconds allowed for each load")
    args = ap.parse_args(argv)
    try:
        new = rollout(args.repository, args.export, args.store, args.url, args.timeout)
    except (RolloutError, StoreError, FileNotFoundError) as e:
        raise SystemExit(f"rollout: {e}") from None
    print("rollout: serving " + ", ".join(f"{m} v{v}" for m, v in new.items()))


if __name__ == "__main__":
    main()
