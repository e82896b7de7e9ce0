"""Triton Python model: TOKEN_STATES, ATTENTION_MASK[, KEYWORD_VECTORS] -> QUERY_VECTOR, SCORES.

Tensors move by DLPack in both directions: no host copy on a GPU instance.
"""
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from kernels import PoolCrossParams, cpu_native, pool_cross
from serving.model_errors import internal, invalid
from serving.requests import BadRequest, check_finite, check_mask_rows, decode_crossing, serving_defaults
from training.artifacts import read_json_object


def _query_max_len(version_dir: Path, default: int = 16) -> int:
    """The export's query length (export.json's model_config): query_encoder truncates to it, so its
    token states are never longer. A client's own longer states compile their length bucket on first use."""
    made = version_dir / "export.json"
    config = read_json_object(made).get("model_config") if made.is_file() else None
    length = config.get("query_max_len") if isinstance(config, dict) else None
    return length if isinstance(length, int) and not isinstance(length, bool) and length >= 1 else default


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        params, self.config = PoolCrossParams.load(Path(args["model_repository"]) / args["model_version"])
        self.params = params.to(self.device)
        _, self.default_crossing = serving_defaults(self.config)
        if self.device.type == "cpu":  # build or load the C++ path now, not in the first request
            pb_utils.Logger.log_info(f"{args['model_name']}: pool_cross CPU path: {cpu_native.describe()}")
        else:  # compile every variant of the Triton kernel now, not in the first requests of each shape
            from kernels.pool_cross_triton import warm_up  # triton itself only where it runs
            length = _query_max_len(Path(args["model_repository"]) / args["model_version"])
            crossings = ("cos", "res") if self.params.res_w1 is not None else ("cos",)  # what requests can ask
            launches = warm_up(self.params, self.device, length, crossings)
            pb_utils.Logger.log_info(f"{args['model_name']}: Triton kernel compiled for {launches} shape classes "
                                     f"(queries of 1..{length} tokens, pooling alone and {' and '.join(crossings)})")

    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else from_dlpack(tensor.to_dlpack()).to(self.device)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                crossing = decode_crossing(request.parameters(), self.default_crossing)
                states, keywords = self._input(request, "TOKEN_STATES"), self._input(request, "KEYWORD_VECTORS")
                for name, values in (("TOKEN_STATES", states), ("KEYWORD_VECTORS", keywords)):
                    if values is not None:
                        check_finite(values, name)
                mask = self._input(request, "ATTENTION_MASK")
                check_mask_rows(mask)
                with torch.inference_mode():
                    pooled, scores = pool_cross(states, mask, self.params, keywords, crossing)
            except (BadRequest, ValueError, TypeError) as e:
                responses.append(invalid(e))
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a CUDA or kernel error: this request's, not its batch-mates'
                responses.append(internal("pool_cross", e))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor.from_dlpack("QUERY_VECTOR", to_dlpack(pooled.contiguous())),
                pb_utils.Tensor.from_dlpack("SCORES", to_dlpack(scores.contiguous()))]))
        return responses
