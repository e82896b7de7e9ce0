"""null_store: answers retrieve's request shape with a fixed list of hits and does nothing else
(client/floor_repository/null_store/config.pbtxt). Reads QUERY and TOP_K and computes QUERY_DIGEST as
keyword_store does, so the answer passes the client's checks."""
import numpy as np
import triton_python_backend_utils as pb_utils

from serving.requests import query_digests

MAX_K = 200
# Home Depot product titles are about 40-50 characters; ids are the corpus's six-digit product uids.
_IDS = np.array([f"{100001 + i}".encode() for i in range(MAX_K)], dtype=object)
_TEXTS = np.array([f"null keyword {i:03d} of typical product-title length".encode() for i in range(MAX_K)],
                  dtype=object)
_SCORES = np.linspace(1.0, 0.0, MAX_K, dtype=np.float32)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy()
            rows, k = query.shape[0], int(top_k.reshape(-1)[0])
            if not 0 < k <= MAX_K:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"TOP_K must be 1..{MAX_K}; got {k}")))
                continue
            outputs = {"KEYWORD_IDS": np.tile(_IDS[:k], (rows, 1)), "KEYWORD_TEXTS": np.tile(_TEXTS[:k], (rows, 1)),
                       "SCORES": np.tile(_SCORES[:k], (rows, 1)), "QUERY_DIGEST": query_digests(query)}
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses
