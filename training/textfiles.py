"""Reading text files line by line with errors that name the file, line and problem: UTF-8 (a
byte-order mark allowed) with the byte offset in the file, finite numbers, ids, JSON-lines objects.
Shared by the evaluation datasets (training/datasets.py) and the keyword corpora (training/index.py).
And writing a TSV whole or not at all (`write_tsv`: the distillation set, evaluation's per-query file)."""
from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BOM = b"\xef\xbb\xbf"


def is_number(text: str) -> bool:
    """A finite decimal number (float() alone would also take 'nan', 'inf', '1e400' and '1_0', which is 10)."""
    return _NUMBER.fullmatch(text.strip()) is not None and math.isfinite(float(text))


def finite_number(text: str, what: str, where: str) -> float:
    if not is_number(text):
        raise ValueError(f"{where}: {what} must be a finite number, got {text!r}")
    return float(text)


def write_tsv(path: str | Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    """A tab-separated file with a header row, written to PATH.tmp and renamed into place, so a failed
    write leaves any earlier file as it was and no .tmp behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(header)
            w.writerows(rows)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def need_file(path: str | Path) -> Path:
    """`path` as a Path, once it is known to be a file (the line readers open it only when first read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    return path


def utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, line endings kept; a non-UTF-8 line is named by line and byte offset in
    the file (not in a decoder's buffer). A byte-order mark before the first line is dropped."""
    with open(path, "rb") as f:
        offset = 0
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(_BOM):
                raw, offset = raw[len(_BOM):], len(_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {offset + e.start} of the file); "
                                 "re-save it as UTF-8") from None
            offset += len(raw)


def text_id(value, where: str, key: str = "_id") -> str:
    """An id as a text file has it: a string (stripped) or an integer; not a float, bool or null, whose
    str() would never match the id as written elsewhere (`3.0` is not `3`)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: \"{key}\" must be a string or an integer, got {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: blank \"{key}\"")
    return text


def first_id(first: dict[str, int], value, where: str, line: int, key: str, label: str | None = None) -> str:
    """`value` as an id (text_id) that `first` (id -> line it was first seen on) does not hold yet;
    recorded there. `label` names the id in the error (default: the JSON key, quoted)."""
    i = text_id(value, where, key)
    if i in first:
        shown = label or f'"{key}"'
        raise ValueError(f"{where}: {shown} {i!r} again (first on line {first[i]})")
    first[i] = line
    return i


def jsonl_objects(path: Path, need: tuple[str, ...], key: str = "_id",
                  lines: Iterable[str] | None = None) -> Iterator[tuple[str, str, dict]]:
    """(path:line, id, object) for each non-blank line of a JSON-lines file (or of `lines` read from it);
    a line that is not a JSON object with `need`, or whose `key` was seen before, is named by path:line."""
    first: dict[str, int] = {}
    for n, line in enumerate(utf8_lines(path) if lines is None else lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        hint = " (a JSON array? write one object per line)" if not first and line.lstrip().startswith("[") else ""
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg}){hint}") from None
        if not isinstance(o, dict) or any(k not in o for k in need):
            raise ValueError(f"{where}: each line must be an object with {list(need)}{hint}")
        yield where, first_id(first, o[key], where, n, key), o


def csv_records(path: Path, lines: Iterable[str], need: tuple[str, ...], context: str = "",
                **dialect) -> Iterator[tuple[str, int, list[str]]]:
    """(path:line, line, the `need` fields in that order) for each non-blank row of a CSV-like file
    with a header (other columns are ignored). A header without `need`, a column named twice, a row
    with another field count than the header's or a csv.Error is named by path:line; `context` says
    in the header's error how the file was split."""
    reader = csv.reader(lines, **dialect)
    try:
        header = [c.strip() for c in next(reader, [])]
        if not set(need) <= set(header):
            raise ValueError(f"{path}: header must have {list(need)}{context}, got {header}")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise ValueError(f"{path}: header names {twice} more than once")
        columns = [header.index(c) for c in need]
        comma = dialect.get("delimiter", ",") == ","
        for r in reader:
            where = f"{path}:{reader.line_num}"
            if not any(c.strip() for c in r):
                continue
            if len(r) != len(header):
                raise ValueError(f"{where}: {len(r)} fields, the header has {len(header)}"
                                 + (" (an unquoted comma in a field?)" if comma and len(r) > len(header) else ""))
            yield where, reader.line_num, [r[i] for i in columns]
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: {e}") from None
