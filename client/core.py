"""gRPC client for the TwinBERT ensembles, sync (`TwinBertClient`) and asyncio (`AsyncTwinBertClient`).

Retries with exponential backoff on UNAVAILABLE only (a restarting or overloaded server); every other
failure raises at once. Errors surface as `ClientError` (or `InvalidRequest` for INVALID_ARGUMENT)
carrying the server's status and message.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

DEFAULT_URL = f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
RETRIEVE_OUTPUTS = ("KEYWORD_IDS", "KEYWORD_TEXTS", "SCORES")


class ClientError(RuntimeError):
    """A request failed; `status` is the gRPC status name, the message is the server's."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class InvalidRequest(ClientError):
    """The server rejected the request's content (INVALID_ARGUMENT)."""


class Hit(NamedTuple):
    """One retrieved keyword: a named tuple (immutable, about half the construction cost of a frozen
    dataclass, which counts at 100 hits a call); `to_dict()` for JSON."""
    rank: int
    score: float
    keyword_id: str
    keyword: str

    def to_dict(self) -> dict:
        return self._asdict()


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff on UNAVAILABLE. The defaults wait about 3.5 s in all (0.05, 0.1, 0.2,
    ... capped at 1 s, seven waits): long enough for a server restarted by serving.server (1 s after it
    died, then its models' warm-up) or a replica behind a load balancer coming back, short next to
    the per-call timeout. The channel tries to reconnect at least every RECONNECT_BACKOFF_MS, so a
    retry after the server is back finds it (gRPC's own backoff would wait 1 s, then 1.6, 2.6, ...)."""
    attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def delays(self):
        d = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield min(d * (0.5 + random.random()), self.max_backoff_s)  # jitter, then the cap
            d *= 2


@dataclass
class ClientOptions:
    url: str = DEFAULT_URL
    timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None

    def channel_kwargs(self) -> dict:
        kwargs = {"channel_args": channel_args()}
        if self.ssl:
            kwargs.update(ssl=True, root_certificates=self.root_certificates, private_key=self.private_key,
                          certificate_chain=self.certificate_chain)
        return kwargs


# gRPC reconnects a failed channel after 1 s, then 1.6 s, 2.6 s, ... up to 120 s by default, and fails
# every call meanwhile with UNAVAILABLE: retries spread over a few seconds would all land in that wait.
RECONNECT_BACKOFF_MS = (100, 1000)  # initial (and minimum), maximum


def channel_args() -> list[tuple]:
    """tritonclient's own channel options (message sizes, keepalive), plus a quick reconnect."""
    keepalive = grpcclient.KeepAliveOptions()
    first, most = RECONNECT_BACKOFF_MS
    return [("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", first),
            ("grpc.min_reconnect_backoff_ms", first),
            ("grpc.max_reconnect_backoff_ms", most)]


def _error(e: InferenceServerException) -> ClientError:
    status = str(e.status() or "")
    cls = InvalidRequest if status.endswith("INVALID_ARGUMENT") else ClientError
    return cls(e.message() or str(e), status or None)


def _is_unavailable(e: InferenceServerException) -> bool:
    return str(e.status() or "").endswith("UNAVAILABLE")


def _utf8(text: str, what: str) -> bytes:
    """A str as UTF-8; a lone surrogate (undecodable bytes smuggled in, e.g. from a shell argument)
    is the caller's error, named, rather than a UnicodeEncodeError from deep inside."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not valid Unicode text (it cannot be encoded as UTF-8)") from None


def _options(url: str | None, timeout_s: float | None, options: ClientOptions | None) -> ClientOptions:
    if options is not None:
        if url is not None or timeout_s is not None:  # silently dropping either would connect elsewhere
            raise ValueError("give url and timeout_s, or options (which carries both), not both")
        return options
    return ClientOptions(url=DEFAULT_URL if url is None else url, timeout_s=10.0 if timeout_s is None else timeout_s)


def _int32(value, what: str) -> int:
    """A count sent as INT32 (or a request parameter): numpy would wrap 2**32 + 5 to 5 and cut 10.9
    to 10 without a word. Its range (0, negative, above the limit) is the server's to judge."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not -2**31 <= int(value) < 2**31:
        raise ValueError(f"{what} {value} is out of range")
    return int(value)


def _texts(values, what: str) -> list:
    """A list of strings; a bare string would otherwise be sent one character per element."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a list of strings, not one string")
    return list(values)


def _query_input(module, queries: list[str]):
    """The QUERY input, and the queries as the UTF-8 bytes sent (what QUERY_DIGEST is checked against)."""
    sent = [_utf8(s, "query") for s in queries]
    q = module.InferInput("QUERY", [len(queries), 1], "BYTES")
    q.set_data_from_numpy(np.array([[b] for b in sent], dtype=object))
    return q, sent


def _retrieve_inputs(module, queries: list[str], k: int, depth: int | None = None):
    """(inputs, requested outputs, the queries as sent)."""
    k = _int32(k, "k")
    depth = None if depth is None else _int32(depth, "rerank_depth")
    q, sent = _query_input(module, queries)
    top_k = module.InferInput("TOP_K", [len(queries), 1], "INT32")
    top_k.set_data_from_numpy(np.full((len(queries), 1), k, dtype=np.int32))
    inputs = [q, top_k]
    if depth is not None:
        d = module.InferInput("DEPTH", [len(queries), 1], "INT32")
        d.set_data_from_numpy(np.full((len(queries), 1), depth, dtype=np.int32))
        inputs.append(d)
    return inputs, [module.InferRequestedOutput(n) for n in (*RETRIEVE_OUTPUTS, "QUERY_DIGEST")], sent


def _retrieve_model(rerank_depth: int | None, candidates: int | None) -> str:
    if rerank_depth is None:
        return "retrieve"
    if candidates:  # 0 = the cosine order, which is what the re-ranker reads anyway
        raise ValueError("candidates (res re-scoring) and rerank_depth (the BiLSTM re-ranker) exclude each other")
    return "retrieve_rerank"


def _relevance_inputs(module, queries: list[str], keyword_ids: list[list[str]]):
    keyword_ids = [_texts(ids, "the keyword ids of a query") for ids in _texts(keyword_ids, "keyword_ids")]
    if len(queries) != len(keyword_ids):
        raise ValueError(f"relevance needs one list of keyword ids per query: {len(queries)} queries, "
                         f"{len(keyword_ids)} lists")
    widths = {len(ids) for ids in keyword_ids}
    if len(widths) != 1:
        raise ValueError("every query of one batched relevance call needs the same number of keyword ids")
    q, sent = _query_input(module, queries)
    ids = module.InferInput("KEYWORD_IDS", [len(queries), widths.pop()], "BYTES")
    ids.set_data_from_numpy(np.array([[_utf8(i, "keyword id") for i in row] for row in keyword_ids], dtype=object))
    return [q, ids], [module.InferRequestedOutput("SCORES"), module.InferRequestedOutput("QUERY_DIGEST")], sent


_LENGTH = struct.Struct("<I").unpack_from


def decode_bytes_tensor(buf: bytes, count: int) -> list[str]:
    """Triton's BYTES wire format (each element: 4-byte little-endian length, then its bytes) ->
    `count` UTF-8 strings, in one pass (tritonclient's `as_numpy` builds an object array of bytes
    first, which then still needs decoding)."""
    out, offset, end = [], 0, len(buf)
    while offset < end:
        if offset + 4 > end:
            raise ClientError("malformed BYTES tensor in the response (truncated length)")
        (n,) = _LENGTH(buf, offset)
        offset += 4
        if offset + n > end:
            raise ClientError("malformed BYTES tensor in the response (element overruns the buffer)")
        try:
            out.append(buf[offset:offset + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise ClientError(f"BYTES element {len(out)} of the response is not valid UTF-8") from None
        offset += n
    if len(out) != count:
        raise ClientError(f"malformed BYTES tensor in the response: {len(out)} elements for {count}")
    return out


def query_digest(query: bytes) -> int:
    """What the server answers in QUERY_DIGEST for a query sent as these UTF-8 bytes: its 8-byte BLAKE2b
    (`blake2b(query, digest_size=8)`, not the first 8 bytes of the 64-byte digest) as a little-endian
    int64 (serving.requests.query_digest, kept equal by a test)."""
    return int.from_bytes(hashlib.blake2b(query, digest_size=8).digest(), "little", signed=True)


def _check_digests(response, raw: list, queries: list[bytes]) -> None:
    """Each answer row must carry its own query's QUERY_DIGEST. tritonserver 2.51's Python backend can
    hand a request another request's answer after a stub stalled (README, known issue); such an
    answer is refused here instead of being returned as this query's."""
    for i, o in enumerate(response.outputs):
        if o.name == "QUERY_DIGEST":
            data = raw[i] if i < len(raw) else b""
            if o.datatype != "INT64" or list(o.shape) != [len(queries), 1] or len(data) != 8 * len(queries):
                raise ClientError(f"unexpected QUERY_DIGEST {o.datatype} {list(o.shape)} ({len(data)} bytes), "
                                  f"expected INT64 {[len(queries), 1]}")
            got = np.frombuffer(data, dtype="<i8").tolist()
            wrong = [row for row, (q, d) in enumerate(zip(queries, got)) if query_digest(q) != d]
            if wrong:
                raise ClientError(f"the server answered row(s) {wrong} with another query's results (QUERY_DIGEST "
                                  "mismatch; a stalled Python-backend stub, see the README's known issue); "
                                  "nothing returned, retry")
            return
    raise ClientError("the response lacks QUERY_DIGEST")


def _hits(result, queries: list[bytes] | None = None) -> list[list[Hit]]:
    """Hits from the raw response: strings decoded straight from the wire buffers; with the queries
    as sent, each row's QUERY_DIGEST is checked too."""
    response = result.get_response()
    raw = list(response.raw_output_contents)
    if queries is not None:
        _check_digests(response, raw, queries)
    out = {o.name: (list(o.shape), o.datatype, raw[i] if i < len(raw) else b"") for i, o in enumerate(response.outputs)}
    missing = [n for n in RETRIEVE_OUTPUTS if n not in out]
    if missing:
        raise ClientError(f"the response lacks {', '.join(missing)}")
    (shape, ids_type, ids_raw), (texts_shape, texts_type, texts_raw), (scores_shape, scores_type, scores_raw) = (
        out[n] for n in RETRIEVE_OUTPUTS)
    if (ids_type, texts_type, scores_type) != ("BYTES", "BYTES", "FP32"):
        raise ClientError(f"unexpected output datatypes {[ids_type, texts_type, scores_type]}")
    if len(shape) != 2 or not shape == texts_shape == scores_shape:
        raise ClientError(f"unexpected output shapes {[shape, texts_shape, scores_shape]}")
    rows, k = shape
    ids = decode_bytes_tensor(ids_raw, rows * k)
    texts = decode_bytes_tensor(texts_raw, rows * k)
    if len(scores_raw) != 4 * rows * k:
        raise ClientError(f"malformed SCORES in the response: {len(scores_raw)} bytes for {rows * k} values")
    scores = np.frombuffer(scores_raw, dtype="<f4").tolist()
    return [[Hit(j + 1, scores[row * k + j], ids[row * k + j], texts[row * k + j]) for j in range(k)]
            for row in range(rows)]


def _scores(result, rows: int, width: int, queries: list[bytes] | None = None) -> list[list[float]]:
    """SCORES [rows, width] FP32 from the raw response, checked as _hits checks retrieve's outputs."""
    response = result.get_response()
    raw = list(response.raw_output_contents)
    if queries is not None:
        _check_digests(response, raw, queries)
    for i, o in enumerate(response.outputs):
        if o.name == "SCORES":
            if o.datatype != "FP32" or list(o.shape) != [rows, width]:
                raise ClientError(f"unexpected SCORES {o.datatype} {list(o.shape)}, expected FP32 {[rows, width]}")
            data = raw[i] if i < len(raw) else b""
            if len(data) != 4 * rows * width:
                raise ClientError(f"malformed SCORES in the response: {len(data)} bytes for {rows * width} values")
            values = np.frombuffer(data, dtype="<f4").astype(float)
            return values.reshape(rows, width).tolist()
    raise ClientError("the response lacks SCORES")


def _retrieve_params(candidates: int | None) -> dict | None:
    return None if candidates is None else {"candidates": _int32(candidates, "candidates")}


def _relevance_params(crossing: str | None) -> dict | None:
    return None if crossing is None else {"crossing": crossing}


class TwinBertClient:
    """Synchronous client. `retrieve`/`relevance` for one query, `*_batch` for several in one request (at
    most 64, the models' max_batch_size; the server refuses a larger batch)."""

    def __init__(self, url: str | None = None, timeout_s: float | None = None, options: ClientOptions | None = None):
        """`url` (default 127.0.0.1:$TRITON_GRPC_PORT or 8001) and `timeout_s` (default 10), or `options`."""
        self.options = _options(url, timeout_s, options)
        self._client = grpcclient.InferenceServerClient(url=self.options.url, **self.options.channel_kwargs())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "TwinBertClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, *args, **kwargs):
        delays = self.options.retry.delays()
        while True:
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as e:
                delay = next(delays, None) if _is_unavailable(e) else None
                if delay is None:
                    raise _error(e) from None
                time.sleep(delay)

    def _infer(self, model, inputs, outputs, parameters):
        return self._call(self._client.infer, model, inputs, outputs=outputs,
                          client_timeout=self.options.timeout_s, parameters=parameters)

    def retrieve(self, query: str, k: int = 10, candidates: int | None = None,
                 rerank_depth: int | None = None) -> list[Hit]:
        return self.retrieve_batch([query], k, candidates, rerank_depth)[0]

    def retrieve_batch(self, queries: list[str], k: int = 10, candidates: int | None = None,
                       rerank_depth: int | None = None) -> list[list[Hit]]:
        """Top-k keywords per query; `candidates` = K' re-scored with res (0 = cosine only; None = server
        default). `rerank_depth` = D instead re-orders the cosine top D with the BiLSTM re-ranker
        (the `retrieve_rerank` ensemble; k <= D <= 200)."""
        queries = _texts(queries, "queries")
        if not queries:
            return []
        return self._retrieve_from(_retrieve_model(rerank_depth, candidates), queries, k, rerank_depth,
                                   _retrieve_params(candidates))

    def _retrieve_from(self, model: str, queries: list[str], k: int, depth: int | None = None,
                       parameters: dict | None = None) -> list[list[Hit]]:
        """retrieve's request, decoding and QUERY_DIGEST check, sent to `model`: any model with
        retrieve's inputs and outputs (make bench's floor sends it to a null model too)."""
        inputs, outputs, sent = _retrieve_inputs(grpcclient, queries, k, depth)
        return _hits(self._infer(model, inputs, outputs, parameters), sent)

    def relevance(self, query: str, keyword_ids: list[str], crossing: str | None = None) -> list[float]:
        return self.relevance_batch([query], [keyword_ids], crossing)[0]

    def relevance_batch(self, queries: list[str], keyword_ids: list[list[str]], crossing: str | None = None
                        ) -> list[list[float]]:
        """One score per keyword id; `crossing` "res" or "cos" (None = server default)."""
        queries = _texts(queries, "queries")
        if not queries:
            return []
        inputs, outputs, sent = _relevance_inputs(grpcclient, queries, keyword_ids)
        result = self._infer("relevance", inputs, outputs, _relevance_params(crossing))
        return _scores(result, len(queries), len(keyword_ids[0]), sent)

    def health(self, metrics_url: str | None = None) -> dict:
        """Server liveness/readiness, each model's versions and state, and (from the Prometheus
        endpoint, `metrics_url`) the keyword store's size per loaded version."""
        timeout = {"client_timeout": self.options.timeout_s}  # a hung server must not block forever
        live = self._call(self._client.is_server_live, **timeout)
        ready = self._call(self._client.is_server_ready, **timeout)
        models = {}
        for m in self._call(self._client.get_model_repository_index, **timeout).models:
            models.setdefault(m.name, []).append({"version": m.version, "state": m.state})
        out = {"url": self.options.url, "live": live, "ready": ready, "models": models}
        if metrics_url:
            # a version's gauge outlives its unloading (the Python backend keeps a model's metric
            # families): only the versions the repository index calls READY are served
            ready_versions = {v["version"] for v in models.get("keyword_store", []) if v["state"] == "READY"}
            out["keyword_store_size"] = {v: n for v, n in store_size_from_metrics(metrics_url).items()
                                         if v in ready_versions}
        return out


def store_size_from_metrics(metrics_url: str, timeout_s: float = 5.0) -> dict[str, int]:
    """{version: keywords} from the twinbert_keyword_store_keywords gauge; {} when unreachable."""
    import re
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    pattern = r'^twinbert_keyword_store_keywords\{[^}]*version="(\d+)"[^}]*\} (\S+)$'
    return {v: int(float(n)) for v, n in re.findall(pattern, text, re.M)}


class AsyncTwinBertClient:
    """asyncio client with TwinBertClient's retrieve and relevance calls (use in `async with`)."""

    def __init__(self, url: str | None = None, timeout_s: float | None = None, options: ClientOptions | None = None):
        """`url` (default 127.0.0.1:$TRITON_GRPC_PORT or 8001) and `timeout_s` (default 10), or `options`."""
        self.options = _options(url, timeout_s, options)
        self._client = grpcaio.InferenceServerClient(url=self.options.url, **self.options.channel_kwargs())

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncTwinBertClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _infer(self, model, inputs, outputs, parameters):
        delays = self.options.retry.delays()
        while True:
            try:
                return await self._client.infer(model, inputs, outputs=outputs,
                                                 client_timeout=self.options.timeout_s, parameters=parameters)
            except InferenceServerException as e:
                delay = next(delays, None) if _is_unavailable(e) else None
                if delay is None:
                    raise _error(e) from None
                await asyncio.sleep(delay)

    async def retrieve(self, query: str, k: int = 10, candidates: int | None = None,
                       rerank_depth: int | None = None) -> list[Hit]:
        return (await self.retrieve_batch([query], k, candidates, rerank_depth))[0]

    async def retrieve_batch(self, queries, k=10, candidates=None, rerank_depth=None) -> list[list[Hit]]:
        queries = _texts(queries, "queries")
        if not queries:
            return []
        model = _retrieve_model(rerank_depth, candidates)
        inputs, outputs, sent = _retrieve_inputs(grpcaio, queries, k, rerank_depth)
        return _hits(await self._infer(model, inputs, outputs, _retrieve_params(candidates)), sent)

    async def relevance(self, query: str, keyword_ids: list[str], crossing: str | None = None) -> list[float]:
        return (await self.relevance_batch([query], [keyword_ids], crossing))[0]

    async def relevance_batch(self, queries, keyword_ids, crossing=None) -> list[list[float]]:
        queries = _texts(queries, "queries")
        if not queries:
            return []
        inputs, outputs, sent = _relevance_inputs(grpcaio, queries, keyword_ids)
        result = await self._infer("relevance", inputs, outputs, _relevance_params(crossing))
        return _scores(result, len(queries), len(keyword_ids[0]), sent)
