"""Triton Python model: TOKEN_STATES, ATTENTION_MASK -> QUERY_VECTOR (kernels.pool_cross, K = 0).

Tensors move by DLPack in both directions: no host copy on a GPU instance.
"""
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from kernels import PoolCrossParams, pool_cross


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        params, self.config = PoolCrossParams.load(version_dir)
        self.params = params.to(self.device)

    def _input(self, request, name):
        return from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack()).to(self.device)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                with torch.inference_mode():
                    pooled, _ = pool_cross(self._input(request, "TOKEN_STATES"),
                                           self._input(request, "ATTENTION_MASK"), self.params)
            except (ValueError, TypeError) as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack("QUERY_VECTOR", to_dlpack(pooled.contiguous()))]))
        return responses
