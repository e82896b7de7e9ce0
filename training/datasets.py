"""Evaluation datasets in two generic formats, plus the Home Depot adapter.

Labelled pairs (CSV or TSV with a header): `query,keyword,label` and optionally `keyword_id`.
  `label` is a graded or binary relevance; `training.evaluate --positive-threshold` says what counts
  as relevant (default 2.5, Home Depot's scale). UTF-8, with or without a byte-order mark.
BEIR layout (a directory): `corpus.jsonl` ({"_id", "title"?, "text"}), `queries.jsonl` ({"_id", "text"}),
  `qrels/<split>.tsv` (header `query-id corpus-id score`). Score > 0 is relevant; the score is the gain.

Home Depot: judged pairs of one split; retrieval over all distinct titles, a query's relevant items
being its judged titles with relevance >= 2.5 and gain relevance - 1.
"""
from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from training.data import POSITIVE_THRESHOLD, Pair, keyword_corpus, load_pairs, normalize_query, split_pairs


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
    all_pairs = load_pairs(data_dir)
    rows = split_pairs(all_pairs)[split]
    return pairs_from_homedepot(rows), retrieval_from_homedepot(all_pairs, rows)


def read_labelled_pairs(path: str | Path, positive_threshold: float = POSITIVE_THRESHOLD) -> LabelledPairs:
    path = Path(path)
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    rows = []
    # utf-8-sig: a spreadsheet's byte-order mark must not end up in the first column's name
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f, delimiter=delimiter)
            need = {"query", "keyword", "label"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ValueError(f"{path}: header must have {sorted(need)}, got {reader.fieldnames}")
            for r in reader:
                if r["query"] is None or r["keyword"] is None or r["label"] is None:
                    raise ValueError(f"{path}:{reader.line_num}: a row needs query, keyword and label")
                try:
                    label = float(r["label"])
                except ValueError:
                    raise ValueError(f"{path}:{reader.line_num}: label must be a number, got {r['label']!r}") from None
                rows.append((r["query"], r["keyword"], label))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    if not rows:
        raise ValueError(f"{path}: no pairs")
    q, k, y = map(list, zip(*rows))
    return LabelledPairs(q, k, y, positive_threshold)


def write_labelled_pairs(pairs: LabelledPairs, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        w.writerow(["query", "keyword", "label"])
        w.writerows(zip(pairs.queries, pairs.keywords, pairs.labels))


def read_beir(directory: str | Path, split: str = "test") -> RetrievalSet:
    d = Path(directory)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: BEIR layout needs {name}")
    corpus = {str(o["_id"]): " ".join(x for x in (o.get("title"), o.get("text")) if x).strip()
              for o in _jsonl(d / "corpus.jsonl", ("_id",))}
    queries = {str(o["_id"]): o["text"] for o in _jsonl(d / "queries.jsonl", ("_id", "text"))}
    qrels: dict[str, dict[str, float]] = {}
    path = d / f"qrels/{split}.tsv"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
                if not any(c.strip() for c in row):
                    continue
                if len(row) != 3:
                    raise ValueError(f"{path}:{n}: want 3 tab-separated columns (query-id, corpus-id, score), "
                                     f"got {len(row)}")
                qid, did, score = (c.strip() for c in row)
                try:
                    gain = float(score)
                except ValueError:
                    if n == 1:  # the header line
                        continue
                    raise ValueError(f"{path}:{n}: score must be a number, got {score!r}") from None
                if gain > 0:
                    qrels.setdefault(qid, {})[did] = gain
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    missing = {did for rel in qrels.values() for did in rel if did not in corpus}
    if missing:  # they stay judged (recall counts them), but no model can retrieve them
        warnings.warn(f"{path}: {len(missing)} relevant corpus id(s) are not in corpus.jsonl, e.g. "
                      f"{sorted(missing)[:3]}; they count against recall", stacklevel=2)
    queries = {q: t for q, t in queries.items() if q in qrels}
    if not queries:
        raise ValueError(f"{d}: no query in queries.jsonl has a relevant judgement in {path.name}")
    return RetrievalSet(corpus, queries, qrels)


def _jsonl(path: Path, need: tuple[str, ...]):
    """Objects of a JSON-lines file; a bad line is named by path:line."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    o = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
                if not isinstance(o, dict) or any(k not in o for k in need):
                    raise ValueError(f"{path}:{n}: each line must be an object with {list(need)}")
                yield o
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None


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
