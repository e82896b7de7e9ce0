"""Home Depot search-relevance data: loading, mojibake repair and the split by query.

The CSV is ISO-8859-1. Some titles carry UTF-8 text that was decoded as Mac Roman
somewhere upstream and then stored as latin-1 ("30å¡" for "30°"); those byte
sequences are mapped back to the character that was meant. 1,204 of the distinct titles
still carry HTML character references ("Men&#39;s", "Black &amp; Decker", "2&quot;"),
which the tokenizers would read as "& # 39 ;": they become the character.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from training.textfiles import is_number

# Mojibake seen in train.csv -> the character meant (checked against context).
_MOJIBAKE = {
    "å¡": "°", "è_": "°", "Ûª": "'", "Û÷": "'", "ÛÜ": '"', "ÛÒ": "-",
    "åÊ": " ", "ã¢": "™", "å_": "²", "ÈÀ": "±", "Û\x90": "-",
}
# In 29 titles a C1 control byte, \x89 or \x95, comes before the sequence: part of the same mojibake.
_MOJIBAKE_RE = re.compile("[\x89\x95]?(?:" + "|".join(re.escape(k) for k in sorted(_MOJIBAKE, key=len, reverse=True))
                          + ")")
_SPACES_RE = re.compile(r"\s+")
# Only references with their semicolon, and only these: html.unescape would also read "&not" in
# "black&notched" as "¬".
_HTML_REFS = {"amp": "&", "quot": '"', "apos": "'", "lt": "<", "gt": ">", "nbsp": " "}
_HTML_REF_RE = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|" + "|".join(_HTML_REFS) + ");")


def _html_ref(m: re.Match) -> str:
    ref = m.group(1)
    if not ref.startswith("#"):
        return _HTML_REFS[ref]
    code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF or (code < 0x20 and code not in (9, 10, 13)) \
            or 0x7F <= code <= 0x9F:  # not a character, or a control character
        return m.group(0)
    return chr(code)

SPLITS = ("train", "dev", "test")
DEFAULT_SPLIT_FRACTIONS = {"dev": 0.10, "test": 0.10}
DEFAULT_SPLIT_SEED = 13
POSITIVE_THRESHOLD = 2.5  # relevance >= 2.5 counts as relevant (binary view)
# where a distillation set's rows come from (training.distill_data; the students' --sources pick among them)
DISTILL_SOURCES = ("labelled", "random", "bm25", "student", "perturbed", "synthetic")

REQUIRED_COLUMNS = ("product_uid", "product_title", "search_term", "relevance")


class DataError(RuntimeError):
    """The data directory or file is missing or not in the expected format."""


def repair_text(text: str) -> str:
    """Map known mojibake back, HTML character references to their character, collapse whitespace."""
    text = _MOJIBAKE_RE.sub(lambda m: _MOJIBAKE[m.group(0).lstrip("\x89\x95")], text)
    for _ in range(2):  # one title is escaped twice ("&amp;nbsp;")
        text = _HTML_REF_RE.sub(_html_ref, text)
    return _SPACES_RE.sub(" ", text).strip()


def normalize_query(query: str) -> str:
    """The key a query is split and grouped by: case- and whitespace-insensitive."""
    return _SPACES_RE.sub(" ", query).strip().lower()


@dataclass(frozen=True)
class Pair:
    query: str
    keyword_id: str
    keyword: str
    relevance: float


def default_data_dir() -> Path:
    """`TWINBERT_DATA`, else `../shared/data/homedepot` beside the checkout when it exists."""
    env = os.environ.get("TWINBERT_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    return here.parent / "shared" / "data" / "homedepot"


def find_train_csv(data_dir: str | os.PathLike | None = None) -> Path:
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    path = data_dir / "train.csv" if data_dir.is_dir() or not data_dir.suffix else data_dir
    if not path.is_file():
        raise DataError(
            f"no Home Depot data at {path}. Point TWINBERT_DATA (or --data) at the directory "
            "holding train.csv from the Kaggle 'Home Depot Product Search Relevance' competition."
        )
    return path


def load_pairs(data_dir: str | os.PathLike | None = None) -> list[Pair]:
    """Read train.csv (latin-1) into judged query-title pairs, text repaired."""
    path = find_train_csv(data_dir)
    pairs: list[Pair] = []
    with open(path, newline="", encoding="latin-1") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {missing}; found {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            if not is_number(row["relevance"] or ""):  # float() alone takes 'nan', 'inf' and '1e400'
                raise DataError(f"{path}:{lineno}: bad relevance {row['relevance']!r} (a finite number is needed)")
            relevance = float(row["relevance"])
            query = repair_text(row["search_term"] or "")
            title = repair_text(row["product_title"] or "")
            if not query or not title:
                continue
            pairs.append(Pair(query, str(row["product_uid"]).strip(), title, relevance))
    if not pairs:
        raise DataError(f"{path}: no usable rows")
    return pairs


def keyword_corpus(pairs: list[Pair]) -> dict[str, str]:
    """Distinct keywords (product titles) by id, in first-seen order."""
    corpus: dict[str, str] = {}
    for p in pairs:
        corpus.setdefault(p.keyword_id, p.keyword)
    return corpus


def split_of(query: str, seed: int = DEFAULT_SPLIT_SEED,
             fractions: dict[str, float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Deterministic split of one query: a seeded hash of the normalised text.

    Hashing (not shuffling) keeps a query's split stable when rows are added or removed.
    """
    digest = hashlib.sha256(f"{seed}:{normalize_query(query)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions["test"]:
        return "test"
    if u < fractions["test"] + fractions["dev"]:
        return "dev"
    return "train"


def split_pairs(pairs: list[Pair], seed: int = DEFAULT_SPLIT_SEED) -> dict[str, list[Pair]]:
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[split_of(p.query, seed)].append(p)
    return out


def split_manifest(splits: dict[str, list[Pair]], seed: int = DEFAULT_SPLIT_SEED) -> dict:
    """A small, committable record of the split: counts and a checksum of each query list."""
    info: dict = {"seed": seed, "method": "sha256(seed:normalised query) bucket",
                  "fractions": DEFAULT_SPLIT_FRACTIONS, "splits": {}}
    for name, rows in splits.items():
        queries = sorted({normalize_query(p.query) for p in rows})
        info["splits"][name] = {
            "pairs": len(rows), "queries": len(queries),
            "queries_sha256": hashlib.sha256("\n".join(queries).encode()).hexdigest(),
        }
    return info


def write_split(splits: dict[str, list[Pair]], path: str | os.PathLike, seed: int = DEFAULT_SPLIT_SEED) -> None:
    """split.json beside a checkpoint. Training commands write it before they train: a run stopped midway
    leaves a best model, which must say which queries it held out (training.evaluate checks it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split_manifest(splits, seed), indent=2) + "\n")
