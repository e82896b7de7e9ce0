"""Triton Python model, the twin's CPU serving path in one process:

    QUERY (or TOKEN_STATES + ATTENTION_MASK), TOP_K          -> KEYWORD_IDS, KEYWORD_TEXTS, SCORES  (retrieve)
    QUERY (or TOKEN_STATES + ATTENTION_MASK), DEPTH          -> the cosine top DEPTH, as retrieve     (retrieve_rerank)
    QUERY (or TOKEN_STATES + ATTENTION_MASK), CANDIDATE_IDS  -> SCORES                              (relevance)

Every answer also carries QUERY_DIGEST [B, 1] INT64 (serving.requests.query_digest; 0 without QUERY),
which the client checks against the query it sent.

With QUERY the model tokenises and encodes the query itself, with the same TorchScript export and
forward pass as query_encoder (serving/encoder.py, its `encoder_precision` parameter), so the `retrieve` and `relevance` ensembles are each this one step:
one Python-backend process on the critical path instead of two (README, "Where the served time goes").
TOKEN_STATES + ATTENTION_MASK (from query_encoder, or a client's own encoder) take the composable path.
Relevance looks the candidates' cached vectors up in the store and crosses them (request parameter
"crossing", as the pool_cross model); retrieval pools, searches and re-scores (parameter "candidates").
"""
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from kernels import PoolCrossParams, cpu_native
from serving import bytes_tensors
from serving.encoder import QueryEncoder
from serving.keyword_store import KeywordStore, UnknownKeywordError, sha256_file
from serving.model_errors import internal, invalid
from serving.requests import (BadRequest, check_finite, check_mask_rows, decode_candidates, decode_crossing,
                              decode_depth, decode_keyword_ids, decode_top_k, query_digests, refuse_candidates,
                              refuse_parameter, serving_defaults)
from serving.retrieval import Retriever
from serving.stage_metrics import STAGE_METRIC, STAGES, TIMED_METRIC


# Each custom-metric update is a round trip to the server process (about 80 us, measured in the
# stub), so each instance adds to the candidates counter in bulk: a request that comes at least
# METRIC_FLUSH_S after the instance's last update adds everything counted since, and so does unloading.
# A count can therefore wait in an instance that has gone quiet (an overflow instance after a burst)
# until its next request.
METRIC_FLUSH_S = 1.0

# Where an execute's time goes (serving/stage_metrics.py), which Triton's own statistics cannot see
# inside a Python model: their compute_infer also holds the round trip to this stub.


def _nothing_counted() -> dict:
    """What an instance has counted since its last flush: candidates re-scored, requests timed, and
    seconds per stage."""
    return {"scored": 0, "timed": 0, **{st: 0.0 for st in STAGES}}


class TritonPythonModel:
    def initialize(self, args):
        # 100 ids and 100 texts per retrieve answer: the backend's own BYTES serialiser is slow
        # (serving/bytes_tensors.py)
        bytes_tensors.install(pb_utils)
        faiss.omp_set_num_threads(1)  # single queries: OpenMP start-up costs more than it saves
        config = json.loads(args["model_config"])
        torch.set_num_threads(int(config.get("parameters", {}).get("threads", {}).get("string_value", "1")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        params, pc_config = PoolCrossParams.load(version_dir)
        configured = config.get("parameters", {}).get("default_candidates", {}).get("string_value", "0")
        self.default_candidates, self.default_crossing = serving_defaults(pc_config, int(configured))
        # Refuse a store built with another encoder (its manifest names the export it was built from).
        store = KeywordStore(version_dir / "store", expect_encoder_sha256=sha256_file(version_dir / "export.json"),
                             expect_dim=params.dim)
        store.page_in()  # map every page of the index and vectors now, not inside the first requests
        self.retriever = Retriever(store, params)
        precision = config.get("parameters", {}).get("encoder_precision", {}).get("string_value", "auto")
        self.encoder = QueryEncoder(version_dir, precision=precision)  # the export the store was built with
        pb_utils.Logger.log_info(f"{args['model_name']}: query encoder: {self.encoder.path}")
        # The config's warmup requests cannot carry the "candidates" parameter, so the res re-scoring
        # path (not the default) is warmed here: its first calls would otherwise land on users.
        states, mask = np.zeros((1, 8, params.hidden), np.float32), np.ones((1, 8), np.int64)
        for _ in range(2 if len(store) else 0):
            k = min(10, len(store))
            self.retriever.retrieve(states, mask, k, max(k, min(100, len(store))))
            for crossing in ("cos", "res"):  # relevance (the relevance ensemble's step), both crossings
                self.retriever.relevance(states, mask, [store.ids[:100]], crossing)
        pb_utils.Logger.log_info(f"{args['model_name']}: pool_cross CPU path: {cpu_native.describe()}")
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # Families must outlive their metrics: keep both on the instance.
        self.size_family = pb_utils.MetricFamily(
            name="twinbert_keyword_store_keywords", description="Keywords in the served keyword store",
            kind=pb_utils.MetricFamily.GAUGE)
        self.scored_family = pb_utils.MetricFamily(
            name="twinbert_candidates_scored_total", description="Candidates re-scored with the res crossing",
            kind=pb_utils.MetricFamily.COUNTER)
        self.size = self.size_family.Metric(labels=labels)
        self.size.set(len(store))
        self.scored = self.scored_family.Metric(labels=labels)
        self.stage_family = pb_utils.MetricFamily(
            name=STAGE_METRIC,
            description="Microseconds inside keyword_store's execute by stage: execute (all of it), parse "
                        "(reading inputs, tokenising), encode (query encoder), compute (search, crossing), "
                        "respond (output tensors)", kind=pb_utils.MetricFamily.COUNTER)
        self.timed_family = pb_utils.MetricFamily(
            name=TIMED_METRIC,
            description=f"Requests covered by {STAGE_METRIC} (flushed with it)",
            kind=pb_utils.MetricFamily.COUNTER)
        self.stage_metrics = {st: self.stage_family.Metric(labels={**labels, "stage": st}) for st in STAGES}
        self.timed = self.timed_family.Metric(labels=labels)
        self.pending, self.flushed_at = _nothing_counted(), time.monotonic()

    def _flush_metrics(self, force=False):
        """Add what was counted since the last flush to the metrics, at most once per METRIC_FLUSH_S."""
        now = time.monotonic()
        if not force and now - self.flushed_at < METRIC_FLUSH_S:
            return
        p = self.pending
        if p["scored"]:
            self.scored.increment(p["scored"])
        if p["timed"]:
            for st in STAGES:
                self.stage_metrics[st].increment(round(p[st] * 1e6, 1))
            self.timed.increment(p["timed"])
        self.pending, self.flushed_at = _nothing_counted(), now

    def finalize(self):
        self._flush_metrics(force=True)

    def _parse(self, request):
        """One request's inputs as [is_text, ids or token states, mask, mode, tensor]: the ids of QUERY
        (tokenised here; the encoder replaces them with states) or TOKEN_STATES as sent, and exactly one
        of TOP_K, DEPTH and CANDIDATE_IDS (mode "TOP_K", "DEPTH" or "CANDIDATE_IDS", and its tensor)."""
        # one pass over the inputs (each get_input_tensor_by_name call walks and wraps all of them)
        sent = {t.name(): t for t in request.inputs()}
        query, states, mask = sent.get("QUERY"), sent.get("TOKEN_STATES"), sent.get("ATTENTION_MASK")
        modes = [(name, sent[name]) for name in ("TOP_K", "DEPTH", "CANDIDATE_IDS") if name in sent]
        if len(modes) != 1:
            raise BadRequest("send one of TOP_K (retrieval), CANDIDATE_IDS (relevance scores) or DEPTH "
                             "(retrieve_rerank's cosine candidates)")
        mode, tensor = modes[0]
        if query is not None:
            if states is not None or mask is not None:
                raise BadRequest("send either QUERY or TOKEN_STATES + ATTENTION_MASK, not both")
            raw = query.as_numpy()
            return [True, *self.encoder.tokenize_request(raw), mode, tensor, query_digests(raw)]
        if states is None or mask is None:
            raise BadRequest("send QUERY, or both TOKEN_STATES and ATTENTION_MASK")
        states, mask = states.as_numpy(), mask.as_numpy()
        check_finite(states, "TOKEN_STATES")
        check_mask_rows(mask)
        return [False, states, mask, mode, tensor, np.zeros((len(states), 1), np.int64)]  # no query to digest

    def execute(self, requests):
        t0 = time.perf_counter()
        responses = [None] * len(requests)
        parsed = {}
        for n, request in enumerate(requests):
            try:
                parsed[n] = self._parse(request)
            except (BadRequest, ValueError, TypeError) as e:
                responses[n] = invalid(e)
            except Exception as e:  # noqa: BLE001 - whatever it is, it fails this request, not its batch-mates
                responses[n] = internal("keyword_store", e)
        t1 = time.perf_counter()
        # the queries of every request queued together go through the encoder in one forward pass
        texts = [n for n, (is_text, *_) in parsed.items() if is_text]
        if texts:
            try:
                encoded = self.encoder.encode_many([(parsed[n][1], parsed[n][2]) for n in texts])
            except Exception as e:  # noqa: BLE001 - fail the requests that reached the encoder, no others
                for n in texts:
                    responses[n] = internal("encoder", e)
                    del parsed[n]
            else:
                for n, states in zip(texts, encoded):
                    parsed[n][1] = states
        t2 = time.perf_counter()
        compute = respond = 0.0
        for n, (_, states, mask, mode, tensor, digests) in parsed.items():
            try:
                t = time.perf_counter()
                if mode == "CANDIDATE_IDS":
                    outputs = self._relevance(requests[n], states, mask, tensor.as_numpy())
                else:
                    outputs = self._retrieve(requests[n], states, mask, mode, tensor.as_numpy())
                outputs["QUERY_DIGEST"] = digests
                t3 = time.perf_counter()
                compute += t3 - t
                responses[n] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()])
                respond += time.perf_counter() - t3
            except (BadRequest, UnknownKeywordError, ValueError, TypeError) as e:
                responses[n] = invalid(e)
            except Exception as e:  # noqa: BLE001 - the search or crossing failed on this request: answer it, serve the rest
                responses[n] = internal("keyword_store", e)
        p = self.pending
        p["parse"] += t1 - t0
        p["encode"] += t2 - t1
        p["compute"] += compute
        p["respond"] += respond
        p["execute"] += time.perf_counter() - t0
        p["timed"] += len(requests)
        self._flush_metrics()
        return responses

    def _retrieve(self, request, states, mask, mode, raw):
        parameters = request.parameters()
        if mode == "DEPTH":  # retrieve_rerank's first step: the cosine top DEPTH for the re-ranker
            # refused here, before the search, with the re-ranker's own messages
            refuse_candidates(parameters)
            refuse_parameter(parameters, "crossing", "retrieve_rerank", "the BiLSTM re-ranker scores the candidates")
            k, candidates = decode_depth(raw, len(states)), 0
        else:
            refuse_parameter(parameters, "crossing", "retrieve",
                             "it ranks by cosine, or re-scores with res (parameter 'candidates')")
            k = decode_top_k(raw, len(states))
            candidates = decode_candidates(parameters, k, self.default_candidates)
        ids, texts, scores = self.retriever.retrieve(states, mask, k, candidates)
        # K' as re-scored: the retriever clamps it to the store's size (0: not re-scored)
        self.pending["scored"] += min(candidates, len(self.retriever.store)) * len(states)
        return {"KEYWORD_IDS": ids, "KEYWORD_TEXTS": texts, "SCORES": scores}

    def _relevance(self, request, states, mask, candidate_ids):
        parameters = request.parameters()
        refuse_parameter(parameters, "candidates", "relevance", "it scores the ids sent (parameter 'crossing')")
        crossing = decode_crossing(parameters, self.default_crossing)
        rows = decode_keyword_ids(candidate_ids)  # errors name KEYWORD_IDS, the relevance ensemble's input
        if len(rows) != len(states):
            raise BadRequest(f"{len(rows)} rows of keyword ids for {len(states)} queries")
        return {"SCORES": self.retriever.relevance(states, mask, rows, crossing)}
