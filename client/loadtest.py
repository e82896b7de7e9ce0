"""Load generator for the retrieve / relevance ensembles (closed loop on threads, open loop on asyncio).

Closed loop (`--concurrency N`): N workers, each sends its next request when the last one answered.
Open loop (`--rate R`): requests are due on a Poisson schedule at R per second, whatever the latency,
and each latency counts from its due time, so queueing (in the server, or in a generator that falls
behind its schedule) shows up in latency instead of being hidden by back-pressure. Both stop at whichever
comes first of `--requests` and `--duration`; queries cycle through the given list.

Two ways to send (`client=`):
- "wire" (default): every request is built and serialised once before the run, sent as raw bytes,
  and answered responses are not decoded (the warm-up requests' are, to check the outputs; a refused
  warm-up request stops the run, before any level is measured). This is what perf_analyzer does; on a
  small machine where the generator shares the cores with the server, the generator's own CPU per
  request is load taken off the server, so it must be as small as possible to measure the server.
  The closed loop runs one thread per client on a blocking channel, as perf_analyzer does: on 2 cores,
  asyncio's hop from gRPC's polling thread to the event loop added about 0.5 ms at 2 clients (p50
  4.83 against 4.27 ms, three alternated runs; perf_analyzer 4.05-4.08). The open loop stays on one
  grpc.aio channel, which starts requests on schedule without a thread each.
- "library": through AsyncTwinBertClient, results decoded into typed objects: what an application
  using the client library sees, client-side decoding (and its retries on UNAVAILABLE) included.
A refused request counts as an error in both modes (InvalidRequest for INVALID_ARGUMENT).
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from client.core import AsyncTwinBertClient, ClientError, InvalidRequest, _int32

CLIENTS = ("wire", "library")
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_EXPECTED_OUTPUTS = {"retrieve": {"KEYWORD_IDS", "KEYWORD_TEXTS", "SCORES", "QUERY_DIGEST"},
                     "relevance": {"SCORES", "QUERY_DIGEST"}}


@dataclass
class LoadResult:
    mode: str
    target: str
    level: float                 # concurrency or request rate
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float | None         # None when no request succeeded
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    mean_ms: float | None
    error_examples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


def summarize(mode, target, level, latencies, errors, seconds, examples) -> LoadResult:
    """Percentiles and mean are None when no request succeeded (JSON has no NaN)."""
    lat = np.asarray(latencies)
    pct = lambda p: round(float(np.percentile(lat, p)), 3) if len(lat) else None  # noqa: E731
    return LoadResult(mode, target, level, len(latencies) + errors, errors, round(seconds, 3),
                      round(len(latencies) / seconds, 2) if seconds else 0.0, pct(50), pct(90), pct(99), pct(99.9),
                      round(float(lat.mean()), 3) if len(lat) else None, examples[:5], [round(x, 3) for x in latencies])


def _check_target(target: str, keyword_ids: list[str] | None) -> None:
    if target not in _EXPECTED_OUTPUTS:
        raise ValueError(f"target must be retrieve or relevance, got {target!r}")
    if target == "relevance" and not keyword_ids:
        raise ValueError("relevance load needs keyword ids")


def make_call(client: AsyncTwinBertClient, target: str, top_k: int, keyword_ids: list[str] | None):
    _check_target(target, keyword_ids)
    if target == "retrieve":
        return lambda q: client.retrieve(q, top_k)
    return lambda q: client.relevance(q, keyword_ids)


def serialized_requests(target: str, queries: list[str], top_k: int, keyword_ids: list[str] | None) -> list[bytes]:
    """One serialised ModelInferRequest per query, the same tensors the client library sends."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor
    _check_target(target, keyword_ids)
    top_k = _int32(top_k, "top_k")  # numpy would wrap 2**32 + 10 to 10 without a word
    out = []
    for q in queries:
        req = service_pb2.ModelInferRequest(model_name=target)
        tensors = [("QUERY", "BYTES", np.array([[q.encode("utf-8")]], dtype=object))]
        if target == "retrieve":
            tensors.append(("TOP_K", "INT32", np.array([[top_k]], dtype=np.int32)))
        else:
            tensors.append(("KEYWORD_IDS", "BYTES", np.array([[i.encode("utf-8") for i in keyword_ids]], dtype=object)))
        for name, dtype, array in tensors:
            t = req.inputs.add()
            t.name, t.datatype = name, dtype
            t.shape.extend(array.shape)
            req.raw_input_contents.append(serialize_byte_tensor(array).item() if dtype == "BYTES" else array.tobytes())
        out.append(req.SerializeToString())
    return out


def _rpc_error(e: grpc.RpcError) -> ClientError:
    cls = InvalidRequest if e.code() == grpc.StatusCode.INVALID_ARGUMENT else ClientError
    return cls(f"[{e.code().name}] {e.details()}", e.code().name)


def _check_outputs(target: str, raw: bytes) -> None:
    from tritonclient.grpc import service_pb2
    names = {o.name for o in service_pb2.ModelInferResponse.FromString(raw).outputs}
    if not _EXPECTED_OUTPUTS[target] <= names:
        raise ClientError(f"{target} answered without {sorted(_EXPECTED_OUTPUTS[target] - names)}")


def closed_loop_threads(url: str, target: str, payloads: list[bytes], concurrency: int, requests: int,
                        duration_s: float, warmup: int, timeout_s: float, stop: threading.Event | None = None
                        ) -> tuple[list[float], int, list[str], float]:
    """The wire closed loop: `concurrency` threads, each a blocking call after the last answered (the
    GIL is released while a call waits). Returns (latencies ms, errors, error examples, seconds).
    Setting `stop` (a cancelled run) ends every worker after its call in flight; anything a worker
    raises besides a gRPC error stops the others and is raised here."""
    stop = stop or threading.Event()
    failures: list[BaseException] = []
    channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 1 << 30),
                                                  ("grpc.max_send_message_length", 1 << 30)])
    infer = channel.unary_unary(_MODEL_INFER)
    latencies: list[float] = []
    examples: list[str] = []
    errors = 0
    lock = threading.Lock()
    try:
        for i in range(min(warmup, len(payloads))):
            try:
                _check_outputs(target, infer(payloads[i], timeout=timeout_s))
            except grpc.RpcError as e:
                raise _rpc_error(e) from None
        counter = iter(range(requests))
        deadline = time.perf_counter() + duration_s

        def worker() -> None:
            nonlocal errors
            try:
                while not stop.is_set():
                    with lock:
                        i = next(counter, None)
                    if i is None or time.perf_counter() > deadline:
                        return
                    t = time.perf_counter()
                    try:
                        infer(payloads[i % len(payloads)], timeout=timeout_s)
                        latency = (time.perf_counter() - t) * 1000
                        with lock:
                            latencies.append(latency)
                    except grpc.RpcError as e:  # counted, never retried: a load tool reports failures
                        with lock:
                            errors += 1
                            examples.append(str(_rpc_error(e)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, not lost in a thread
                failures.append(e)
                stop.set()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:
            stop.set()
        if failures:
            raise failures[0]
        return latencies, errors, examples, time.perf_counter() - start
    finally:
        channel.close()


class WireCaller:
    """Sends pre-serialised requests; a gRPC error becomes a ClientError with the server's message."""

    def __init__(self, url: str, target: str, payloads: list[bytes], timeout_s: float = 30.0):
        self.target, self.payloads, self.timeout_s = target, payloads, timeout_s
        self.channel = grpc.aio.insecure_channel(url, options=[("grpc.max_receive_message_length", 1 << 30),
                                                               ("grpc.max_send_message_length", 1 << 30)])
        self.infer = self.channel.unary_unary(_MODEL_INFER)  # bytes in, bytes out: no (de)serialisation

    async def __call__(self, i: int, check: bool = False) -> None:
        try:
            raw = await self.infer(self.payloads[i % len(self.payloads)], timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:  # counted, never retried: a load tool reports failures
            raise _rpc_error(e) from None
        if check:
            _check_outputs(self.target, raw)

    async def close(self) -> None:
        await self.channel.close()


async def run_load(url: str, queries: list[str], target: str = "retrieve", concurrency: int = 0, rate: float = 0.0,
                   requests: int = 1000, duration_s: float = 30.0, top_k: int = 100,
                   keyword_ids: list[str] | None = None, warmup: int = 20, seed: int = 0,
                   client: str = "wire", timeout_s: float = 30.0) -> LoadResult:
    if bool(concurrency) == bool(rate):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if not queries:
        raise ValueError("no queries to send")
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
    latencies: list[float] = []
    errors, examples = 0, []
    if client == "wire" and concurrency:
        payloads = serialized_requests(target, queries, top_k, keyword_ids)
        stop = threading.Event()
        try:
            latencies, errors, examples, seconds = await asyncio.to_thread(
                closed_loop_threads, url, target, payloads, concurrency, requests, duration_s, warmup, timeout_s,
                stop)
        except asyncio.CancelledError:  # Ctrl-C: the workers stop after their call in flight
            stop.set()
            raise
        return summarize("closed", target, concurrency, latencies, errors, seconds, examples)
    if client == "wire":
        caller = WireCaller(url, target, serialized_requests(target, queries, top_k, keyword_ids), timeout_s)
        call, close, first = caller, caller.close, (lambda i: caller(i, check=True))
    else:
        _check_target(target, keyword_ids)  # before connecting: nothing to close on a bad argument
        library = AsyncTwinBertClient(url, timeout_s=timeout_s)  # as applications use it, retries included
        by_query = make_call(library, target, top_k, keyword_ids)
        call = first = (lambda i: by_query(queries[i % len(queries)]))
        close = library.close
    try:
        for i in range(min(warmup, len(queries))):
            await first(i)
        counter = iter(range(requests))
        deadline = time.perf_counter() + duration_s

        async def one(i: int, due: float | None = None) -> None:
            """`due`: the open loop's scheduled start; latency counts from it even if the send is late."""
            nonlocal errors
            t = time.perf_counter() if due is None else due
            try:
                await call(i)
                latencies.append((time.perf_counter() - t) * 1000)
            except ClientError as e:
                errors += 1
                examples.append(str(e))

        start = time.perf_counter()
        if concurrency:
            async def worker() -> None:
                for i in counter:
                    if time.perf_counter() > deadline:
                        return
                    await one(i)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks, next_t = [], start
            for i in counter:
                next_t += rng.expovariate(rate)
                if next_t > deadline:
                    break
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(i, next_t)))
            await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
    finally:
        await close()
    return summarize("closed" if concurrency else "open", target, concurrency or rate, latencies, errors,
                     seconds, examples)


def sweep(url: str, queries: list[str], target: str, levels: list[float], mode: str = "closed",
          requests: int = 1000, duration_s: float = 20.0, top_k: int = 100, keyword_ids=None,
          client: str = "wire", timeout_s: float = 30.0) -> list[LoadResult]:
    out = []
    for level in levels:
        kwargs = {"concurrency": int(level)} if mode == "closed" else {"rate": float(level)}
        r = asyncio.run(run_load(url, queries, target, requests=requests, duration_s=duration_s, top_k=top_k,
                                 keyword_ids=keyword_ids, client=client, timeout_s=timeout_s, **kwargs))
        print(f"loadtest {target} {mode} {level:g}: {r.throughput_rps:.0f} req/s, p50 {r.p50_ms} ms, "
              f"p99 {r.p99_ms} ms, errors {r.errors}", flush=True)
        out.append(r)
    return out

