"""Retrieval over a keyword store with the fused op: pool -> ANN top-K' -> res re-score -> top K;
and relevance: given keywords' cached vectors crossed with the query.

Used by the `keyword_store` Triton model and by the in-process pipeline the benchmarks compare with.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels import PoolCrossParams, pool_cross
from serving.keyword_store import KeywordStore


class Retriever:
    def __init__(self, store: KeywordStore, params: PoolCrossParams):
        if store.texts is None:
            raise ValueError("retrieval returns keyword texts: load the store with its texts")
        if params.dim != store.dim:
            raise ValueError(f"pool/cross dimension {params.dim} does not match the store's {store.dim}")
        self.store, self.params = store, params

    @torch.inference_mode()
    def retrieve(self, states: np.ndarray, mask: np.ndarray, k: int, candidates: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token states [B, L, H] + mask [B, L] -> ids, texts (bytes objects) and scores, each [B, K]."""
        st, m = torch.from_numpy(np.ascontiguousarray(states)), torch.from_numpy(np.ascontiguousarray(mask))
        query, _ = pool_cross(st, m, self.params)
        positions, cos = self.store.search(query.numpy(), max(k, candidates))
        width = min(len(p) for p in positions)  # HNSW may return fewer than asked on tiny stores
        pos = np.array([p[:width] for p in positions], dtype=np.int64).reshape(len(positions), width)
        if candidates and width:
            vectors = torch.from_numpy(self.store.vectors_at(pos))
            _, res = pool_cross(st, m, self.params, vectors, "res")
            order = torch.argsort(res, dim=1, descending=True)[:, :k]
            pos = np.take_along_axis(pos, order.numpy(), axis=1)
            scores = torch.gather(res, 1, order).numpy()
        else:
            pos, scores = pos[:, :k], cos[:, :width][:, :k]
        ids, texts = self.store.ids.encoded_array(pos), self.store.texts.encoded_array(pos)
        return ids, texts, np.ascontiguousarray(scores, dtype=np.float32)

    @torch.inference_mode()
    def relevance(self, states: np.ndarray, mask: np.ndarray, keyword_ids: list[list[str]], crossing: str
                  ) -> np.ndarray:
        """Token states [B, L, H] + mask [B, L] and B lists of N keyword ids -> scores [B, N] (fp32);
        an unknown id raises UnknownKeywordError."""
        vectors = torch.from_numpy(np.stack([self.store.lookup(ids) for ids in keyword_ids]))
        _, scores = pool_cross(torch.from_numpy(np.ascontiguousarray(states)),
                               torch.from_numpy(np.ascontiguousarray(mask)), self.params, vectors, crossing)
        return scores.numpy()
