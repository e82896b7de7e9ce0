"""Evaluate any model on any dataset, side by side with baselines, into one report.

Models (`--model LABEL=KIND[:PATH]`, repeatable): bm25, minilm (zero-shot pretrained MiniLM-L6
bi-encoder, mean pooling), teacher:DIR, twin:DIR (reports its cos and res crossings), twin-served:DIR (the same
twin with its queries encoded as serving runs them, serving.fast_bert at serving's default precision;
twin-served-fp32:DIR and twin-served-bf16:DIR pick one; keywords stay eager, as the served store's
vectors are), bilstm:DIR (the student's inference form, fp32; bilstm-bf16:DIR runs its LSTM in bf16),
rerank:teacher:DIR@TWIN_DIR or rerank:bilstm[-bf16]:DIR@TWIN_DIR (the cross model re-orders the twin's
cosine top-100, or with @DEPTH (1..100) appended its top DEPTH as `retrieve_rerank` does: retrieval metrics
only).
Datasets: `homedepot[:SPLIT]` (default test), `pairs:FILE` (labelled pairs CSV/TSV), `beir:DIR[:SPLIT]`
(qrels/SPLIT.tsv, default test).
Metrics: ROC-AUC, PR-AUC, Spearman on labelled pairs; nDCG@10, recall@100, MRR@10 for retrieval
over the whole corpus (n/a for a cross model on its own); CPU ms per pair; parameters.
Against the baselines: each model's retrieval metrics minus the retrieval baseline's (`--baseline`,
default the first bm25 model) and its ROC-AUC over the reference's (`--reference`, default the first
teacher), with 95% intervals from a paired bootstrap over queries (`--bootstrap` resamples; 0 = off):
a difference whose interval spans 0 is not one this query set can resolve.
`--per-query FILE` also writes each retrieval row's metrics per query (TSV), for finding where a
model loses to another.

    python -m training.evaluate --dataset homedepot:test --out reports/eval \\
        --model BM25=bm25 --model "MiniLM zero-shot=minilm" --model teacher=teacher:artifacts/teacher \\
        --model TwinBERT=twin:artifacts/twin --model BiLSTM=bilstm:artifacts/bilstm
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.artifacts import sha256_file
from training.data import SPLITS, DataError, normalize_query
from training.datasets import (LabelledPairs, RetrievalSet, load_homedepot_recorded, read_beir_judged,
                               read_labelled_pairs)
from training.metrics import (RETRIEVAL_METRICS, bootstrap_auc_ratio, bootstrap_mean_diff, pair_metrics,
                              per_query_retrieval, retrieval_metrics)
from training.precision import add_precision_arg, resolve
from training.pretrained import minilm_dir
from training.textfiles import write_tsv
from training.tokenize import WordPiece
from training.cli import finite_float, nonnegative_int, positive_int

TOP = 100
# corpus texts a forward pass in evaluation (training.index.embed_texts): the evaluation's timings were
# measured at 256
CORPUS_BATCH = 256


def _median_ms(fn, repeats: int = 15) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


TIE_MARGIN = 32  # extra results fetched so that a group of equal scores cut at k is cut the same way


def first_position_first(scores: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Each row of `pos` ordered by score, highest first, equal scores by corpus position, cut to k.
    Every model breaks ties this way: several ids share one title (2,095 in the Home Depot corpus)
    and get equal scores; BM25 listed them in corpus order, FAISS in reverse, so a judged id and its
    unjudged twin could swap places between models (up to 0.004 of nDCG@10 on the test queries)."""
    order = np.lexsort((pos, -scores), axis=1)[:, :k]
    return np.take_along_axis(pos, order, axis=1)


def _rank(qv: np.ndarray, kv: np.ndarray, k: int) -> np.ndarray:
    """Positions of each query's top k keywords by cosine, ties by corpus position (k capped at the
    corpus size: FAISS pads a short result with -1, which would index the last keyword again and again)."""
    import faiss
    k = min(k, len(kv))
    index = faiss.IndexFlatIP(kv.shape[1])
    index.add(np.ascontiguousarray(kv / np.linalg.norm(kv, axis=1, keepdims=True).clip(1e-8), dtype=np.float32))
    scores, pos = index.search(np.ascontiguousarray(qv / np.linalg.norm(qv, axis=1, keepdims=True).clip(1e-8),
                                                     dtype=np.float32), min(k + TIE_MARGIN, len(kv)))
    return first_position_first(scores, pos, k)


class BM25Model:
    layers, params = 0, 0

    def __init__(self, pairs: LabelledPairs | None, rs: RetrievalSet | None):
        from training.augment import BM25Index
        texts = list(dict.fromkeys(list(rs.corpus.values() if rs else []) + (pairs.keywords if pairs else [])))
        self.text_pos = {t: i for i, t in enumerate(texts)}
        self.index = BM25Index([str(i) for i in range(len(texts))], texts)
        self.rs = rs

    def pair_scores(self, pairs: LabelledPairs) -> dict[str, np.ndarray]:
        out = np.empty(len(pairs), np.float32)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(pairs.queries):
            by_query.setdefault(q, []).append(i)
        for q, rows in by_query.items():
            s = self.index.scores(q)
            out[rows] = s[[self.text_pos[pairs.keywords[i]] for i in rows]]
        return {"": out}

    def rankings(self, rs: RetrievalSet) -> dict[str, dict[str, list[str]]]:
        # the index holds each distinct text once; every id with that text ranks there (in corpus
        # order), as the bi-encoders rank identical vectors side by side
        ids_of: dict[int, list[str]] = {}
        for i, t in rs.corpus.items():
            ids_of.setdefault(self.text_pos[t], []).append(i)
        qids = list(rs.queries)
        # texts only the labelled pairs hold (a product's second title) have no id here: fetch enough
        # beyond them that every list still holds TOP ids; equal scores in text order, which is the
        # order of each text's first id in the corpus (first_position_first, as for every model)
        k = TOP + len(self.text_pos) - len(ids_of)
        pos, scores = self.index.search([rs.queries[q] for q in qids], k + TIE_MARGIN)
        tops = first_position_first(scores, pos, k)
        return {"": {q: [i for p in top for i in ids_of.get(int(p), [])][:TOP] for q, top in zip(qids, tops)}}

    def latency_ms_per_pair(self) -> float | None:
        return None


class BiEncoderModel:
    """Embeds queries and keywords separately; `encode(texts, side)` -> [N, D]."""

    cache_dir: Path | None = None

    def pair_scores(self, pairs: LabelledPairs) -> dict[str, np.ndarray]:
        q, k = self.encode(pairs.queries, "query"), self.encode(pairs.keywords, "keyword")
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-8)
        k = k / np.linalg.norm(k, axis=1, keepdims=True).clip(1e-8)
        return {"": (q * k).sum(1)}

    def corpus_vectors(self, rs: RetrievalSet) -> np.ndarray:
        # the method is part of the key: vectors cached by the full-width batches before length batches
        # (training.index.embed_texts) are embedded again, once
        key = hashlib.sha256(("\n".join(rs.corpus.values()) + self.fingerprint + ":length-batches").encode()
                             ).hexdigest()[:16]
        path = self.cache_dir / f"{key}.npy" if self.cache_dir else None
        if path and path.is_file():
            return np.load(path)
        kv = self.encode(list(rs.corpus.values()), "keyword", progress=True)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, kv)
        return kv

    def rankings(self, rs: RetrievalSet) -> dict[str, dict[str, list[str]]]:
        ids, qids = list(rs.corpus), list(rs.queries)
        pos = _rank(self.encode([rs.queries[q] for q in qids], "query"), self.corpus_vectors(rs), TOP)
        return {"": {q: [ids[p] for p in row] for q, row in zip(qids, pos)}}


class MiniLMModel(BiEncoderModel):
    def __init__(self):
        from training.twin import Encoder
        self.encoder = Encoder(6).eval()
        self.tok = {"query": WordPiece(minilm_dir() / "tokenizer.json", 16),
                    "keyword": WordPiece(minilm_dir() / "tokenizer.json", 32)}
        self.layers = 6
        self.params = sum(p.numel() for p in self.encoder.parameters())
        # the weights themselves: another TWINBERT_PRETRAINED must not reuse these cached corpus vectors
        self.fingerprint = "mean:" + sha256_file(minilm_dir() / "model.safetensors")

    def mean_pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(ids, mask)
        mf = mask.unsqueeze(-1).float()
        return (h * mf).sum(1) / mf.sum(1).clamp_min(1)

    @torch.inference_mode()
    def encode(self, texts, side, progress=False):
        from training.index import embed_texts
        return embed_texts(self.mean_pool, self.tok[side], texts, CORPUS_BATCH, progress, "embed (MiniLM)")

    @torch.inference_mode()
    def latency_ms_per_pair(self) -> float:
        # the query padded to 16 tokens, as the TwinBERT rows time theirs
        kv = torch.randn(TOP, 384)
        qi, qm = map(torch.from_numpy, self.tok["query"](["cordless drill"]))
        return _median_ms(lambda: self.mean_pool(qi, qm) @ kv.T) / TOP


def served_query_encoder(enc, query_max_len: int, precision: str = "auto"):
    """(module, description): the eager student's query encoder as serving.encoder.QueryEncoder runs its
    export at `precision` (serving's default `auto`): traced as training.export saves it, then
    serving.fast_bert's forward pass, or the trace oneDNN-optimised (serving.encoder.optimized) where
    `auto` picks it (no AMX-BF16) or the fast path does not apply."""
    from serving.encoder import encoder_forward
    from training.export import encoder_shape, trace_checked
    cfg = enc.bert.config
    return encoder_forward(trace_checked(enc, cfg.vocab_size, query_max_len), encoder_shape(enc), precision,
                           cfg.vocab_size, query_max_len, "the eager student's query encoder")


class TwinModel(BiEncoderModel):
    def __init__(self, path, query_precision: str | None = None):
        """`query_precision` (fp32, bf16, auto): queries go through serving's forward pass at that
        precision (served_query_encoder) while keywords keep the eager encoder, as the served store's
        vectors do; None: the eager student on both sides."""
        from training.twin import TwinBERT
        self.model = TwinBERT.load(path)
        self.layers = self.model.config.num_layers
        self.params = sum(p.numel() for p in self.model.parameters())  # before a frozen module replaces any
        self.eager_query_encoder = self.model.query_encoder
        if query_precision is not None:
            # an attribute of its own, so a shared keyword encoder stays the eager one
            self.model.query_encoder, query_path = served_query_encoder(
                self.eager_query_encoder, self.model.config.query_max_len, query_precision)
            print(f"evaluate: {path}: queries through the served encoder: {query_path}", flush=True)
        c = self.model.config
        # the title length too: a checkpoint's config can cut titles elsewhere than its weights were cached at
        self.fingerprint = sha256_file(Path(path, "model.safetensors")) + f":keyword_max_len={c.keyword_max_len}"
        self.tok = {"query": WordPiece(minilm_dir() / "tokenizer.json", c.query_max_len),
                    "keyword": WordPiece(minilm_dir() / "tokenizer.json", c.keyword_max_len)}

    @torch.inference_mode()
    def encode(self, texts, side, progress=False):
        from training.index import embed_texts
        return embed_texts(lambda i, m: self.model.embed(i, m, side), self.tok[side], texts, CORPUS_BATCH, progress,
                           "embed (TwinBERT)")

    def pair_scores(self, pairs):
        from training.distill import twin_pair_scores
        return twin_pair_scores(self.model, pairs.queries, pairs.keywords)

    @torch.inference_mode()
    def rankings(self, rs):
        from kernels import pool_cross
        ids, qids = list(rs.corpus), list(rs.queries)
        kv = self.corpus_vectors(rs)
        qi, qm = map(torch.from_numpy, self.tok["query"]([rs.queries[q] for q in qids]))
        states = self.model.query_encoder(qi, qm)
        qv = pool_cross(states, qm, self.model.pool_cross.params())[0].numpy()
        pos = _rank(qv, kv, TOP)
        cos = {q: [ids[p] for p in row] for q, row in zip(qids, pos)}
        # res re-scores the cos top-100 (the serving path): one crossing over the cached vectors
        _, res = pool_cross(states, qm, self.model.pool_cross.params(), torch.from_numpy(kv[pos]), "res")
        order = torch.argsort(res, dim=1, descending=True, stable=True).numpy()  # ties keep the cos order
        reranked = {q: [ids[pos[i, j]] for j in order[i]] for i, q in enumerate(qids)}
        return {"cos": cos, "res": reranked}

    @torch.inference_mode()
    def latency_ms_per_pair(self) -> dict[str, float]:
        from kernels import pool_cross
        qi, qm = map(torch.from_numpy, self.tok["query"](["cordless drill with battery"]))
        kv = torch.randn(1, TOP, self.model.pool_cross.params().dim)
        p = self.model.pool_cross.params()
        return {c: _median_ms(lambda c=c: pool_cross(self.model.query_encoder(qi, qm), qm, p, kv, c)) / TOP
                for c in ("cos", "res")}

    def query_encode_ms(self, blocks: int = 5, repeats: int = 20) -> dict[str, float]:
        """One query padded to query_max_len (16 tokens) through the eager encoder and through what serving
        runs at its default precision (served_query_encoder). Alternating blocks, median of all calls."""
        enc = self.eager_query_encoder
        served, _ = served_query_encoder(enc, self.model.config.query_max_len)
        qi, qm = map(torch.from_numpy, self.tok["query"](["cordless drill 18 volt lithium ion kit"]))
        fns = {"eager": lambda: enc(qi, qm), "served": lambda: served(qi, qm)}
        samples = {name: [] for name in fns}
        with torch.inference_mode():
            for fn in fns.values():  # TorchScript's profiling executor optimises over its first calls
                for _ in range(3):
                    fn()
            for _ in range(blocks):
                for name, fn in fns.items():
                    for _ in range(repeats):
                        t = time.perf_counter()
                        fn()
                        samples[name].append((time.perf_counter() - t) * 1000)
        return {name: statistics.median(s) for name, s in samples.items()}


class PairModel:
    """Cross models (teacher, BiLSTM): score pairs jointly; no retrieval over a corpus."""

    def __init__(self, model, layers: int, batch_for_latency: int, params: int | None = None):
        self.model, self.layers, self.batch = model, layers, batch_for_latency
        self.params = sum(p.numel() for p in model.parameters()) if params is None else params

    def pair_scores(self, pairs):
        return {"": self.model.score(pairs.queries, pairs.keywords)}

    def rankings(self, rs):
        return None

    def latency_ms_per_pair(self) -> float:
        qs = ["cordless drill with battery"] * self.batch
        ks = ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit with 2 Batteries"] * self.batch
        return _median_ms(lambda: self.model.score(qs, ks, batch_size=self.batch), 10) / self.batch


class RerankModel:
    """A cross model (teacher, BiLSTM) re-ordering the top `depth` of a twin's cosine top-100 (the
    rest stays in cosine order): what `retrieve_rerank` serves with DEPTH = depth, and at depth 100 the
    ceiling for what the twin's `res` re-scoring of the same candidates could reach. Retrieval metrics only.
    (`make eval` and the pipeline have the teacher re-order the top 30: 100 took 552 of the evaluation's
    1,162 seconds on an fp32 host, for 0.0009 of nDCG@10.)"""

    def __init__(self, cross: PairModel, twin: TwinModel, depth: int = TOP):
        if not 1 <= depth <= TOP:
            raise ValueError(f"re-rank depth must be between 1 and {TOP}, got {depth}")
        self.cross, self.twin, self.depth = cross, twin, depth
        self.layers, self.params = cross.layers, cross.params

    def pair_scores(self, pairs):
        return {}

    def rankings(self, rs):
        cos = self.twin.rankings(rs)["cos"]
        out = {}
        for q in tqdm(list(cos), desc="re-rank", unit="query", mininterval=5):
            top = cos[q][:self.depth]
            s = self.cross.model.score([rs.queries[q]] * len(top), [rs.corpus[i] for i in top])
            out[q] = [top[j] for j in np.argsort(-np.asarray(s), kind="stable")] + cos[q][self.depth:]
        return {"": out}

    def latency_ms_per_pair(self):
        return self.cross.latency_ms_per_pair()


# the BiLSTM's model kinds and the precision of the inference form each scores
BILSTM_KINDS = {"bilstm": "fp32", "bilstm-bf16": "bf16"}


def _rerank_parts(kind_path: str) -> tuple[str, str, int]:
    """rerank:KIND:DIR@TWIN_DIR[@DEPTH] -> (KIND:DIR, TWIN_DIR, DEPTH)."""
    cross, at, twin = kind_path.partition(":")[2].rpartition("@")
    depth = TOP
    if at and twin.lstrip("-").isdigit():  # rerank:KIND:DIR@TWIN_DIR@DEPTH (an integer last field)
        depth = int(twin)  # RerankModel checks its range
        cross, at, twin = cross.rpartition("@")
    if not at or cross.split(":")[0] not in ("teacher", *BILSTM_KINDS):
        raise ValueError(f"rerank needs rerank:teacher:DIR@TWIN_DIR or rerank:bilstm[-bf16]:DIR@TWIN_DIR "
                         f"(optionally @DEPTH), got {kind_path!r}")
    return cross, twin, depth


def checkpoint_dirs(kind_path: str) -> list[Path]:
    """The checkpoint directories a model spec reads (none for bm25 and minilm)."""
    kind, _, path = kind_path.partition(":")
    if kind == "rerank":
        cross, twin, _ = _rerank_parts(kind_path)
        return checkpoint_dirs(cross) + [Path(twin)]
    return [Path(path)] if path else []


def check_split(label: str, spec: str, record: dict) -> None:
    """Refuse a model whose checkpoint records another split: the queries held out from it are not the
    ones evaluated on, so some of them may be among those it trained on. Checkpoints without split.json
    (older ones) are let through."""
    for d in checkpoint_dirs(spec):
        f = d / "split.json"
        if not f.is_file():
            print(f"evaluate: {label}: {d} records no split (no split.json), so it cannot be checked", flush=True)
            continue
        try:
            recorded = json.loads(f.read_text())
            seed, checksum = recorded["seed"], recorded["splits"][record["name"]]["queries_sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{label}: {f} is not a split record ({type(e).__name__}: {e})") from None
        if (seed, checksum) != (record["seed"], record["queries_sha256"]):
            raise ValueError(
                f"{label}: {d} was trained on another split of the data ({f}: seed {seed}, {record['name']} "
                f"queries sha256 {str(checksum)[:12]}; this data: seed {record['seed']}, "
                f"{record['queries_sha256'][:12]}), so its held-out queries are not these; retrain it on this "
                "data or evaluate it on the data it was trained on")


def load_model(kind_path: str, pairs, rs, precision: str = "fp32"):
    kind, _, path = kind_path.partition(":")
    if kind == "rerank":
        cross, twin, depth = _rerank_parts(kind_path)
        return RerankModel(load_model(cross, pairs, rs, precision), TwinModel(twin), depth)
    if kind in ("twin", "teacher", *BILSTM_KINDS) and not path:
        raise ValueError(f"{kind} needs a checkpoint directory: {kind}:DIR")
    if kind == "bm25":
        return BM25Model(pairs, rs)
    if kind == "minilm":
        return MiniLMModel()
    if kind == "twin":
        return TwinModel(path)
    if kind.startswith("twin-served"):  # twin-served[-fp32|-bf16]:DIR, serving's query path (default auto)
        precision = kind[len("twin-served"):].lstrip("-") or "auto"
        if precision not in ("auto", "fp32", "bf16") or not path:
            raise ValueError(f"twin-served needs twin-served:DIR, twin-served-fp32:DIR or twin-served-bf16:DIR; "
                             f"got {kind_path!r}")
        return TwinModel(path, precision)
    if kind == "teacher":
        from training.teacher import CrossEncoder
        m = CrossEncoder.load(path)
        m.precision = precision  # the students are timed and scored as served, in fp32
        return PairModel(m, m.config.num_layers, 100)
    if kind in BILSTM_KINDS:
        from training.bilstm import BiLSTMStudent
        student = BiLSTMStudent.load(path)  # scored and timed in its inference form (fp32: as the re-ranker exports it)
        return PairModel(student.inference(BILSTM_KINDS[kind]), 0, 64,
                         params=sum(p.numel() for p in student.parameters()))
    raise ValueError(f"unknown model kind {kind!r} (bm25, minilm, teacher:DIR, twin:DIR, twin-served:DIR, bilstm:DIR, "
                     "bilstm-bf16:DIR, rerank:teacher:DIR@TWIN_DIR[@DEPTH], rerank:bilstm[-bf16]:DIR@TWIN_DIR[@DEPTH])")


def load_dataset(spec: str, data=None, positive_threshold: float | None = None
                 ) -> tuple[LabelledPairs | None, RetrievalSet | None, dict | None]:
    """(labelled pairs, retrieval set, the Home Depot split's record) of a dataset spec; None for what
    it does not have."""
    kind, _, arg = spec.partition(":")
    if positive_threshold is not None and kind != "pairs":
        raise ValueError(f"a positive threshold applies to pairs:FILE only (Home Depot's is fixed at 2.5), got {spec!r}")
    if kind == "homedepot":
        if (arg or "test") not in SPLITS:
            raise ValueError(f"unknown split {arg!r} ({', '.join(SPLITS)})")
        return load_homedepot_recorded(data, arg or "test")
    if kind == "pairs":
        if not arg:
            raise ValueError("pairs:FILE needs a file")
        print(f"evaluate: {spec}: labelled pairs without a corpus: pair metrics only, no retrieval metrics",
              flush=True)
        if positive_threshold is None:
            return read_labelled_pairs(arg), None, None
        return read_labelled_pairs(arg, positive_threshold), None, None
    if kind == "beir":
        if not arg:
            raise ValueError("beir:DIR needs a directory")
        directory, _, split = arg.rpartition(":")
        if Path(arg).is_dir() or not directory or not split or "/" in split:  # no split given: test
            directory, split = arg, "test"
        rs, judged = read_beir_judged(directory, split)
        if judged is None:
            print(f"evaluate: {spec}: its qrels judge no document not relevant (score 0), so there are no "
                  "labelled pairs: retrieval metrics only, and cross models (teacher, BiLSTM) get no row values",
                  flush=True)
        return judged, rs, None
    raise ValueError(f"unknown dataset {spec!r} (homedepot[:split], pairs:FILE, beir:DIR[:split])")


def _first_queries(pairs: LabelledPairs, rs: RetrievalSet | None, n: int
                   ) -> tuple[LabelledPairs, RetrievalSet | None]:
    """The first n retrieval queries (those with a relevant keyword) and the labelled pairs of those
    queries; without a retrieval set, the pairs of the first n distinct queries. Nothing is dropped
    when n covers every query."""
    if rs is not None:
        if n >= len(rs.queries):
            return pairs, rs
        keep = list(rs.queries)[:n]
        rs = RetrievalSet(rs.corpus, {q: rs.queries[q] for q in keep}, {q: rs.qrels[q] for q in keep})
        wanted = {normalize_query(rs.queries[q]) for q in keep}
    else:
        wanted = set(list(dict.fromkeys(map(normalize_query, pairs.queries)))[:n])
    if pairs is not None:  # by normalised text: a query's case and spacing variants are one query (its split key)
        idx = [i for i, q in enumerate(pairs.queries) if normalize_query(q) in wanted]
        pairs = LabelledPairs([pairs.queries[i] for i in idx], [pairs.keywords[i] for i in idx],
                              [pairs.labels[i] for i in idx], pairs.positive_threshold)
    return pairs, rs


def evaluate(models: list[tuple[str, str]], dataset: str, out: str | Path, data=None,
             cache_dir: str | Path | None = "artifacts/cache", max_queries: int = 0,
             bootstrap: int = 1000, baseline: str | None = None, reference: str | None = None,
             positive_threshold: float | None = None, precision: str | None = None,
             per_query_out: str | Path | None = None) -> dict:
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be distinct, got {labels}")
    for name, flag in ((baseline, "--baseline"), (reference, "--reference")):
        if name is not None and name not in labels:
            raise ValueError(f"{flag} {name!r} is not one of the models: {labels}")
    pairs, rs, record = load_dataset(dataset, data, positive_threshold)
    kind = dataset.partition(":")[0]
    if record:
        for label, spec in models:
            check_split(label, spec, record)
    if max_queries:
        pairs, rs = _first_queries(pairs, rs, max_queries)
        if record:
            record["evaluated_queries"] = max_queries
    if kind == "beir" and pairs is not None and len(set(pairs.binary)) < 2:  # e.g. the first N queries' judgements
        print(f"evaluate: {dataset}: the judged pairs of these queries are of one class: retrieval metrics only",
              flush=True)
        pairs = None
    if pairs is not None and len(set(pairs.binary)) < 2:
        raise ValueError(f"{dataset}: every labelled pair is {'relevant' if pairs.binary[0] else 'not relevant'} "
                         f"at the positive threshold {pairs.positive_threshold:g}, so ROC-AUC is undefined"
                         + ("; set --positive-threshold" if dataset.startswith("pairs:") else ""))
    BiEncoderModel.cache_dir = Path(cache_dir) if cache_dir else None
    precision = resolve(precision)
    rows = []
    per_query: dict[str, dict] = {}     # row model -> {metric: {query id: value}}
    pair_scores: dict[str, np.ndarray] = {}
    origin: dict[str, tuple[str, str]] = {}   # row model -> (model label, kind)
    for label, spec in models:
        print(f"evaluate: {label} ({spec})", flush=True)
        t = time.perf_counter()
        m = load_model(spec, pairs, rs, precision)
        scores = m.pair_scores(pairs) if pairs else {}
        ranks = m.rankings(rs) if rs else None
        lat = m.latency_ms_per_pair()
        encode = m.query_encode_ms() if isinstance(m, TwinModel) else None
        for variant in (scores or ranks or {"": None}):
            row = {"model": label + (f" ({variant})" if variant else ""), "kind": spec.split(":")[0],
                   "transformer_layers": m.layers, "params": m.params}
            if pairs and variant in scores:
                row.update(pair_metrics(scores[variant], pairs.labels, pairs.binary))
                pair_scores[row["model"]] = np.asarray(scores[variant])
            if ranks and variant in ranks:
                row.update(retrieval_metrics(ranks[variant], rs.qrels))
                per_query[row["model"]] = per_query_retrieval(ranks[variant], rs.qrels)
            ms = lat.get(variant) if isinstance(lat, dict) else lat
            row["cpu_ms_per_pair"] = round(ms, 4) if ms is not None else None
            if encode:
                row["query_encode_ms"] = round(encode["eager"], 3)
                row["served_query_encode_ms"] = round(encode["served"], 3)
            if row["model"] in origin:
                raise ValueError(f"two report rows are named {row['model']!r}; rename a model")
            rows.append(row)
            origin[row["model"]] = (label, row["kind"])
        print(f"evaluate: {label} done in {time.perf_counter() - t:.0f}s: "
              + "; ".join(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
                          for r in rows[-len(scores or ranks or [1]):]), flush=True)
    report = {"dataset": dataset, "pairs": len(pairs) if pairs else 0,
              "queries": len(rs.queries) if rs else 0, "corpus": len(rs.corpus) if rs else 0,
              "threads": torch.get_num_threads(), "teacher_precision": precision, "rows": rows}
    if record:
        report["split"] = record
    if bootstrap:
        t = time.perf_counter()
        report["comparison"] = compare(rows, origin, per_query, pair_scores, pairs, bootstrap, baseline, reference)
        against = [x for x in (report["comparison"]["baseline"], report["comparison"]["reference"]) if x]
        print(f"evaluate: {bootstrap} bootstrap resamples against {' and '.join(against) or 'nothing'} in "
              f"{time.perf_counter() - t:.0f}s", flush=True)
    write_report(report, Path(out))
    if per_query_out:
        write_per_query(per_query, rs, Path(per_query_out))
    return report


def write_per_query(per_query: dict[str, dict], rs: RetrievalSet | None, out: Path) -> None:
    """One TSV row per (query, retrieval row): query id, query text, model, then each retrieval metric."""
    if not per_query:
        print(f"evaluate: no retrieval rows, so {out} is not written", flush=True)
        return
    write_tsv(out, ["query_id", "query", "model", *RETRIEVAL_METRICS],
              ([q, rs.queries[q], model, *(f"{metrics[m][q]:.6f}" for m in RETRIEVAL_METRICS)]
               for model, metrics in per_query.items() for q in metrics["ndcg@10"]))
    print(f"evaluate: per-query metrics of {len(per_query)} rows -> {out}", flush=True)


def _pick(rows, origin: dict, wanted: str | None, kind: str, has: dict) -> str | None:
    """The first row of model `wanted` (a twin has a cos and a res row), else the first row of `kind`,
    among the rows in `has`."""
    for r in rows:
        label, spec_kind = origin[r["model"]]
        if r["model"] in has and (label == wanted if wanted else spec_kind == kind):
            return r["model"]
    return None


def compare(rows, origin, per_query, pair_scores, pairs, resamples: int, baseline: str | None,
            reference: str | None) -> dict:
    """Paired bootstrap (over queries) of each row against the retrieval baseline and the pair reference;
    adds `vs_baseline` / `roc_auc_vs_reference` to the rows and returns what was compared."""
    base = _pick(rows, origin, baseline, "bm25", per_query)
    ref = _pick(rows, origin, reference, "teacher", pair_scores)
    if baseline and base is None:
        raise ValueError(f"--baseline {baseline!r} has no retrieval metrics on this dataset")
    if reference and ref is None:
        raise ValueError(f"--reference {reference!r} has no ROC-AUC on this dataset")
    for r in rows:
        name = r["model"]
        if base and name in per_query and name != base:
            r["vs_baseline"] = {m: bootstrap_mean_diff(per_query[name][m], per_query[base][m], resamples)
                                for m in RETRIEVAL_METRICS}
        if ref and name in pair_scores and name != ref:
            r["roc_auc_vs_reference"] = bootstrap_auc_ratio(pair_scores[name], pair_scores[ref], pairs.binary,
                                                            pairs.queries, resamples)
    return {"baseline": base, "reference": ref, "resamples": resamples, "level": 0.95}


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    cols = [("model", "model"), ("transformer_layers", "layers"), ("params", "params"), ("roc_auc", "ROC-AUC"),
            ("pr_auc", "PR-AUC"), ("spearman", "Spearman"), ("ndcg@10", "nDCG@10"), ("recall@100", "R@100"),
            ("mrr@10", "MRR@10"), ("cpu_ms_per_pair", "CPU ms/pair"), ("query_encode_ms", "query encode ms"),
            ("served_query_encode_ms", "served encode ms")]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a model named with | must not split its table row

    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}" if v < 10 else f"{v:.1f}"
        if isinstance(v, int) and v > 10000:
            return f"{v / 1e6:.1f}M"
        return str(v)

    lines = [f"# Evaluation: {report['dataset']}", "",
             f"{report['pairs']} labelled pairs; {report['queries']} retrieval queries over {report['corpus']} "
             f"keywords; CPU latency with {report['threads']} threads (teacher: 100 pairs per call, "
             f"in {report.get('teacher_precision', 'fp32')}; BiLSTM: 64 pairs of one query and title per call, "
             "its inference form in fp32, `bilstm-bf16` rows with the LSTM in bf16; "
             "twin: one query crossed with 100 cached keyword vectors; query encode: one query of 16 tokens, "
             "padding included, through the eager student and through the served encoder, its TorchScript "
             "export run as serving runs it (serving.fast_bert at the default precision: bf16 matrix products "
             "on AMX-BF16 and AVX512-BF16 hosts), timed in alternating blocks; `twin-served` rows encode queries as serving "
             "does). Retrieval for TwinBERT (res) re-ranks "
             "its cos top-100; cross models (teacher, BiLSTM) do not retrieve over the corpus, and a "
             "'re-ranks' row re-orders TwinBERT's cos top-100 (or the top N its name gives) with one.", "",
             "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    if report.get("split"):
        sp = report["split"]
        subset = (f" (of them, the first {sp['evaluated_queries']} retrieval queries and their pairs are "
                  "evaluated here)" if sp.get("evaluated_queries") else "")
        lines[2:2] = [f"Split: the {sp['name']} queries of the split by query (seed {sp['seed']}): {sp['pairs']} "
                      f"labelled pairs of {sp['queries']} queries, query list sha256 {sp['queries_sha256'][:16]}"
                      f"{subset}; every model whose checkpoint records its split (split.json) was checked to hold "
                      "these queries out.", ""]
    for r in report["rows"]:
        lines.append("| " + " | ".join(cell(fmt(r.get(k))) for k, _ in cols) + " |")
    cmp = report.get("comparison")
    if cmp and (cmp["baseline"] or cmp["reference"]):
        def diff(d):
            return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

        def ratio(d):
            return f"{d['ratio']:.1%} [{d['low']:.1%}, {d['high']:.1%}]"

        heads = ([f"{h} − {cell(cmp['baseline'])}" for h in ("nDCG@10", "R@100", "MRR@10")] if cmp["baseline"] else []) \
            + ([f"ROC-AUC / {cell(cmp['reference'])}"] if cmp["reference"] else [])
        what = " and ".join(([f"retrieval metrics minus {cmp['baseline']}'s"] if cmp["baseline"] else [])
                            + ([f"ROC-AUC as a share of {cmp['reference']}'s"] if cmp["reference"] else []))
        lines += ["", "## Against the baselines", "",
                  f"{what[0].upper() + what[1:]}, each with its {cmp['level']:.0%} interval from a "
                  f"paired bootstrap over queries ({cmp['resamples']} resamples; a labelled pair's query is its "
                  "group). An interval that spans 0 (or 100%) is a difference these queries cannot resolve.", "",
                  "| model | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
        for r in report["rows"]:
            cells = []
            if cmp["baseline"]:
                vs = r.get("vs_baseline")
                cells += [diff(vs[m]) if vs else ("baseline" if r["model"] == cmp["baseline"] else "n/a")
                          for m in RETRIEVAL_METRICS]
            if cmp["reference"]:
                vr = r.get("roc_auc_vs_reference")
                cells.append(ratio(vr) if vr else ("reference" if r["model"] == cmp["reference"] else "n/a"))
            lines.append(f"| {cell(r['model'])} | " + " | ".join(cells) + " |")
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="LABEL=KIND[:PATH]")
    ap.add_argument("--dataset", default="homedepot:test")
    ap.add_argument("--data", help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--out", default="reports/eval", help="report path without suffix (.md and .json)")
    ap.add_argument("--cache-dir", default="artifacts/cache",
                    help="where bi-encoders' corpus vectors are kept between runs, keyed by the corpus and the "
                         "model's weights; '' = no cache")
    ap.add_argument("--max-queries", type=nonnegative_int, default=0,
                    help="evaluate on the first N retrieval queries (those with a relevant keyword) and the labelled "
                         "pairs of those queries (for pairs:FILE, the first N distinct queries); a query's case and "
                         "spacing variants are one query; 0 = all")
    ap.add_argument("--positive-threshold", type=finite_float,
                    help="pairs:FILE only: a label at or above it counts as relevant (default 2.5)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--bootstrap", type=nonnegative_int, default=1000,
                    help="paired bootstrap resamples for the intervals against the baselines; 0 = none")
    ap.add_argument("--baseline", help="model LABEL the retrieval metrics are compared with (default: the first bm25)")
    ap.add_argument("--reference", help="model LABEL ROC-AUC is a share of (default: the first teacher)")
    ap.add_argument("--per-query", metavar="TSV",
                    help="also write each retrieval row's metrics per query to this TSV (query_id, query, model, "
                         "then the metrics)")
    add_precision_arg(ap)
    args = ap.parse_args(argv)
    if args.bootstrap < 0:
        ap.error("--bootstrap must be 0 (off) or a number of resamples")
    torch.set_num_threads(args.threads)
    models = [tuple(m.split("=", 1)) if "=" in m else (m, m) for m in args.model]
    for name, flag in ((args.baseline, "--baseline"), (args.reference, "--reference")):
        if name is not None and name not in [label for label, _ in models]:
            ap.error(f"{flag} {name!r} is not one of the --model labels")
    if args.max_queries < 0:
        ap.error("--max-queries must be 0 (all) or a number of queries")
    if args.per_query and Path(args.per_query).is_dir():  # found now, not after minutes of scoring
        ap.error(f"--per-query {args.per_query!r} is a directory; give a file path")
    try:
        evaluate(models, args.dataset, args.out, args.data, cache_dir=args.cache_dir,
                 max_queries=args.max_queries, bootstrap=args.bootstrap,
                 baseline=args.baseline, reference=args.reference, positive_threshold=args.positive_threshold,
                 precision=args.precision, per_query_out=args.per_query)
    except (ValueError, OSError, DataError) as e:  # bad flags or data: one line, not a traceback
        raise SystemExit(f"evaluate: {e}") from None


if __name__ == "__main__":
    main()
