"""null_store: answers retrieve's request shape with a fixed list of hits and does nothing else
(client/floor_repository/null_store/config.pbtxt). Reads QUERY and TOP_K, checks TOP_K and computes
QUERY_DIGEST as keyword_store does, so the answer passes the client's checks."""
import numpy as np
import triton_python_backend_utils as pb_utils

from serving.keyword_store import MAX_TOP_K
from serving.model_errors import invalid
from serving.requests import BadRequest, decode_top_k, query_digests

# Home Depot product titles are about 40-50 characters; ids are the corpus's six-digit product uids.
_IDS = np.array([f"{100001 + i}".encode() for i in range(MAX_TOP_K)], dtype=object)
_TEXTS = np.array([f"null keyword {i:04d} of typical product-title length".encode() for i in range(MAX_TOP_K)],
                  dtype=object)
_SCORES = np.linspace(1.0, 0.0, MAX_TOP_K, dtype=np.float32)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            rows = query.shape[0]
            try:
                k = decode_top_k(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy(), rows)
            except BadRequest as e:
                responses.append(invalid(e))
                continue
            outputs = {"KEYWORD_IDS": np.tile(_IDS[:k], (rows, 1)), "KEYWORD_TEXTS": np.tile(_TEXTS[:k], (rows, 1)),
                       "SCORES": np.tile(_SCORES[:k], (rows, 1)), "QUERY_DIGEST": query_digests(query)}
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses
