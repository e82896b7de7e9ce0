"""Triton Python model: KEYWORD_IDS [B, N] -> KEYWORD_VECTORS [B, N, D] from the keyword store."""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.keyword_store import KeywordStore, UnknownKeywordError
from serving.model_errors import internal, invalid
from serving.requests import BadRequest, decode_keyword_ids


class TritonPythonModel:
    def initialize(self, args):
        self.store = KeywordStore(Path(args["model_repository"]) / args["model_version"] / "store",
                                  load_index=False, load_texts=False)
        self.store.page_in()  # map every page now, not inside the first requests

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                rows = decode_keyword_ids(pb_utils.get_input_tensor_by_name(request, "KEYWORD_IDS").as_numpy())
                vectors = np.stack([self.store.lookup(ids) for ids in rows])
            except (BadRequest, UnknownKeywordError, ValueError, TypeError) as e:  # this request only
                responses.append(invalid(e))
                continue
            except Exception as e:  # noqa: BLE001 - fails this request only
                responses.append(internal("keyword_vectors", e))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("KEYWORD_VECTORS", vectors)]))
        return responses
