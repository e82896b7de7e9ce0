"""Evaluation datasets in two generic formats, plus the Home Depot adapter.

Labelled pairs (CSV or TSV with a header): `query,keyword,label` and optionally `keyword_id`.
  `label` is a graded or binary relevance; `--positive-threshold` says what counts as relevant.
BEIR layout (a directory): `corpus.jsonl` ({"_id", "title"?, "text"}), `queries.jsonl` ({"_id", "text"}),
  `qrels/<split>.tsv` (header `query-id corpus-id score`). Score > 0 is relevant; the score is the gain.

Home Depot: judged pairs of one split; retrieval over all distinct titles, a query's relevant items
being its judged titles with relevance >= 2.5 and gain relevance - 1.
"""
from __future__ import annotations

import csv
import json
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
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        need = {"query", "keyword", "label"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: header must have {sorted(need)}, got {reader.fieldnames}")
        rows = [(r["query"], r["keyword"], float(r["label"])) for r in reader]
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
    corpus = {}
    with open(d / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                corpus[str(o["_id"])] = " ".join(x for x in (o.get("title"), o.get("text")) if x).strip()
    with open(d / "queries.jsonl", encoding="utf-8") as f:
        queries = {str(o["_id"]): o["text"] for o in map(json.loads, filter(str.strip, f))}
    qrels: dict[str, dict[str, float]] = {}
    with open(d / f"qrels/{split}.tsv", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader, None)
        for qid, did, score in reader:
            if float(score) > 0:
                qrels.setdefault(qid, {})[did] = float(score)
    queries = {q: t for q, t in queries.items() if q in qrels}
    return RetrievalSet(corpus, queries, qrels)


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
