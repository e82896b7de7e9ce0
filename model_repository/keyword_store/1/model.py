"""Triton Python model: TOKEN_STATES, ATTENTION_MASK, TOP_K -> KEYWORD_IDS, KEYWORD_TEXTS, SCORES."""
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from kernels import PoolCrossParams, cpu_native
from serving.keyword_store import KeywordStore, sha256_file
from serving.requests import BadRequest, decode_candidates, decode_top_k, serving_defaults
from serving.retrieval import Retriever


# Each custom-metric update is a round trip to the server process (about 80 us, measured in the
# stub), so each instance adds to the candidates counter in bulk: a request that comes at least
# METRIC_FLUSH_S after the instance's last update adds everything counted since, and so does unloading.
# A count can therefore wait in an instance that has gone quiet (an overflow instance after a burst)
# until its next request.
METRIC_FLUSH_S = 1.0


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        faiss.omp_set_num_threads(1)  # single queries: OpenMP start-up costs more than it saves
        torch.set_num_threads(1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        config = json.loads(args["model_config"])
        params, pc_config = PoolCrossParams.load(version_dir)
        configured = config.get("parameters", {}).get("default_candidates", {}).get("string_value", "0")
        self.default_candidates, _ = serving_defaults(pc_config, int(configured))
        # Refuse a store built with another encoder (its manifest names the export it was built from).
        store = KeywordStore(version_dir / "store", expect_encoder_sha256=sha256_file(version_dir / "export.json"),
                             expect_dim=params.dim)
        store.page_in()  # map every page of the index and vectors now, not inside the first requests
        self.retriever = Retriever(store, params)
        # The config's warmup requests cannot carry the "candidates" parameter, so the res re-scoring
        # path (not the default) is warmed here: its first calls would otherwise land on users.
        states, mask = np.zeros((1, 8, params.hidden), np.float32), np.ones((1, 8), np.int64)
        for _ in range(2 if len(store) else 0):
            k = min(10, len(store))
            self.retriever.retrieve(states, mask, k, max(k, min(100, len(store))))
        pb_utils.Logger.log_info(f"{args['model_name']}: pool_cross CPU path: {cpu_native.describe()}")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # Families must outlive their metrics: keep both on the instance.
        self.size_family = pb_utils.MetricFamily(
            name="twinbert_keyword_store_keywords", description="Keywords in the served keyword store",
            kind=pb_utils.MetricFamily.GAUGE)
        self.scored_family = pb_utils.MetricFamily(
            name="twinbert_candidates_scored_total", description="Candidates re-scored with the res crossing",
            kind=pb_utils.MetricFamily.COUNTER)
        self.size = self.size_family.Metric(labels=labels)
        self.size.set(len(store))
        self.scored = self.scored_family.Metric(labels=labels)
        self.scored_pending, self.scored_flushed_at = 0, time.monotonic()

    def _count_scored(self, n):
        self.scored_pending += n
        now = time.monotonic()
        if self.scored_pending and now - self.scored_flushed_at >= METRIC_FLUSH_S:
            self.scored.increment(self.scored_pending)
            self.scored_pending, self.scored_flushed_at = 0, now

    def finalize(self):
        if self.scored_pending:
            self.scored.increment(self.scored_pending)
            self.scored_pending = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            states = pb_utils.get_input_tensor_by_name(request, "TOKEN_STATES").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK").as_numpy()
            try:
                k = decode_top_k(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy(), len(states),
                                 " (retrieve_rerank passes its DEPTH here)")
                candidates = decode_candidates(request.parameters(), k, self.default_candidates)
                ids, texts, scores = self.retriever.retrieve(states, mask, k, candidates)
            except (BadRequest, ValueError, TypeError) as e:
                responses.append(_error(str(e)))
                continue
            # K' as re-scored: the retriever clamps it to the store's size (0: not re-scored)
            self._count_scored(min(candidates, len(self.retriever.store)) * len(states))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("KEYWORD_IDS", ids), pb_utils.Tensor("KEYWORD_TEXTS", texts),
                pb_utils.Tensor("SCORES", scores)]))
        return responses
