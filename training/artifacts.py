"""Reading and writing model artifacts so that a missing, truncated or altered file is refused by name
instead of loading as something else: JSON objects, typed configs, safetensors weights, TorchScript
files, checksum manifests and directories replaced whole.

Every refusal is an `ArtifactError` (a ValueError, so the command lines print it as one line) that
names the file and the problem."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import typing
from pathlib import Path

import torch


class ArtifactError(ValueError):
    """A model artifact is missing, corrupt or does not match its config or checksums."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(new: Path, out: Path) -> None:
    """Put the finished directory `new` at `out`. The old one is renamed aside first and removed only
    once the new one is in place, so a crash leaves either whole (the old one at OUT.old in the
    instant between the two renames), never a half-written or missing one."""
    new, out = Path(new), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _need_file(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing" if not path.exists() else f"{path}: not a file")


def read_json_object(path: str | Path) -> dict:
    path = Path(path)
    _need_file(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: want a JSON object, got {type(value).__name__}")
    return value


def _typed(value, kind, where: str):
    """`value` as the annotated `kind` (int, float, bool, str, tuple[str, ...]); JSON's list for a tuple."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ArtifactError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}.get(kind)
    if ok is None:
        raise TypeError(f"unsupported config field type {kind!r}")
    if not ok:
        raise ArtifactError(f"{where} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def int_field(record: dict, key: str, where: str | Path, minimum: int) -> int:
    """record[key], an int (not a bool) of at least `minimum`."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArtifactError(f"{where}: {key} must be an int >= {minimum}, got {value!r}")
    return value


def read_config(cls, path: str | Path):
    """The dataclass `cls` from a JSON object: unknown keys and values of the wrong type are refused;
    keys that are absent take the field's default (checkpoints written before the field existed)."""
    path = Path(path)
    raw = read_json_object(path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ArtifactError(f"{path}: unknown config keys {unknown} (not a {cls.__name__}?)")
    return cls(**{k: _typed(v, hints[k], f"{path}: {k!r}") for k, v in raw.items()})


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    _need_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                 strict: bool = True) -> tuple[list[str], list[str]]:
    """load_state_dict, refusing a tensor whose shape or kind (floating or not) differs from the
    parameter's (load_state_dict would cast an int tensor into float weights without a word)."""
    own = model.state_dict()
    for name, t in state.items():
        if name in own and own[name].is_floating_point() != t.is_floating_point():
            raise ArtifactError(f"{path}: {name} is {t.dtype}, the model's is {own[name].dtype}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise ArtifactError(f"{path}: does not fit the model of its config ({detail[:400]})") from None
    return missing, unexpected


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    path = Path(path)
    _need_file(path)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise ArtifactError(f"{path}: not a readable TorchScript file ({str(e).splitlines()[0]})") from None


def verify_checksums(directory: str | Path, manifest: str, names: list[str], required: bool = True) -> dict:
    """Each of `names` in `directory` against the sha256 the manifest (JSON, key "sha256") records for
    it; returns the manifest. A file the manifest does not list, or whose bytes changed, is refused.
    `required=False`: a directory without the manifest at all (a served version assembled before
    versions carried export.json) loads unchecked, with a warning to re-assemble; returns {}."""
    directory = Path(directory)
    if not required and not (directory / manifest).exists():
        import warnings
        warnings.warn(f"{directory}: no {manifest}, so {', '.join(names)} load unchecked; re-assemble the "
                      "repository (`make build`) to have them checked", stacklevel=2)
        return {}
    record = read_json_object(directory / manifest)
    sums = record.get("sha256")
    if not isinstance(sums, dict):
        raise ArtifactError(f"{directory / manifest}: no \"sha256\" table of the files")
    for name in names:
        _need_file(directory / name)
        if name not in sums:
            raise ArtifactError(f"{directory / manifest}: lists no checksum for {name}")
        if sha256_file(directory / name) != sums[name]:
            raise ArtifactError(f"{directory / name}: checksum differs from {manifest}'s (corrupt or "
                                "replaced); re-export it")
    return record


def check_output_apart(out: str | Path, what: str, **inputs: str | Path | None) -> None:
    """Refuse an output directory that is one of the inputs, or holds one: it is replaced whole, which
    would delete that input (`--out artifacts` beside `--checkpoint artifacts/model`)."""
    o = Path(out).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        i = Path(path).resolve()
        if o == i or o in i.parents:
            raise ValueError(f"{what} {out} would replace {name.replace('_', ' ')} {path}, which it "
                             f"{'is' if o == i else 'holds'}; write it elsewhere")
