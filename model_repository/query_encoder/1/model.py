"""Triton Python model: INPUT_IDS, ATTENTION_MASK -> TOKEN_STATES via the TorchScript encoder.

Requests queued together are run as one forward pass (rows concatenated, then split back).
"""
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        params = json.loads(args["model_config"]).get("parameters", {})
        torch.set_num_threads(int(params.get("threads", {}).get("string_value", "2")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.encoder = torch.jit.load(str(version_dir / "query_encoder.pt")).eval()

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "INPUT_IDS").as_numpy() for r in requests]
        mask = [pb_utils.get_input_tensor_by_name(r, "ATTENTION_MASK").as_numpy() for r in requests]
        widths = {a.shape[1] for a in ids}
        if len(widths) != 1 or any(i.shape != m.shape for i, m in zip(ids, mask)):
            # Differently padded requests: run them one by one rather than fail them.
            return [self._respond(self._encode(i, m)) for i, m in zip(ids, mask)]
        states = self._encode(np.concatenate(ids), np.concatenate(mask))
        out, start = [], 0
        for i in ids:
            out.append(self._respond(states[start:start + len(i)]))
            start += len(i)
        return out

    def _encode(self, ids, mask):
        with torch.inference_mode():
            return self.encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    @staticmethod
    def _respond(states):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TOKEN_STATES", states)])
