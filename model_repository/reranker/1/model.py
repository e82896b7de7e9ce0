"""Triton Python model: QUERY, candidate KEYWORD_IDS + KEYWORD_TEXTS, TOP_K, DEPTH -> the top TOP_K
candidates re-ordered by the BiLSTM re-ranker (serving/rerank.py), with its scores.

The third step of `retrieve_rerank`: keyword_store's cosine top-DEPTH come in, each query's
candidates are scored as one batch, and a bad request gets its own INVALID_ARG error. Candidates
whose CANDIDATES_DIGEST is not the query's (another request's answer) fail the request; the answer
carries QUERY_DIGEST, as keyword_store's.
"""
import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from serving.model_errors import internal, invalid
from serving.requests import (BadRequest, decode_depth, decode_queries, decode_texts, decode_top_k, query_digests,
                              refuse_candidates)
from serving.rerank import Reranker


class StaleCandidates(RuntimeError):
    pass


def _input(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        torch.set_num_threads(int(params.get("threads", {}).get("string_value", "1")))
        self.reranker = Reranker(Path(args["model_repository"]) / args["model_version"],
                                 params.get("precision", {}).get("string_value", "auto"))
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.reranker.precision} trace of the BiLSTM")
        # TorchScript's profiling executor specialises after a few calls: warm it on several batch
        # sizes and lengths, so the first real requests do not pay for it
        title = "DEWALT 20-Volt MAX Lithium-Ion Cordless 1/2 in. Drill Driver Kit with Battery"
        for n, words in ((30, 14), (10, 4), (100, 9), (200, 14), (30, 7)):
            for _ in range(2):
                self.reranker.scores("cordless drill driver", [" ".join(title.split()[:words])] * n)

    def _rerank(self, request):
        refuse_candidates(request.parameters())
        raw = _input(request, "QUERY")
        queries = decode_queries(raw)
        digests = query_digests(raw)
        sent = pb_utils.get_input_tensor_by_name(request, "CANDIDATES_DIGEST")
        if sent is not None and not np.array_equal(sent.as_numpy().reshape(-1), digests.reshape(-1)):
            # keyword_store handed over another request's candidates (the Python backend's stalled-stub
            # fault, README): fail this request rather than re-rank the wrong list
            raise StaleCandidates("the cosine candidates received belong to another query; retry")
        k = decode_top_k(_input(request, "TOP_K"), len(queries))
        depth = decode_depth(_input(request, "DEPTH"), len(queries), k)  # TOP_K..MAX_DEPTH
        ids, texts = _input(request, "KEYWORD_IDS"), decode_texts(_input(request, "KEYWORD_TEXTS"), "KEYWORD_TEXTS")
        if ids.shape != texts.shape or ids.shape[0] != len(queries):
            raise BadRequest(f"KEYWORD_IDS {list(ids.shape)} and KEYWORD_TEXTS {list(texts.shape)} must both be "
                             f"[{len(queries)}, N]")
        if ids.shape[1] > depth:
            raise BadRequest(f"{ids.shape[1]} candidates for DEPTH {depth}")
        rows = [self.reranker.rerank(q, i, t, k) for q, i, t in zip(queries, ids, texts)]
        return [np.stack([r[n] for r in rows]) for n in range(3)] + [digests]  # decode_queries refused B=0

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                ids, texts, scores, digests = self._rerank(request)
            except (BadRequest, ValueError, TypeError) as e:  # this request's input, not the model
                responses.append(invalid(e))
                continue
            except Exception as e:  # noqa: BLE001 - fails this request only
                responses.append(internal("reranker", e))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("KEYWORD_IDS", ids.astype(object)), pb_utils.Tensor("KEYWORD_TEXTS", texts.astype(object)),
                pb_utils.Tensor("SCORES", scores.astype(np.float32)), pb_utils.Tensor("QUERY_DIGEST", digests)]))
        return responses
