"""How well the human grades agree with themselves, and where a model's ROC-AUC comes from.

Two views of the labelled pairs of one or more datasets, with any pair-scoring models beside them:

1. Repeated judgements. A (query, keyword) pair graded more than once (on Home Depot: one search term
   graded against two product ids with the same title; text compared case-folded) shows how well one
   human grade predicts another: the ROC-AUC of a repeat grade as the score for a grade's binary label,
   over every ordered pair of two grades of one (query, keyword). Each model's ROC-AUC on the same
   grades (its score of the pair as the score) is set beside it, with a bootstrap interval of the
   difference that resamples the repeated pairs whole. A model that predicts a grade as well as a second
   human grade does is at the labels' own reliability, whatever its ROC-AUC over all pairs.
2. Between and within queries. The share of a grade's variance that is its query's (the intra-class
   correlation); the ROC-AUC of the mean of a pair's other grades of its query as its score (from the
   labels: a reference no model can see) and, per model, its ROC-AUC, the ROC-AUC of its per-query mean
   score alone, and its mean ROC-AUC within queries (over the queries that have both classes). ROC-AUC
   over all pairs mixes the two.

    python -m training.agreement --out reports/agreement --model "teacher=teacher:artifacts/teacher"

Datasets are `training.evaluate`'s (`--dataset`, repeatable; default the dev and test queries of the
Home Depot split, and the two pooled); models are its pair scorers (`--model LABEL=KIND[:PATH]`), checked
to hold the queries out as it checks them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from training.cli import finite_float, nonnegative_int, positive_int
from training.data import DataError, normalize_query
from training.datasets import LabelledPairs
from training.evaluate import check_split, load_dataset, load_model
from training.metrics import rank_auc
from training.precision import add_precision_arg, resolve

DEFAULT_DATASETS = ("homedepot:dev", "homedepot:test")


def repeat_groups(pairs: LabelledPairs) -> list[np.ndarray]:
    """Row indices of each (query, keyword) graded more than once; a query's case and spacing variants
    are one query, a keyword's case and spacing variants one keyword."""
    by: dict[tuple[str, str], list[int]] = {}
    for i, (q, k) in enumerate(zip(pairs.queries, pairs.keywords)):
        by.setdefault((normalize_query(q), " ".join(k.casefold().split())), []).append(i)
    return [np.array(v) for v in by.values() if len(v) > 1]


def _ordered(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(graded row, other row, group) of every ordered pair of two rows of one group."""
    graded, other, group = [], [], []
    for j, idx in enumerate(groups):
        for a in idx:
            for b in idx:
                if a != b:
                    graded.append(a), other.append(b), group.append(j)
    return np.array(graded, int), np.array(other, int), np.array(group, int)


def _interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def repeat_agreement(labels: np.ndarray, binary: np.ndarray, groups: list[np.ndarray],
                     model_scores: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0) -> dict:
    """A repeat grade's ROC-AUC, and each model's on the same grades with the bootstrap interval of
    its difference from the repeat grade's (`resamples` 0: no interval)."""
    graded, other, group = _ordered(groups)
    out: dict = {"groups": len(groups), "grades": int(sum(len(g) for g in groups)), "ordered_pairs": len(graded)}
    y = binary[graded].astype(bool)
    if not len(y) or y.all() or not y.any():
        out["note"] = "no repeated grades of both classes: ROC-AUC is undefined"
        return out
    repeat = labels[other]
    out["grade_correlation"] = float(np.corrcoef(labels[graded], repeat)[0, 1])
    out["same_class"] = float(np.mean(binary[graded] == binary[other]))
    out["repeat_roc_auc"] = rank_auc(y, repeat)
    blocks = [np.flatnonzero(group == j) for j in range(len(groups))]
    rng = np.random.default_rng(seed)
    resampled = [np.concatenate([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))])
                 for _ in range(resamples)]
    resampled = [s for s in resampled if 0 < y[s].sum() < len(s)]
    out["models"] = {}
    for name, scores in model_scores.items():
        s = scores[graded]
        row = {"roc_auc": rank_auc(y, s)}
        row["minus_repeat"] = row["roc_auc"] - out["repeat_roc_auc"]
        if resampled:
            row["low"], row["high"] = _interval([rank_auc(y[i], s[i]) - rank_auc(y[i], repeat[i]) for i in resampled])
        out["models"][name] = row
    return out


def query_icc(labels: np.ndarray, q: np.ndarray) -> float | None:
    """The share of a grade's variance that is its query's: the intra-class correlation, one-way ANOVA
    estimate for groups of unequal size (None with fewer than two queries or no query of two grades)."""
    counts = np.bincount(q)
    n, g = len(labels), len(counts)
    if g < 2 or n <= g:
        return None
    means = np.bincount(q, labels) / counts
    msb = float(np.sum(counts * (means - labels.mean()) ** 2)) / (g - 1)
    msw = float(np.sum((labels - means[q]) ** 2)) / (n - g)
    k0 = (n - float(np.sum(counts ** 2)) / n) / (g - 1)
    return (msb - msw) / (msb + (k0 - 1) * msw) if msb + (k0 - 1) * msw > 0 else None


def query_levels(labels: np.ndarray, binary: np.ndarray, queries: list[str],
                 model_scores: dict[str, np.ndarray]) -> dict:
    """The share of the grades' variance that is the query's, the ROC-AUC of the mean of each pair's
    other grades of its query (pairs whose query has another), and per model: ROC-AUC, that of its
    per-query mean score alone, and its mean ROC-AUC within queries."""
    ids: dict[str, int] = {}
    q = np.array([ids.setdefault(normalize_query(x), len(ids)) for x in queries])
    counts = np.bincount(q)
    others = counts[q] > 1
    other_mean = (np.bincount(q, labels)[q] - labels)[others] / (counts[q] - 1)[others]
    y = binary.astype(bool)
    both = [np.flatnonzero(q == j) for j in range(len(counts))]
    both = [idx for idx in both if 0 < y[idx].sum() < len(idx)]
    out: dict = {"pairs": len(labels), "queries": len(counts), "queries_with_both_classes": len(both),
                 "query_icc": query_icc(labels, q), "pairs_with_other_grades": int(others.sum()),
                 "other_grades_roc_auc": rank_auc(y[others], other_mean) if 0 < y[others].sum() < others.sum()
                 else None, "models": {}}
    for name, s in model_scores.items():
        mean_score = np.bincount(q, s) / counts
        out["models"][name] = {
            "roc_auc": rank_auc(y, s), "query_mean_roc_auc": rank_auc(y, mean_score[q]),
            "within_query_roc_auc": float(np.mean([rank_auc(y[i], s[i]) for i in both])) if both else None}
    return out


def analyse(labels: np.ndarray, binary: np.ndarray, queries: list[str], keywords: list[str],
            model_scores: dict[str, np.ndarray], resamples: int) -> dict:
    pairs = LabelledPairs(queries, keywords, list(labels))
    return {"repeated": repeat_agreement(labels, binary, repeat_groups(pairs), model_scores, resamples),
            "queries": query_levels(labels, binary, queries, model_scores)}


def agreement(datasets: list[str], models: list[tuple[str, str]], out: str | Path, data=None,
              resamples: int = 1000, positive_threshold: float | None = None, precision: str | None = None) -> dict:
    labels_seen = [label for label, _ in models]
    if len(set(labels_seen)) != len(labels_seen):
        raise ValueError(f"model labels must be distinct, got {labels_seen}")
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"a dataset is named twice: {datasets}")
    precision = resolve(precision)
    report: dict = {"datasets": {}, "models": [label for label, _ in models], "resamples": resamples}
    pooled: dict = {"labels": [], "binary": [], "queries": [], "keywords": [], "scores": {}}
    for d, spec in enumerate(datasets):
        pairs, rs, record = load_dataset(spec, data, positive_threshold)
        if pairs is None:
            raise ValueError(f"{spec}: no labelled pairs, so there are no grades to compare")
        if record:
            for label, model_spec in models:
                check_split(label, model_spec, record)
        scores: dict[str, np.ndarray] = {}
        for label, model_spec in models:
            t = time.perf_counter()
            m = load_model(model_spec, pairs, rs, precision)
            for variant, s in m.pair_scores(pairs).items():
                scores[label + (f" ({variant})" if variant else "")] = np.asarray(s, dtype=np.float64)
            print(f"agreement: {spec}: {label} scored {len(pairs)} pairs in {time.perf_counter() - t:.0f}s", flush=True)
        labels, binary = np.asarray(pairs.labels, dtype=np.float64), np.asarray(pairs.binary, dtype=np.int64)
        report["datasets"][spec] = analyse(labels, binary, pairs.queries, pairs.keywords, scores, resamples)
        if record:
            report["datasets"][spec]["split"] = record
        pooled["labels"].append(labels), pooled["binary"].append(binary)
        pooled["queries"] += [f"{d}\t{q}" for q in pairs.queries]  # a query of two datasets is two queries
        pooled["keywords"] += pairs.keywords
        for name, s in scores.items():
            pooled["scores"].setdefault(name, []).append(s)
    if len(datasets) > 1:
        report["datasets"][" + ".join(datasets)] = analyse(
            np.concatenate(pooled["labels"]), np.concatenate(pooled["binary"]), pooled["queries"], pooled["keywords"],
            {k: np.concatenate(v) for k, v in pooled["scores"].items()}, resamples)
    write_report(report, Path(out))
    return report


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")

    def f(v, digits: int = 3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"# Label agreement: {', '.join(k for k in report['datasets'] if ' + ' not in k)}", "",
             "How well one human grade predicts another, and where ROC-AUC comes from (positive iff the grade "
             "is at the positive threshold or above). Written by `python -m training.agreement`; what each "
             "column means is in its docstring.", "",
             "## Repeated judgements", "",
             "A (query, keyword) graded more than once: the ROC-AUC of a repeat grade as the score for a grade's "
             "label, over every ordered pair of two grades of one (query, keyword), and each model's ROC-AUC on the "
             f"same grades. Intervals: 95%, bootstrap over the repeated pairs ({report['resamples']} resamples).", "",
             "| dataset | repeated pairs | grades | grade correlation | same side of the threshold "
             "| ROC-AUC of a repeat grade |", "|---|---|---|---|---|---|"]
    for name, d in report["datasets"].items():
        r = d["repeated"]
        lines.append(f"| {cell(name)} | {r['groups']} | {r['grades']} | {f(r.get('grade_correlation'))} "
                     f"| {f(r.get('same_class'))} | {f(r.get('repeat_roc_auc'))} |")
    if report["models"]:
        lines += ["", "| dataset | model | ROC-AUC on the repeated grades | minus a repeat grade's |",
                  "|---|---|---|---|"]
        for name, d in report["datasets"].items():
            for model, r in d["repeated"].get("models", {}).items():
                iv = f" [{r['low']:+.3f}, {r['high']:+.3f}]" if "low" in r else ""
                lines.append(f"| {cell(name)} | {cell(model)} | {f(r['roc_auc'])} | {r['minus_repeat']:+.3f}{iv} |")
    lines += ["", "## Between and within queries", "",
              "The share of a grade's variance that is its query's (intra-class correlation), and the ROC-AUC of "
              "the mean of the query's other grades as a pair's score (from the labels, over the pairs whose "
              "query has other grades: a reference no model can see); per model its ROC-AUC, that of its "
              "per-query mean score alone, and its mean ROC-AUC within the queries that have both classes.", "",
              "| dataset | pairs | queries | with both classes | query's share of variance "
              "| ROC-AUC of the query's other grades |", "|---|---|---|---|---|---|"]
    for name, d in report["datasets"].items():
        q = d["queries"]
        lines.append(f"| {cell(name)} | {q['pairs']} | {q['queries']} | {q['queries_with_both_classes']} "
                     f"| {f(q['query_icc'])} | {f(q['other_grades_roc_auc'])} |")
    if report["models"]:
        lines += ["", "| dataset | model | ROC-AUC | its query mean alone | within queries |", "|---|---|---|---|---|"]
        for name, d in report["datasets"].items():
            for model, r in d["queries"]["models"].items():
                lines.append(f"| {cell(name)} | {cell(model)} | {f(r['roc_auc'])} | {f(r['query_mean_roc_auc'])} "
                             f"| {f(r['within_query_roc_auc'])} |")
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append",
                    help="homedepot[:split] or pairs:FILE, repeatable (default: homedepot:dev and homedepot:test, "
                         "and the two pooled)")
    ap.add_argument("--model", action="append", default=[],
                    help="LABEL=KIND:PATH, a pair scorer as training.evaluate takes it (teacher, twin, bilstm, "
                         "bm25, minilm); repeatable; none = the grades alone")
    ap.add_argument("--data", help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--out", default="reports/agreement", help="report path without suffix (.md and .json)")
    ap.add_argument("--bootstrap", type=nonnegative_int, default=1000,
                    help="bootstrap resamples for the intervals; 0 = none")
    ap.add_argument("--positive-threshold", type=finite_float,
                    help="pairs:FILE only: a label at or above it counts as relevant (default 2.5)")
    ap.add_argument("--threads", type=positive_int, default=2)
    add_precision_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [tuple(m.split("=", 1)) if "=" in m else (m, m) for m in args.model]
    try:
        agreement(args.dataset or list(DEFAULT_DATASETS), models, args.out, args.data, args.bootstrap,
                  args.positive_threshold, args.precision)
    except (ValueError, OSError, DataError) as e:  # bad flags or data: one line, not a traceback
        raise SystemExit(f"agreement: {e}") from None


if __name__ == "__main__":
    main()
