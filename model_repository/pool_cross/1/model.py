"""Triton Python model: TOKEN_STATES, ATTENTION_MASK -> QUERY_VECTOR (kernels.pool_cross, K = 0)."""
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from kernels import pool_cross
from training.export import load_pool_cross


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.params, self.config = load_pool_cross(version_dir)

    def execute(self, requests):
        responses = []
        for request in requests:
            states = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "TOKEN_STATES").as_numpy())
            mask = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK").as_numpy())
            try:
                with torch.inference_mode():
                    pooled, _ = pool_cross(states, mask, self.params)
            except (ValueError, TypeError) as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("QUERY_VECTOR", pooled.numpy())]))
        return responses
