"""Evaluation datasets in two generic formats, plus the Home Depot adapter.

Labelled pairs (CSV or TSV with a header): `query,keyword,label`; other columns are ignored.
  `label` is a graded or binary relevance; `training.evaluate --positive-threshold` says what counts
  as relevant (default 2.5, Home Depot's scale). UTF-8, with or without a byte-order mark.
  CSV fields follow RFC 4180 quoting; TSV (.tsv/.tab) fields are taken as they are, except one quoted
  whole as a CSV writer quotes it (`"1/2"" pipe"` is `1/2" pipe`).
BEIR layout (a directory): `corpus.jsonl` ({"_id", "title"?, "text"}), `queries.jsonl` ({"_id", "text"}),
  `qrels/<split>.tsv` (header `query-id corpus-id score`, optional). Score > 0 is relevant; the score is
  the gain. Ids are strings or integers, each once. Where the qrels also judge documents not relevant
  (score 0), the judged pairs are labelled pairs too, so cross models (teacher, BiLSTM) are scored on them.

Home Depot: judged pairs of one split; retrieval over all distinct titles, a query's relevant items
being its judged titles with relevance >= 2.5 and gain relevance - 1.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from training.data import (POSITIVE_THRESHOLD, Pair, keyword_corpus, load_pairs, normalize_query, split_manifest,
                           split_pairs)
from training.textfiles import csv_records, finite_number, is_number, jsonl_objects, need_file, utf8_lines


@dataclass
class LabelledPairs:
    queries: list[str]
    keywords: list[str]
    labels: list[float]
    positive_threshold: float = POSITIVE_THRESHOLD

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def binary(self) -> list[int]:
        return [int(y >= self.positive_threshold) for y in self.labels]


@dataclass
class RetrievalSet:
    corpus: dict[str, str]                      # keyword id -> text
    queries: dict[str, str]                     # query id -> text
    qrels: dict[str, dict[str, float]] = field(default_factory=dict)  # query id -> {keyword id: gain > 0}


def pairs_from_homedepot(pairs: list[Pair]) -> LabelledPairs:
    return LabelledPairs([p.query for p in pairs], [p.keyword for p in pairs], [p.relevance for p in pairs])


def retrieval_from_homedepot(all_pairs: list[Pair], split: list[Pair]) -> RetrievalSet:
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = {}
    for p in split:
        qid = normalize_query(p.query)
        queries.setdefault(qid, p.query)
        if p.relevance >= POSITIVE_THRESHOLD:
            gains = qrels.setdefault(qid, {})
            gains[p.keyword_id] = max(gains.get(p.keyword_id, 0.0), p.relevance - 1.0)
    queries = {q: t for q, t in queries.items() if q in qrels}  # only queries with a relevant item
    return RetrievalSet(keyword_corpus(all_pairs), queries, qrels)


def load_homedepot(data_dir=None, split: str = "test") -> tuple[LabelledPairs, RetrievalSet]:
    return load_homedepot_recorded(data_dir, split)[:2]


def load_homedepot_recorded(data_dir=None, split: str = "test") -> tuple[LabelledPairs, RetrievalSet, dict]:
    """load_homedepot's pairs and retrieval set, and the record of the split they come from: its seed,
    how queries are bucketed, and its pair and query counts with the checksum of its query list
    (training.data.split_manifest), from the one read of the data."""
    all_pairs = load_pairs(data_dir)
    splits = split_pairs(all_pairs)
    manifest = split_manifest(splits)
    record = {"name": split, "seed": manifest["seed"], "method": manifest["method"], **manifest["splits"][split]}
    return pairs_from_homedepot(splits[split]), retrieval_from_homedepot(all_pairs, splits[split]), record


_QUOTED_WHOLE = re.compile(r'"((?:[^"]|"")*)"')


def _unquoted(field: str) -> str:
    m = _QUOTED_WHOLE.fullmatch(field)
    return m.group(1).replace('""', '"') if m else field


_TSV_SUFFIXES = (".tsv", ".tab")


def _pairs_delimiter(path: Path, first_line: str) -> tuple[str, str]:
    """(delimiter, what chose it): the suffix, or for another one (.txt) what the header is split by."""
    suffix = path.suffix.lower()
    if suffix in _TSV_SUFFIXES or suffix == ".csv":
        return ("\t" if suffix in _TSV_SUFFIXES else ","), "suffix"
    return ("\t" if "\t" in first_line else ","), "first line"


def read_labelled_pairs(path: str | Path, positive_threshold: float = POSITIVE_THRESHOLD) -> LabelledPairs:
    """Pairs from a CSV (RFC 4180 quoting: a field may hold commas, quotes and newlines when quoted) or
    TSV (.tsv/.tab, or another suffix with a tab in the header: fields as they are, no quoting, so a
    field cannot hold a tab or a newline and a quote is text). Every malformed row is an error naming
    its line: a field count other than the header's, a blank query or keyword, a label that is not a
    finite number."""
    path = need_file(path)
    lines = utf8_lines(path)
    first = next(lines, "")
    delimiter, chosen_by = _pairs_delimiter(path, first)
    dialect = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if delimiter == "\t" else dict(delimiter=",", strict=True)
    sep = "tab" if delimiter == "\t" else "comma"
    context = f" ({sep}-separated, from the file's {chosen_by})"
    rows = []
    for where, _, (query, keyword, label) in csv_records(path, itertools.chain([first], lines),
                                                          ("query", "keyword", "label"), context, **dialect):
        if delimiter == "\t":  # a field a CSV writer quoted whole (`"1/2"" pipe"`) reads as it was written
            query, keyword = _unquoted(query), _unquoted(keyword)
        if not query.strip() or not keyword.strip():
            raise ValueError(f"{where}: blank {'query' if not query.strip() else 'keyword'}")
        rows.append((query, keyword, finite_number(label, "label", where)))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    q, k, y = map(list, zip(*rows))
    return LabelledPairs(q, k, y, positive_threshold)


def write_labelled_pairs(pairs: LabelledPairs, path: str | Path) -> None:
    """CSV with quoting as needed, or (.tsv) plain tab-separated fields, as read_labelled_pairs reads them."""
    path = Path(path)
    rows = [("query", "keyword", "label"), *zip(pairs.queries, pairs.keywords, pairs.labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() in _TSV_SUFFIXES:
            for n, row in enumerate(rows):
                fields = [str(c) for c in row]
                if any(ch in c for c in fields for ch in "\t\r\n"):
                    raise ValueError(f"pair {n} has a tab or newline in a field, which TSV cannot hold; write a .csv")
                # a field that is quoted whole would read back unquoted: quote it as CSV does
                fields = ['"' + c.replace('"', '""') + '"' if _QUOTED_WHOLE.fullmatch(c) else c for c in fields]
                f.write("\t".join(fields) + "\n")
        else:
            csv.writer(f).writerows(rows)


def read_beir(directory: str | Path, split: str = "test") -> RetrievalSet:
    """A BEIR directory: every document needs a string `text` (`title`, a string, is put before it), ids
    are strings or integers (a qrels id `7` finds `"_id": 7`), each id once; qrels scores are finite
    numbers. Qrels rows of queries that queries.jsonl lacks, or that name documents corpus.jsonl lacks,
    are counted in a warning."""
    return read_beir_judged(directory, split)[0]


# a BEIR score above 0 is relevant: LabelledPairs counts a label >= this as relevant
BEIR_POSITIVE = math.ulp(0.0)


def read_beir_judged(directory: str | Path, split: str = "test") -> tuple[RetrievalSet, LabelledPairs | None]:
    """read_beir's retrieval set, and every judged (query, document) pair of the qrels whose query and
    document are in the files, as labelled pairs with the score as label (relevant above 0) for the pair
    metrics (ROC-AUC, PR-AUC, Spearman). None unless they hold both classes: most BEIR sets judge no
    document not relevant (score 0 or below), and ROC-AUC needs both."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory (a BEIR layout: corpus.jsonl, queries.jsonl, qrels/)")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: BEIR layout needs {name}")
    path = d / "qrels" / f"{split}.tsv"
    if not path.is_file():
        present = sorted(p.stem for p in (d / "qrels").glob("*.tsv")) if (d / "qrels").is_dir() else []
        raise FileNotFoundError(f"{d}: no qrels/{split}.tsv; splits present: {present or 'none'}"
                                + (f" (pick one with beir:{d}:SPLIT)" if present else ""))
    corpus: dict[str, str] = {}
    empty = []
    for where, i, o in jsonl_objects(d / "corpus.jsonl", ("_id", "text")):
        if not isinstance(o["text"], str) or not isinstance(o.get("title", ""), (str, type(None))):
            raise ValueError(f"{where}: \"text\" and \"title\" must be strings")
        corpus[i] = " ".join(x for x in (o.get("title"), o["text"]) if x).strip()
        if not corpus[i]:
            empty.append(i)
    if not corpus:
        raise ValueError(f"{d / 'corpus.jsonl'}: no documents")
    queries: dict[str, str] = {}
    for where, i, o in jsonl_objects(d / "queries.jsonl", ("_id", "text")):
        if not isinstance(o["text"], str) or not o["text"].strip():
            raise ValueError(f"{where}: \"text\" must be a non-blank string, got {o['text']!r}")
        queries[i] = o["text"]
    qrels: dict[str, dict[str, float]] = {}
    seen: dict[tuple[str, str], tuple[int, float]] = {}
    first = True
    for n, line in enumerate(utf8_lines(path), 1):
        row = line.rstrip("\r\n").split("\t")
        if not any(c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ValueError(f"{path}:{n}: want 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
        qid, did, score = (c.strip() for c in row)
        header, first = first and not is_number(score), False  # the header: the first row not blank
        if header:
            continue
        gain = finite_number(score, "score", f"{path}:{n}")
        if not qid or not did:
            raise ValueError(f"{path}:{n}: blank {'query' if not qid else 'corpus'} id")
        if (qid, did) in seen:
            if seen[qid, did][1] != gain:
                raise ValueError(f"{path}:{n}: {qid} {did} judged again with another score "
                                 f"({gain} here, {seen[qid, did][1]} on line {seen[qid, did][0]})")
            continue
        seen[qid, did] = (n, gain)
        if gain > 0:
            qrels.setdefault(qid, {})[did] = gain
    unknown = sorted(q for q in qrels if q not in queries)
    if unknown:
        warnings.warn(f"{path}: {len(unknown)} judged query id(s) are not in queries.jsonl, e.g. {unknown[:3]}; "
                      "they are not evaluated", stacklevel=2)
    missing = {did for q, rel in qrels.items() if q in queries for did in rel if did not in corpus}
    if empty:
        warnings.warn(f"{d / 'corpus.jsonl'}: {len(empty)} document(s) have neither title nor text, e.g. "
                      f"{empty[:3]}", stacklevel=2)
    if missing:  # they stay judged (recall counts them), but no model can retrieve them
        warnings.warn(f"{path}: {len(missing)} relevant corpus id(s) are not in corpus.jsonl, e.g. "
                      f"{sorted(missing)[:3]}; they count against recall", stacklevel=2)
    all_queries = queries
    queries = {q: t for q, t in queries.items() if q in qrels}
    if not queries:
        raise ValueError(f"{d}: no query in queries.jsonl has a relevant judgement in qrels/{path.name}")
    if all(did not in corpus for q in queries for did in qrels[q]):
        raise ValueError(f"{d}: none of the relevant documents of qrels/{path.name} is in corpus.jsonl")
    judged = [(q, did, gain) for (q, did), (_, gain) in seen.items() if q in all_queries and did in corpus]
    pairs = None
    if any(gain <= 0 for *_, gain in judged) and any(gain > 0 for *_, gain in judged):
        pairs = LabelledPairs([all_queries[q] for q, _, _ in judged], [corpus[did] for _, did, _ in judged],
                              [gain for *_, gain in judged], BEIR_POSITIVE)
    return RetrievalSet(corpus, queries, {q: qrels[q] for q in queries}), pairs


def write_beir(rs: RetrievalSet, directory: str | Path, split: str = "test") -> None:
    d = Path(directory)
    (d / "qrels").mkdir(parents=True, exist_ok=True)
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, t in rs.corpus.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}, ensure_ascii=False) + "\n")
    with open(d / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, t in rs.queries.items():
            f.write(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n")
    with open(d / f"qrels/{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, rel in rs.qrels.items():
            for did, g in rel.items():
                f.write(f"{q}\t{did}\t{g}\n")
