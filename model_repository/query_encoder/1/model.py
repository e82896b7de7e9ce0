"""Triton Python model: INPUT_IDS, ATTENTION_MASK -> TOKEN_STATES via the TorchScript encoder.

Requests queued together run as one forward pass (rows concatenated, then split back); a request
with bad ids or mask gets its own INVALID_ARG error and never reaches the encoder.
"""
import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from serving.requests import BadRequest, check_token_inputs


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        torch.set_num_threads(int(params.get("threads", {}).get("string_value", "2")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.encoder = torch.jit.load(str(version_dir / "query_encoder.pt")).eval()
        self.vocab_size = self.encoder.bert.embeddings.word_embeddings.weight.shape[0]

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for n, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK").as_numpy()
            try:
                check_token_inputs(ids, mask, self.vocab_size)
                good.append((n, ids, mask))
            except BadRequest as e:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        if good and len({ids.shape[1] for _, ids, _ in good}) == 1:
            states = self._encode(np.concatenate([g[1] for g in good]), np.concatenate([g[2] for g in good]))
            start = 0
            for n, ids, _ in good:
                responses[n] = self._respond(states[start:start + len(ids)])
                start += len(ids)
        else:  # differently padded requests: one by one rather than fail them
            for n, ids, mask in good:
                responses[n] = self._respond(self._encode(ids, mask))
        return responses

    def _encode(self, ids, mask):
        with torch.inference_mode():
            return self.encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    @staticmethod
    def _respond(states):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TOKEN_STATES", states)])
