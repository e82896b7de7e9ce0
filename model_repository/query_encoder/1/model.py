"""Triton Python model: query text (or ids + mask) -> TOKEN_STATES, TOKEN_MASK via the exported encoder
(serving/encoder.py: bf16 matrix products on AMX-BF16 and AVX512-BF16 hosts, the `encoder_precision` parameter).

Each request sends either QUERY (strings, tokenised here with the export's WordPiece, so the
ensembles need no separate tokenizer hop) or INPUT_IDS + ATTENTION_MASK (ids from the `tokenizer`
model or the client's own). Trailing padding is trimmed (serving/encoder.py), so TOKEN_STATES and
TOKEN_MASK may be narrower than the tokenizer's fixed length. Requests queued together run as one
forward pass (rows padded to the widest and concatenated, then split back); a bad request gets its
own INVALID_ARG error and never reaches the encoder.
"""
import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from serving.encoder import QueryEncoder
from serving.model_errors import internal, invalid
from serving.requests import BadRequest


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        torch.set_num_threads(int(params.get("threads", {}).get("string_value", "2")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        precision = params.get("encoder_precision", {}).get("string_value", "auto")
        self.encoder = QueryEncoder(version_dir, precision=precision)
        pb_utils.Logger.log_info(f"{args['model_name']}: query encoder: {self.encoder.path}")

    def _inputs(self, request):
        """(ids, mask) of one request, from QUERY or from INPUT_IDS + ATTENTION_MASK."""
        query = pb_utils.get_input_tensor_by_name(request, "QUERY")
        ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS")
        mask = pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK")
        if query is not None:
            if ids is not None or mask is not None:
                raise BadRequest("send either QUERY or INPUT_IDS + ATTENTION_MASK, not both")
            return self.encoder.tokenize_request(query.as_numpy())
        if ids is None or mask is None:
            raise BadRequest("send QUERY, or both INPUT_IDS and ATTENTION_MASK")
        return self.encoder.check_ids(ids.as_numpy(), mask.as_numpy())

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for n, request in enumerate(requests):
            try:
                good.append((n, *self._inputs(request)))
            except BadRequest as e:
                responses[n] = invalid(e)
            except Exception as e:  # noqa: BLE001 - fails this request, not its batch-mates
                responses[n] = internal("query_encoder", e)
        if good:
            try:
                encoded = self.encoder.encode_many([(ids, mask) for _, ids, mask in good])
            except Exception as e:  # noqa: BLE001 - fail the requests that reached the encoder, no others
                for n, _, _ in good:
                    responses[n] = internal("encoder", e)
                return responses
            for (n, _, mask), states in zip(good, encoded):
                responses[n] = self._respond(states, mask)
        return responses

    @staticmethod
    def _respond(states, mask):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("TOKEN_STATES", states), pb_utils.Tensor("TOKEN_MASK", mask)])
