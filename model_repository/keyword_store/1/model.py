"""Triton Python model: QUERY_VECTOR, TOP_K -> KEYWORD_IDS, KEYWORD_TEXTS, SCORES (cosine)."""
from pathlib import Path

import faiss
import numpy as np
import triton_python_backend_utils as pb_utils

from serving.keyword_store import KeywordStore
from serving.requests import BadRequest, decode_top_k


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        faiss.omp_set_num_threads(1)  # single queries: OpenMP start-up costs more than it saves
        self.store = KeywordStore(Path(args["model_repository"]) / args["model_version"] / "store")

    def execute(self, requests):
        responses = []
        for request in requests:
            vectors = pb_utils.get_input_tensor_by_name(request, "QUERY_VECTOR").as_numpy()
            try:
                k = decode_top_k(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy(), len(vectors))
                positions, scores = self.store.search(vectors, k)
            except (BadRequest, ValueError) as e:
                responses.append(_error(str(e)))
                continue
            width = min(len(p) for p in positions)  # HNSW may return fewer than k for tiny stores
            ids = np.array([[self.store.ids[i].encode() for i in p[:width]] for p in positions], dtype=object)
            texts = np.array([[self.store.texts[i].encode() for i in p[:width]] for p in positions], dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("KEYWORD_IDS", ids.reshape(len(positions), width)),
                pb_utils.Tensor("KEYWORD_TEXTS", texts.reshape(len(positions), width)),
                pb_utils.Tensor("SCORES", np.ascontiguousarray(scores[:, :width], dtype=np.float32))]))
        return responses
