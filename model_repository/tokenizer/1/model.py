"""Triton Python model: QUERY strings -> INPUT_IDS, ATTENTION_MASK."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from serving.encoder import query_tokenizer
from serving.model_errors import internal, invalid
from serving.requests import BadRequest, check_tokenized, decode_queries


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = query_tokenizer(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = decode_queries(pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy())
                ids, mask = self.tokenizer(texts)
                check_tokenized(mask)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("INPUT_IDS", ids), pb_utils.Tensor("ATTENTION_MASK", mask)]))
            except BadRequest as e:
                responses.append(invalid(e))
            except Exception as e:  # noqa: BLE001 - fails this request, not its batch-mates
                responses.append(internal("tokenizer", e))
        return responses
