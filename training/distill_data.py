"""Distillation set: the teacher scores labelled train pairs plus augmentation.

Sources: `labelled` (judged train pairs), `random` (random titles), `bm25` (BM25 top titles the
query was not judged with), `student` (the quick student's own top titles), `perturbed` (a labelled
pair with its query perturbed: token dropout, swap or misspelling), `synthetic` (queries made from
titles: with `--synthetic-style span` 1-4 consecutive words of a title, with `mixed` an ordered subset of
2-5 of its words that can join brand, sizes and type; paired with that title, its BM25 neighbours and a
random title; the train split has only 9.4k distinct queries, the corpus 54.7k titles). A synthetic query
is kept only when the split hashes it to train, so no dev or test query is ever among them. Written as TSV:
query, keyword_id, keyword, label (blank if unjudged), teacher_logit, source.

    python -m training.distill_data --teacher artifacts/teacher --student artifacts/model --out artifacts/distill.tsv
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.augment import TITLE_QUERIES, BM25Index, perturb
from training.data import (DISTILL_SOURCES, DataError, keyword_corpus, load_pairs, normalize_query, split_of,
                           split_pairs)
from training.precision import add_precision_arg, resolve
from training.teacher import CrossEncoder
from training.cli import fraction, nonnegative_int, one_line_errors, positive_int
from training.textfiles import finite_number, write_tsv

SOURCES = DISTILL_SOURCES


@dataclass
class DistillRow:
    query: str
    keyword_id: str
    keyword: str
    label: float | None
    teacher_logit: float
    source: str


def student_top_k(student_dir: str | Path, queries: list[str], corpus: dict[str, str], k: int) -> list[list[str]]:
    """Top-k keyword ids for each query from a TwinBERT checkpoint (exact cosine)."""
    import faiss

    from training.index import embed_texts
    from training.pretrained import minilm_dir
    from training.tokenize import WordPiece
    from training.twin import TwinBERT
    from training.export import KeywordEncoder
    model = TwinBERT.load(student_dir)
    ids, texts = list(corpus), list(corpus.values())
    kenc = KeywordEncoder(model).eval()
    tok = WordPiece(minilm_dir() / "tokenizer.json", model.config.keyword_max_len)
    kv = embed_texts(kenc, tok, texts, progress=True)
    qtok = WordPiece(minilm_dir() / "tokenizer.json", model.config.query_max_len)
    model.eval()  # queries through the query tower: it differs from the keyword tower with --separate-encoders
    qv = embed_texts(lambda i, m: model.embed(i, m, "query"), qtok, queries, progress=False)
    index = faiss.IndexFlatIP(kv.shape[1])
    index.add(kv / np.linalg.norm(kv, axis=1, keepdims=True))
    _, pos = index.search(qv / np.linalg.norm(qv, axis=1, keepdims=True), min(k, len(ids)))
    return [[ids[p] for p in row] for row in pos]


def build(teacher_dir, student_dir, data=None, n_random=1, n_bm25=1, n_student=1, perturb_frac=0.3,
          max_queries=0, seed=0, student_depth=100, precision: str | None = None, n_synthetic=0,
          synthetic_bm25=2, synthetic_style="span") -> list[DistillRow]:
    if synthetic_style not in TITLE_QUERIES:
        raise ValueError(f"synthetic_style {synthetic_style!r}: one of {sorted(TITLE_QUERIES)}")
    rng = random.Random(seed)
    teacher = CrossEncoder.load(teacher_dir)  # first: a wrong path fails before minutes of BM25 and embedding
    all_pairs = load_pairs(data)
    corpus = keyword_corpus(all_pairs)
    corpus_ids = list(corpus)
    splits = split_pairs(all_pairs)
    train = splits["train"]
    held_out = {normalize_query(p.query) for p in splits["dev"] + splits["test"]}
    if max_queries:  # quick profile: a seeded subset of train queries
        queries = sorted({normalize_query(p.query) for p in train})
        keep = set(rng.sample(queries, min(max_queries, len(queries))))
        train = [p for p in train if normalize_query(p.query) in keep]
    judged: dict[str, set[str]] = {}
    query_text: dict[str, str] = {}
    for p in train:
        judged.setdefault(normalize_query(p.query), set()).add(p.keyword_id)
        query_text.setdefault(normalize_query(p.query), p.query)
    qkeys = list(query_text)
    rows: list[tuple[str, str, float | None, str]] = [(p.query, p.keyword_id, p.relevance, "labelled") for p in train]
    for q in qkeys:
        for _ in range(n_random):
            rows.append((query_text[q], rng.choice(corpus_ids), None, "random"))
    bm25 = BM25Index(corpus_ids, list(corpus.values())) if n_bm25 or n_synthetic else None
    if n_bm25:
        tops = bm25.top_k([query_text[q] for q in qkeys], n_bm25 + 20)
        for q, top in zip(qkeys, tops):
            rows += [(query_text[q], kid, None, "bm25") for kid in [t for t in top if t not in judged[q]][:n_bm25]]
    if n_student and student_dir:
        # the hardest unjudged title, plus a sample of the rest of the top `student_depth`: the
        # candidates that res re-ranks at serving time
        tops = student_top_k(student_dir, [query_text[q] for q in qkeys], corpus, max(student_depth, n_student + 20))
        for q, top in zip(qkeys, tops):
            cands = [t for t in top if t not in judged[q]]
            picked = cands[:1] + rng.sample(cands[1:], min(n_student - 1, len(cands) - 1)) if cands else []
            rows += [(query_text[q], kid, None, "student") for kid in picked]
    if n_synthetic:
        rows += synthetic_rows(corpus, bm25, n_synthetic, synthetic_bm25, rng, synthetic_style)
    rows += perturbed_rows(train, perturb_frac, rng, held_out)
    teacher.precision = resolve(precision)
    logits = teacher.score([r[0] for r in rows], [corpus[r[1]] for r in rows], progress=True)
    return [DistillRow(q, kid, corpus[kid], label, float(s), src) for (q, kid, label, src), s in zip(rows, logits)]


def perturbed_rows(train: list, frac: float, rng: random.Random, held_out: set[str]
                   ) -> list[tuple[str, str, float, str]]:
    """A seeded sample of `frac` of the train pairs with their query perturbed, keeping the label. A
    perturbation can land on a held-out query (`held_out`: the dev and test queries, normalised):
    "fence gates" with a word dropped is "gates", a test query; 81-92 rows per seed over the full
    train split, 3-9 of them judged test pairs. Those are dropped, so that no dev or test query is
    trained on. Any other perturbed query is kept: it is in no split, whatever `split_of` would hash
    it to (dropping those too, as a first version did, threw away a fifth of the perturbed rows)."""
    rows = []
    for p in rng.sample(train, int(frac * len(train))):
        q2, how = perturb(p.query, rng)
        if how != "none" and normalize_query(q2) not in held_out:
            rows.append((q2, p.keyword_id, p.relevance, "perturbed"))
    return rows


def synthetic_rows(corpus: dict[str, str], bm25, n: int, n_bm25: int, rng: random.Random, style: str = "span"
                   ) -> list[tuple[str, str, None, str]]:
    """Queries made from `n` sampled titles (augment.TITLE_QUERIES[style]), each paired with its title,
    its top `n_bm25` other BM25 titles and one random title; only queries the split puts in train."""
    make = TITLE_QUERIES[style]
    ids = list(corpus)
    made: dict[str, str] = {}
    for kid in rng.sample(ids, min(n, len(ids))):
        q = make(corpus[kid], rng)
        if q and split_of(q) == "train" and normalize_query(q) not in made:
            made[normalize_query(q)] = kid
    queries = list(made)
    rows = []
    tops = bm25.top_k(queries, n_bm25 + 1) if n_bm25 else [[] for _ in queries]
    for q, top in zip(queries, tops):
        source = made[q]
        rows.append((q, source, None, "synthetic"))
        rows += [(q, kid, None, "synthetic") for kid in [t for t in top if t != source][:n_bm25]]
        rows.append((q, rng.choice(ids), None, "synthetic"))
    return rows


TSV_COLUMNS = ("query", "keyword_id", "keyword", "label", "teacher_logit", "source")


def write_rows(rows: list[DistillRow], path: str | Path) -> None:
    write_tsv(path, TSV_COLUMNS, ([r.query, r.keyword_id, r.keyword, "" if r.label is None else r.label,
                                   f"{r.teacher_logit:.5f}", r.source] for r in rows))


def read_rows(path: str | Path, sources: tuple[str, ...] = SOURCES) -> list[DistillRow]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in TSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not a distillation set (training.distill_data): missing columns {missing}")
        rows = []
        for lineno, r in enumerate(reader, start=2):
            if r["source"] not in sources:
                continue
            try:
                rows.append(DistillRow(r["query"], r["keyword_id"], r["keyword"],
                                       finite_number(r["label"], "label", f"{path}:{lineno}") if r["label"] else None,
                                       finite_number(r["teacher_logit"] or "", "teacher_logit", f"{path}:{lineno}"),
                                       r["source"]))
            except ValueError as e:
                raise DataError(str(e)) from None
        return rows


@one_line_errors("distill_data")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", help="quick TwinBERT checkpoint for the student's own top-K negatives")
    ap.add_argument("--out", required=True)
    ap.add_argument("--random", type=nonnegative_int, default=1, help="random titles per train query")
    ap.add_argument("--bm25", type=nonnegative_int, default=1, help="BM25 hard negatives per train query")
    ap.add_argument("--student-negatives", type=nonnegative_int, default=None,
                    help="unjudged titles per train query from the --student's top list: the top one plus a "
                         "random sample of the rest (default: 1 with --student, 0 without)")
    ap.add_argument("--student-depth", type=positive_int, default=100, help="how deep the student's top list goes")
    ap.add_argument("--perturb", type=fraction, default=0.3, help="fraction of labelled pairs with a perturbed copy")
    ap.add_argument("--synthetic", type=nonnegative_int, default=0,
                    help="titles sampled to make synthetic queries from (each: its title, BM25 neighbours, a random title)")
    ap.add_argument("--synthetic-bm25", type=nonnegative_int, default=2, help="BM25 neighbours per synthetic query")
    ap.add_argument("--synthetic-style", choices=sorted(TITLE_QUERIES), default="span",
                    help="how a synthetic query is cut from its title: span (1-4 consecutive words, ending on a "
                         "word of letters) or mixed (an ordered subset of 2-5 words: brand, sizes with their "
                         "units, type; docs/experiments.md, 2026-12-07)")
    ap.add_argument("--max-queries", type=nonnegative_int, default=0, help="0 = every train query")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    add_precision_arg(ap)
    args = ap.parse_args(argv)
    if args.student_negatives and not args.student:
        ap.error("--student-negatives needs --student, the checkpoint whose top lists they come from")
    if args.student_negatives is None:
        args.student_negatives = 1 if args.student else 0
        if not args.student:
            print("distill_data: no --student, so no student top-K negatives", flush=True)
    torch.set_num_threads(args.threads)
    rows = build(args.teacher, args.student, args.data, args.random, args.bm25, args.student_negatives,
                 args.perturb, args.max_queries, args.seed, args.student_depth, args.precision, args.synthetic,
                 args.synthetic_bm25, args.synthetic_style)
    write_rows(rows, args.out)
    counts = {s: sum(r.source == s for r in rows) for s in SOURCES}
    print(f"distill_data: {len(rows)} teacher-scored pairs {json.dumps(counts)} -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
