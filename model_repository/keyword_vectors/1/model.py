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
        # Warm the lookup on this version's own ids. A config warm-up sample is one file shared by every
        # version of the model, so it would have to name an id that every loaded version holds, and a
        # store replaced whole (no id in common) could not load beside the one it replaces.
        warm = self.store.ids[:100]
        for _ in range(3):
            self.store.lookup(warm)

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
