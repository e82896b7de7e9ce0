"""How well the human grades agree with themselves, and where a model's ROC-AUC comes from.

Two views of the labelled pairs of one or more datasets, with any pair-scoring models beside them:

1. Repeated judgements. A (query, keyword) pair graded more than once (on Home Depot: one search term
   graded against two or more product ids with the same title; text compared case-folded) shows how well
   the grades predict themselves: the ROC-AUC of the mean of a pair's other grades as each grade's score.
   Each model's ROC-AUC on the same grades (its score of the pair as the score) is set beside it, with a
   bootstrap interval of the difference that resamples the repeated pairs whole. Comparisons of two
   grades of one pair count as ties for every score (the other grades would rank a pair's own
   disagreement backwards by construction). A model that predicts a grade as well as the pair's other
   human grades do is at the labels' own reliability, whatever its ROC-AUC over all pairs.
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
from training.evaluate import check_split, load_dataset, load_model
from training.metrics import rank_auc
from training.precision import add_precision_arg, resolve

DEFAULT_DATASETS = ("homedepot:dev", "homedepot:test")


def group_ids(keys) -> np.ndarray:
    """Each row's group number, in order of first appearance."""
    ids: dict = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def repeat_rows(queries: list[str], keywords: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, their group) of the (query, keyword) pairs graded more than once; a query's case and
    spacing variants are one query, a keyword's case and spacing variants one keyword."""
    g = group_ids((normalize_query(q), " ".join(k.casefold().split())) for q, k in zip(queries, keywords))
    rows = np.flatnonzero(np.bincount(g)[g] > 1)
    return rows, group_ids(g[rows])


def others_mean(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose group has another row, the mean of the other rows' labels for each of them)."""
    counts, totals = np.bincount(groups), np.bincount(groups, labels)
    has = counts[groups] > 1
    return has, (totals[groups] - labels)[has] / (counts[groups] - 1)[has]


def _blocks(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group 0..max, from one sort rather than a scan of every row per group."""
    if not len(groups):
        return []
    order = np.argsort(groups, kind="stable")
    return np.split(order, np.cumsum(np.bincount(groups))[:-1])


def _within(y: np.ndarray, s: np.ndarray, blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per group: its positive-negative comparisons, and the positives' wins among them (ties half)."""
    pairs, wins = np.zeros(len(blocks)), np.zeros(len(blocks))
    for j, idx in enumerate(blocks):
        pos = y[idx].sum()
        pairs[j] = pos * (len(idx) - pos)
        if pairs[j]:
            wins[j] = rank_auc(y[idx] > 0, s[idx]) * pairs[j]
    return pairs, wins


def _auc_across(y: np.ndarray, s: np.ndarray, blocks: list[np.ndarray], within: tuple[np.ndarray, np.ndarray],
                draw: np.ndarray | None = None) -> float | None:
    """auc_across_groups from the groups' blocks and `_within` counts, which no resample changes."""
    pairs, wins = within
    if draw is None:
        sel, mult = np.arange(len(y)), np.ones(len(pairs))
    else:
        sel = np.concatenate([blocks[j] for j in draw])
        mult = np.bincount(draw, minlength=len(pairs)).astype(np.float64)
    n_pos = y[sel].sum()
    total = n_pos * (len(sel) - n_pos)
    inside = float(np.sum(mult ** 2 * pairs))
    if total - inside <= 0:
        return None
    all_wins = rank_auc(y[sel] > 0, s[sel]) * total
    return float((all_wins - np.sum(mult ** 2 * wins) + 0.5 * inside) / total)


def auc_across_groups(y: np.ndarray, s: np.ndarray, groups: np.ndarray, draw: np.ndarray | None = None
                      ) -> float | None:
    """ROC-AUC with every positive-negative comparison inside one group counted as a tie: a score that
    is a group's other rows' grades would otherwise rank each group's own disagreements backwards. None
    when no comparison crosses groups. `draw` (group numbers, repeats allowed) scores a bootstrap
    resample of whole groups, a group drawn m times holding m x m copies of its own comparisons."""
    y, blocks = np.asarray(y, dtype=np.float64), _blocks(np.asarray(groups))
    return _auc_across(y, s, blocks, _within(y, s, blocks), draw)


def repeat_agreement(labels: np.ndarray, binary: np.ndarray, rows: np.ndarray, groups: np.ndarray,
                     model_scores: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0) -> dict:
    """On the grades of pairs graded more than once: the ROC-AUC of the mean of a pair's other grades as
    a grade's score, and each model's on the same grades with the bootstrap interval (whole pairs
    resampled) of its difference from it; comparisons of two grades of one pair count as ties for both.
    `resamples` 0: no interval."""
    blocks = _blocks(groups)
    out: dict = {"groups": len(blocks), "grades": len(rows)}
    y = binary[rows].astype(np.float64)
    _, repeat = others_mean(labels[rows], groups)
    repeat_within = _within(y, repeat, blocks)
    repeat_auc = _auc_across(y, repeat, blocks, repeat_within) if len(rows) else None
    if repeat_auc is None:
        out["note"] = "no repeated grades of both classes across two pairs: ROC-AUC is undefined"
        return out
    a, b = np.array([(i, j) for idx in blocks for i in idx for j in idx if i != j]).T
    out["grade_correlation"] = float(np.corrcoef(labels[rows][a], labels[rows][b])[0, 1])
    out["same_class"] = float(np.mean(y[a] == y[b]))
    out["repeat_roc_auc"] = repeat_auc
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(blocks), len(blocks)) for _ in range(resamples)]
    repeat_draws = [_auc_across(y, repeat, blocks, repeat_within, d) for d in draws]
    out["models"] = {}
    for name, scores in model_scores.items():
        s = scores[rows]
        within = _within(y, s, blocks)
        row = {"roc_auc": _auc_across(y, s, blocks, within)}
        row["minus_repeat"] = row["roc_auc"] - repeat_auc
        diffs = [m - r for m, r in ((_auc_across(y, s, blocks, within, d), r) for d, r in zip(draws, repeat_draws))
                 if m is not None and r is not None]
        if diffs:
            row["low"], row["high"] = (float(v) for v in np.quantile(diffs, [0.025, 0.975]))
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
    """The share of the grades' variance that is the query's; the ROC-AUC of the mean of a pair's other
    grades of its query as its score (pairs whose query has another; comparisons inside a query count
    as ties, since it can only rank across queries); per model: ROC-AUC, that of its per-query mean
    score alone, and its mean ROC-AUC within queries."""
    q = group_ids(map(normalize_query, queries))
    counts = np.bincount(q)
    y = binary.astype(np.float64)
    has, other_mean = others_mean(labels, q)
    both = [idx for idx in _blocks(q) if 0 < y[idx].sum() < len(idx)]
    out: dict = {"pairs": len(labels), "queries": len(counts), "queries_with_both_classes": len(both),
                 "query_icc": query_icc(labels, q), "pairs_with_other_grades": int(has.sum()),
                 "other_grades_roc_auc": auc_across_groups(y[has], other_mean, group_ids(q[has])), "models": {}}
    for name, s in model_scores.items():
        mean_score = np.bincount(q, s) / counts
        out["models"][name] = {
            "roc_auc": rank_auc(y > 0, s), "query_mean_roc_auc": rank_auc(y > 0, mean_score[q]),
            "within_query_roc_auc": float(np.mean([rank_auc(y[i] > 0, s[i]) for i in both])) if both else None}
    return out


def analyse(labels: np.ndarray, binary: np.ndarray, queries: list[str], keywords: list[str],
            model_scores: dict[str, np.ndarray], resamples: int) -> dict:
    rows, groups = repeat_rows(queries, keywords)
    return {"repeated": repeat_agreement(labels, binary, rows, groups, model_scores, resamples),
            "queries": query_levels(labels, binary, queries, model_scores)}


def _canonical(spec: str) -> str:
    return "homedepot:test" if spec == "homedepot" else spec  # one dataset, one name


def agreement(datasets: list[str], models: list[tuple[str, str]], out: str | Path, data=None,
              resamples: int = 1000, positive_threshold: float | None = None, precision: str | None = None) -> dict:
    labels_seen = [label for label, _ in models]
    if len(set(labels_seen)) != len(labels_seen):
        raise ValueError(f"model labels must be distinct, got {labels_seen}")
    datasets = [_canonical(d) for d in datasets]
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"a dataset is named twice: {datasets}")
    precision = resolve(precision)
    loaded = []
    for spec in datasets:  # every dataset read and every split checked before any model scores
        pairs, rs, record = load_dataset(spec, data, positive_threshold)
        if pairs is None:
            raise ValueError(f"{spec}: no labelled pairs, so there are no grades to compare")
        if len(set(pairs.binary)) < 2:
            raise ValueError(f"{spec}: every labelled pair is {'relevant' if pairs.binary[0] else 'not relevant'} "
                             f"at the positive threshold {pairs.positive_threshold:g}, so ROC-AUC is undefined")
        if record:
            for label, model_spec in models:
                check_split(label, model_spec, record)
        loaded.append((spec, pairs, rs, record))
    report: dict = {"datasets": {}, "models": labels_seen, "resamples": resamples}
    pooled: dict = {"labels": [], "binary": [], "queries": [], "keywords": [], "scores": {}}
    for d, (spec, pairs, rs, record) in enumerate(loaded):
        scorers = [(label, load_model(model_spec, pairs, rs, precision)) for label, model_spec in models]
        scores: dict[str, np.ndarray] = {}
        for label, m in scorers:
            t = time.perf_counter()
            for variant, s in m.pair_scores(pairs).items():
                name = label + (f" ({variant})" if variant else "")
                if name in scores:
                    raise ValueError(f"two score columns are named {name!r}; rename a model")
                scores[name] = np.asarray(s, dtype=np.float64)
                if not np.isfinite(scores[name]).all():
                    raise ValueError(f"{name}: scores on {spec} that are not finite numbers")
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

    def table(head: str, rows: list[list]) -> list[str]:
        cols = head.split(" | ")
        return ["", f"| {head} |", "|" + "---|" * len(cols)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]

    sets = report["datasets"]
    lines = [f"# Label agreement: {', '.join(k for k in sets if ' + ' not in k)}", "",
             "How well the human grades predict themselves, and where ROC-AUC comes from (positive iff the grade "
             "is at the positive threshold or above). Written by `python -m training.agreement`; what each "
             "column means is in its docstring.", "",
             "## Repeated judgements", "",
             "A (query, keyword) graded more than once: the ROC-AUC of the mean of the pair's other grades as "
             "each grade's score, and each model's ROC-AUC on the same grades; two grades of one pair compared "
             "count as a tie for every score. Grade correlation and same side: over every two grades of one "
             f"pair. Intervals: 95%, bootstrap over the repeated pairs ({report['resamples']} resamples)."]
    lines += table("dataset | repeated pairs | grades | grade correlation | same side of the threshold "
                   "| ROC-AUC of the other grades",
                   [[cell(n), r["groups"], r["grades"], f(r.get("grade_correlation")), f(r.get("same_class")),
                     f(r.get("repeat_roc_auc"))] for n, r in ((n, d["repeated"]) for n, d in sets.items())])
    if report["models"]:
        lines += table("dataset | model | ROC-AUC on the repeated grades | minus the other grades'",
                       [[cell(n), cell(m), f(r["roc_auc"]), f"{r['minus_repeat']:+.3f}"
                         + (f" [{r['low']:+.3f}, {r['high']:+.3f}]" if "low" in r else "")]
                        for n, d in sets.items() for m, r in d["repeated"].get("models", {}).items()])
    lines += ["", "## Between and within queries", "",
              "The share of a grade's variance that is its query's (intra-class correlation), and the ROC-AUC of "
              "the mean of the query's other grades as a pair's score (from the labels, over the pairs whose "
              "query has other grades: a reference no model can see); per model its ROC-AUC, that of its "
              "per-query mean score alone, and its mean ROC-AUC within the queries that have both classes."]
    lines += table("dataset | pairs | queries | with both classes | query's share of variance "
                   "| ROC-AUC of the query's other grades",
                   [[cell(n), q["pairs"], q["queries"], q["queries_with_both_classes"], f(q["query_icc"]),
                     f(q["other_grades_roc_auc"])] for n, q in ((n, d["queries"]) for n, d in sets.items())])
    if report["models"]:
        lines += table("dataset | model | ROC-AUC | its query mean alone | within queries",
                       [[cell(n), cell(m), f(r["roc_auc"]), f(r["query_mean_roc_auc"]), f(r["within_query_roc_auc"])]
                        for n, d in sets.items() for m, r in d["queries"]["models"].items()])
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
