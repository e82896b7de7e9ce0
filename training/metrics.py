"""Metrics shared by evaluation, reports and serving benchmarks."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score


def pair_metrics(scores, labels, binary) -> dict:
    scores, labels, binary = map(np.asarray, (scores, labels, binary))
    return {"roc_auc": float(roc_auc_score(binary, scores)),
            "pr_auc": float(average_precision_score(binary, scores)),
            "spearman": float(spearmanr(scores, labels).statistic)}


def ndcg_at(ranked: list[str], gains: dict[str, float], k: int = 10) -> float:
    dcg = sum(gains.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], gains: dict[str, float], k: int = 100) -> float:
    return len(set(ranked[:k]) & set(gains)) / len(gains) if gains else 0.0


def mrr_at(ranked: list[str], gains: dict[str, float], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in gains:
            return 1.0 / (i + 1)
    return 0.0


def retrieval_metrics(rankings: dict[str, list[str]], qrels: dict[str, dict[str, float]]) -> dict:
    qids = [q for q in qrels if q in rankings]
    if not qids:
        raise ValueError("no query has both a ranking and relevance judgements")
    return {"ndcg@10": float(np.mean([ndcg_at(rankings[q], qrels[q]) for q in qids])),
            "recall@100": float(np.mean([recall_at(rankings[q], qrels[q]) for q in qids])),
            "mrr@10": float(np.mean([mrr_at(rankings[q], qrels[q]) for q in qids])),
            "queries": len(qids)}


def dev_roc_auc(scores, pairs) -> float:
    """ROC-AUC of scores on judged Home Depot pairs (positive iff relevance >= POSITIVE_THRESHOLD)."""
    from training.data import POSITIVE_THRESHOLD
    labels = [p.relevance for p in pairs]
    return pair_metrics(scores, labels, [int(y >= POSITIVE_THRESHOLD) for y in labels])["roc_auc"]
