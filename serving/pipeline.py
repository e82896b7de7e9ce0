"""The serving pipeline in-process, from the same model-repository artifacts the server loads:
the baseline that benchmarks put beside the served path (what Triton costs on top)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernels import PoolCrossParams
from serving.encoder import QueryEncoder
from serving.keyword_store import KeywordStore
from serving.repository import model_parameter, served_version
from serving.requests import serving_defaults
from serving.rerank import Reranker
from serving.retrieval import Retriever


class InProcessPipeline:
    def __init__(self, repository: str | Path, threads: int = 2):
        repo = Path(repository)
        torch.set_num_threads(threads)
        # the keyword_store version the ensembles pin (what the server answers with, after any update or
        # rollout): it encodes, searches and crosses, with the files of its own version directory
        version = served_version(repo, "keyword_store")
        self.encoder = QueryEncoder(version, precision=model_parameter(repo, "keyword_store", "encoder_precision", "auto"))
        self.params, pc = PoolCrossParams.load(version)
        # K' as the served keyword_store is configured (its "default_candidates" parameter)
        self.default_candidates, self.default_crossing = serving_defaults(
            pc, int(model_parameter(repo, "keyword_store", "default_candidates", "0")))
        self.store = KeywordStore(version / "store")
        self.retriever = Retriever(self.store, self.params)
        # the third stage of retrieve_rerank, when the repository has one
        self.reranker = (Reranker(repo / "reranker/1", model_parameter(repo, "reranker", "precision", "auto"))
                         if (repo / "reranker/1/reranker.pt").is_file() else None)
        self.reranker_threads = int(model_parameter(repo, "reranker", "threads", "1")) if self.reranker else 0

    def encode(self, queries: list[str]):
        ids, mask = self.encoder.tokenize(queries)
        return self.encoder(ids, mask), mask

    def retrieve(self, query: str, k: int = 10, candidates: int | None = None):
        states, mask = self.encode([query])
        c = self.default_candidates if candidates is None else candidates
        return self.retriever.retrieve(states, mask, k, max(c, k) if c else 0)

    def retrieve_rerank(self, query: str, k: int = 10, depth: int = 30):
        """keyword_store's top-`depth` as served (the cosine order while its K' default is 0)
        re-ordered by the re-ranker: the top k as (ids, texts, scores), each [1, k]."""
        if self.reranker is None:
            raise RuntimeError("this repository has no re-ranker (serving.build exports one after make train)")
        ids, texts, _ = self.retrieve(query, depth)
        # the re-ranker stage gets at least its served thread count (the served-setting baseline runs
        # every stage as served; the both-cores baseline gives it both)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(threads, self.reranker_threads))
        try:
            return tuple(a[None] for a in self.reranker.rerank(query, ids[0], texts[0], k))
        finally:
            torch.set_num_threads(threads)

    def relevance(self, query: str, keyword_ids: list[str], crossing: str | None = None) -> np.ndarray:
        states, mask = self.encode([query])
        return self.retriever.relevance(states, mask, [keyword_ids], crossing or self.default_crossing)[0]
