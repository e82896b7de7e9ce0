"""Client-side pieces that need no server: retry policy, load statistics, reports."""
import json
import subprocess
import sys

import pytest
from tritonclient.utils import InferenceServerException

from client.core import ClientError, ClientOptions, InvalidRequest, RetryPolicy, TwinBertClient, _error
from client.loadtest import summarize
from client.report import write_load_report


class FlakyClient(TwinBertClient):
    def __init__(self, failures, status):
        self.options = ClientOptions(retry=RetryPolicy(attempts=3, initial_backoff_s=0.001))
        self.calls, self.failures, self.status = 0, failures, status

    def flaky(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise InferenceServerException("boom", status=self.status)
        return "ok"


def test_unavailable_is_retried_with_backoff_then_succeeds():
    c = FlakyClient(2, "StatusCode.UNAVAILABLE")
    assert c._call(c.flaky) == "ok" and c.calls == 3


def test_retries_are_bounded():
    c = FlakyClient(5, "StatusCode.UNAVAILABLE")
    with pytest.raises(ClientError, match="boom"):
        c._call(c.flaky)
    assert c.calls == 3


def test_other_errors_are_not_retried():
    c = FlakyClient(1, "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InvalidRequest) as e:
        c._call(c.flaky)
    assert c.calls == 1 and e.value.status == "StatusCode.INVALID_ARGUMENT"
    assert type(_error(InferenceServerException("x", status="StatusCode.INTERNAL"))) is ClientError


def test_summary_percentiles_and_throughput():
    r = summarize("closed", "retrieve", 4, [float(i) for i in range(1, 101)], 2, 10.0, ["e1", "e2"])
    assert r.requests == 102 and r.errors == 2 and r.throughput_rps == 10.0
    assert r.p50_ms == pytest.approx(50.5) and r.p99_ms == pytest.approx(99.01)
    assert "latencies_ms" not in r.summary()


def test_report_writes_table_json_csv_and_png(tmp_path):
    results = [summarize("closed", "retrieve", c, [5.0 + c + (i % 7) for i in range(200)], 0, 2.0, [])
               for c in (1, 4)]
    perf = [{"tool": "perf_analyzer", "mode": "closed", "target": "retrieve", "level": 1, "throughput_rps": 90.0,
             "p50_ms": 6.0, "p90_ms": 8.0, "p99_ms": 9.0}]
    write_load_report(results, tmp_path / "lt", "retrieve", extra_series={"perf_analyzer": perf}, notes=["a note"])
    md = (tmp_path / "lt.md").read_text()
    assert "| project load generator | closed | retrieve | 4 |" in md and "a note" in md
    assert len(json.loads((tmp_path / "lt.json").read_text())["rows"]) == 3
    assert (tmp_path / "lt.csv").read_text().count("\n") == 4
    assert (tmp_path / "lt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _response(ids, texts, scores, shape, scores_dtype="FP32", scores_bytes=None, drop=(), digests=None):
    import numpy as np
    from tritonclient.grpc import InferResult, service_pb2
    wire = lambda items: b"".join(len(b).to_bytes(4, "little") + b for b in items)  # noqa: E731
    r = service_pb2.ModelInferResponse(model_name="retrieve")
    raw = scores_bytes if scores_bytes is not None else np.array(scores, dtype="<f4").tobytes()
    outputs = [("KEYWORD_IDS", "BYTES", wire(ids), shape), ("KEYWORD_TEXTS", "BYTES", wire(texts), shape),
               ("SCORES", scores_dtype, raw, shape)]
    if digests is not None:
        outputs.append(("QUERY_DIGEST", "INT64", np.array(digests, dtype="<i8").tobytes(), [len(digests), 1]))
    for name, dtype, data, dims in outputs:
        if name in drop:
            continue
        o = r.outputs.add()
        o.name, o.datatype = name, dtype
        o.shape.extend(dims)
        r.raw_output_contents.append(data)
    return InferResult(r)


def test_query_digest_is_the_servers():
    """The client checks each answer's QUERY_DIGEST with its own copy of the server's function."""
    from client.core import query_digest
    from serving.requests import query_digest as served, query_digests
    import numpy as np
    for q in ("drill", "Ø 3/4 in. pipe", "x" * 10_000, " padded "):
        assert query_digest(q.encode()) == served(q.encode()) == served(q)
    assert query_digests(np.array([[b"a"], [b"b"]], dtype=object)).tolist() == [[served(b"a")], [served(b"b")]]
    assert query_digest(b"drill") != query_digest(b"drill ")  # the bytes as sent, not as stripped


def test_an_answer_that_belongs_to_another_query_is_refused():
    from client.core import _hits, _scores, query_digest
    ids, texts, scores = [b"1", b"2"], [b"Drill", b"Hose"], [0.9, 0.8]
    mine, other = [b"drill", b"hose"], [b"drill", b"paint"]
    hits = _hits(_response(ids, texts, scores, [2, 1], digests=[query_digest(q) for q in mine]), mine)
    assert [h[0].keyword_id for h in hits] == ["1", "2"]
    with pytest.raises(ClientError, match=r"row\(s\) \[1\] with another query's results"):
        _hits(_response(ids, texts, scores, [2, 1], digests=[query_digest(q) for q in other]), mine)
    with pytest.raises(ClientError, match="lacks QUERY_DIGEST"):
        _hits(_response(ids, texts, scores, [2, 1]), mine)
    with pytest.raises(ClientError, match="unexpected QUERY_DIGEST"):
        _hits(_response(ids, texts, scores, [2, 1], digests=[query_digest(b"drill")]), mine)
    r = _response(ids, texts, scores, [2, 1], digests=[query_digest(q) for q in other])
    with pytest.raises(ClientError, match="another query's results"):
        _scores(r, 2, 1, mine)
    assert _scores(r, 2, 1, other) == [[pytest.approx(0.9)], [pytest.approx(0.8)]]


def test_hits_decode_the_wire_format_row_by_row():
    from client.core import Hit, _hits
    ids = [b"1", "ü2".encode(), b"", b"4"]
    texts = ["Drill".encode(), "Ø 3/4 in. pipe".encode(), b"Hose", "".encode()]
    hits = _hits(_response(ids, texts, [0.9, 0.5, 0.8, 0.1], [2, 2]))
    assert hits == [[Hit(1, pytest.approx(0.9), "1", "Drill"), Hit(2, 0.5, "ü2", "Ø 3/4 in. pipe")],
                    [Hit(1, pytest.approx(0.8), "", "Hose"), Hit(2, pytest.approx(0.1), "4", "")]]
    assert hits[0][0].to_dict() == {"rank": 1, "score": hits[0][0].score, "keyword_id": "1", "keyword": "Drill"}
    assert _hits(_response([], [], [], [1, 0])) == [[]]


def test_malformed_responses_raise_client_errors():
    from client.core import _hits, decode_bytes_tensor
    good = b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert decode_bytes_tensor(good, 2) == ["ab", "c"]
    for buf, count, match in ((good[:-1], 2, "overruns"), (good[:7], 2, "truncated"), (good, 3, "2 elements for 3")):
        with pytest.raises(ClientError, match=match):
            decode_bytes_tensor(buf, count)
    with pytest.raises(ClientError, match="2 elements for 4"):
        _hits(_response([b"a", b"b"], [b"x", b"y"], [0.1, 0.2, 0.3, 0.4], [2, 2]))
    with pytest.raises(ClientError, match="unexpected output shapes"):
        _hits(_response([b"a", b"b"], [b"x", b"y"], [0.1, 0.2], [2]))
    with pytest.raises(ClientError, match="lacks SCORES"):
        _hits(_response([b"a"], [b"x"], [0.1], [1, 1], drop=("SCORES",)))
    with pytest.raises(ClientError, match="datatypes"):
        _hits(_response([b"a"], [b"x"], [0.1], [1, 1], scores_dtype="FP64", scores_bytes=b"\0" * 8))
    with pytest.raises(ClientError, match="7 bytes for 2 values"):
        _hits(_response([b"a", b"b"], [b"x", b"y"], None, [1, 2], scores_bytes=b"\0" * 7))
    with pytest.raises(ClientError, match="not valid UTF-8"):
        _hits(_response([b"a", b"\xff"], [b"x", b"y"], [0.1, 0.2], [1, 2]))


def test_requests_the_client_cannot_encode_are_refused_before_sending():
    import tritonclient.grpc as grpcclient

    from client.core import _relevance_inputs, _retrieve_inputs
    with pytest.raises(ValueError, match="not valid Unicode"):
        _retrieve_inputs(grpcclient, ["drill \udcff"], 3)  # a surrogate, as a shell passes undecodable bytes
    with pytest.raises(ValueError, match="keyword id"):
        _relevance_inputs(grpcclient, ["drill"], [["d1", "\udcff"]])
    with pytest.raises(ValueError, match="2 queries, 1 lists"):
        _relevance_inputs(grpcclient, ["drill", "fan"], [["d1"]])


def test_cli_names_an_unencodable_query():
    out = subprocess.run([sys.executable, "-m", "client", "query", b"drill \xff".decode("utf-8", "surrogateescape"),
                          "--url", "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                         errors="surrogateescape")
    assert out.returncode == 2 and "not valid Unicode" in out.stderr and "Traceback" not in out.stderr


def test_counts_strings_and_options_are_checked_before_sending():
    import tritonclient.grpc as grpcclient

    from client.core import _relevance_inputs, _retrieve_inputs, _retrieve_params
    for k in (2**32 + 5, 10.9, True, "10"):  # numpy would send 2**32 + 5 as 5 and 10.9 as 10
        with pytest.raises(ValueError, match="k"):
            _retrieve_inputs(grpcclient, ["drill"], k)
    with pytest.raises(ValueError, match="rerank_depth"):
        _retrieve_inputs(grpcclient, ["drill"], 10, 2**31)
    with pytest.raises(ValueError, match="candidates"):
        _retrieve_params(1.5)
    assert _retrieve_params(0) == {"candidates": 0}
    with pytest.raises(ValueError, match="not one string"):  # would be sent as ids "1", "0", "0", ...
        _relevance_inputs(grpcclient, ["drill"], ["100001"])
    with pytest.raises(ValueError, match="not one string"):
        TwinBertClient("127.0.0.1:1").retrieve_batch("fan")
    with pytest.raises(ValueError, match="not both"):  # the url would silently lose to options'
        TwinBertClient("remote:8001", options=ClientOptions())
    assert TwinBertClient(timeout_s=3).options.timeout_s == 3
    assert TwinBertClient(options=ClientOptions(url="remote:9")).options.url == "remote:9"


def test_backoff_never_exceeds_its_cap():
    delays = [d for _ in range(200) for d in RetryPolicy(attempts=6, initial_backoff_s=0.5, max_backoff_s=1.0).delays()]
    assert max(delays) <= 1.0 and min(delays) >= 0.25


def test_relevance_scores_are_checked_like_retrieve_outputs():
    import numpy as np
    from tritonclient.grpc import InferResult, service_pb2

    from client.core import _scores

    def response(shape, dtype="FP32", data=None, name="SCORES"):
        r = service_pb2.ModelInferResponse(model_name="relevance")
        o = r.outputs.add()
        o.name, o.datatype = name, dtype
        o.shape.extend(shape)
        r.raw_output_contents.append(np.arange(int(np.prod(shape)), dtype="<f4").tobytes() if data is None else data)
        return InferResult(r)
    assert _scores(response([2, 3]), 2, 3) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    for bad, match in ((response([3, 2]), "expected FP32"), (response([2, 3], "FP64"), "expected FP32"),
                       (response([2, 3], data=b"\0" * 5), "5 bytes"), (response([2, 3], name="X"), "lacks SCORES")):
        with pytest.raises(ClientError, match=match):
            _scores(bad, 2, 3)


def test_a_level_where_every_request_failed_reports_null_not_nan(tmp_path):
    r = summarize("closed", "retrieve", 2, [], 5, 1.0, ["refused"])
    assert r.requests == 5 and r.p50_ms is None and r.mean_ms is None
    ok = summarize("closed", "retrieve", 1, [4.0, 6.0], 0, 1.0, [])
    write_load_report([ok, r], tmp_path / "run.v2", "retrieve")  # a dot in the name keeps the whole name
    assert json.loads((tmp_path / "run.v2.json").read_text())["rows"][1]["p50_ms"] is None  # strict JSON
    assert "(run.v2.png)" in (tmp_path / "run.v2.md").read_text() and (tmp_path / "run.v2.png").is_file()


def test_open_loop_latency_counts_from_the_due_time():
    """A generator that falls behind its Poisson schedule must not hide the delay: the event loop is
    blocked while requests fall due, and their latencies must include the time they waited to start."""
    import asyncio
    import time as _time

    import client.loadtest as lt

    class Blocking:
        """Stands in for the wire caller: the first call blocks the event loop for 0.2 s."""
        def __init__(self, *a, **k):
            self.calls = 0

        async def __call__(self, i, check=False):
            self.calls += 1
            if self.calls == 1:
                _time.sleep(0.2)  # the loop is stuck: requests due meanwhile start late

        async def close(self):
            pass

    real = lt.WireCaller
    lt.WireCaller = Blocking
    try:
        r = asyncio.run(lt.run_load("unused:1", ["q"], "retrieve", rate=200, requests=40, duration_s=5, warmup=0))
    finally:
        lt.WireCaller = real
    # about 40 requests were due within the blocked 0.2 s; counted from their due times, many of them
    # waited about as long (counted from their late starts they would show about 0 ms)
    assert r.errors == 0 and r.p50_ms > 20


def test_loadtest_cli_refuses_bad_input_with_exit_2(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "client", "loadtest", "--url", "127.0.0.1:1", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    missing = run("--queries", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "q.txt").write_text("drill\n")
    both = run("--queries", str(tmp_path / "q.txt"), "--concurrency", "1", "--rate", "5")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    (tmp_path / "file").write_text("")  # a file where the report's folder should be: refused before any load
    nowhere = run("--queries", str(tmp_path / "q.txt"), "--out", str(tmp_path / "file" / "lt"))
    assert nowhere.returncode == 2 and "report folder" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_wire_requests_refuse_a_top_k_int32_would_wrap():
    from client.loadtest import serialized_requests
    with pytest.raises(ValueError, match="out of range"):
        serialized_requests("retrieve", ["drill"], 2**32 + 10, None)


def test_default_retries_reach_a_server_that_comes_back():
    """A server down when the call starts and listening 1.2 s later (a restart): the default policy
    and channel get through to it. The server is a real gRPC server with no services, so reaching it
    shows as UNIMPLEMENTED (after 1.9 s here; 2.7 s with gRPC's own reconnect backoff). The earlier
    policy, three attempts within 0.2 s, failed with UNAVAILABLE after 0.16 s."""
    import threading
    from concurrent import futures

    import grpc

    from serving.server import free_port

    def attempt() -> str:
        port = free_port()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))

        def come_back():  # binding listens at once: a call would wait for start() instead of failing
            server.add_insecure_port(f"127.0.0.1:{port}")
            server.start()
        timer = threading.Timer(1.2, come_back)
        timer.start()
        try:
            with TwinBertClient(f"127.0.0.1:{port}", timeout_s=5) as c, pytest.raises(ClientError) as e:
                c.retrieve("drill", 3)
            return str(e.value.status)
        finally:
            timer.cancel()
            server.stop(0)
    # a second try only if the first ran out: a stall of the shared host can delay the timer past the
    # policy's jittered waits; the earlier policy fails both
    status = attempt()
    if "UNAVAILABLE" in status:
        status = attempt()
    assert "UNIMPLEMENTED" in status


def test_threaded_closed_loop_counts_every_request_and_raises_what_a_worker_hit(monkeypatch):
    """The wire closed loop's threads (no server: a fake channel): requests are shared out exactly,
    and a failure that is not a gRPC error stops the run instead of dying silently in its thread."""
    import threading

    import client.loadtest as lt

    class Channel:
        def __init__(self, fail_at=None):
            self.calls, self.fail_at, self.lock = 0, fail_at, threading.Lock()

        def unary_unary(self, _method):
            def infer(payload, timeout=None):
                with self.lock:
                    self.calls += 1
                    n = self.calls
                if n == self.fail_at:
                    raise MemoryError("worker blew up")
                return b""
            return infer

        def close(self):
            pass

    channel = Channel()
    monkeypatch.setattr(lt.grpc, "insecure_channel", lambda url, options=None: channel)
    latencies, errors, _, _ = lt.closed_loop_threads("x:1", "retrieve", [b"a", b"b"], 3, 50, 30.0, 0, 1.0)
    assert len(latencies) == 50 and errors == 0 and channel.calls == 50
    channel = Channel(fail_at=7)
    with pytest.raises(MemoryError, match="worker blew up"):
        lt.closed_loop_threads("x:1", "retrieve", [b"a"], 3, 10_000, 30.0, 0, 1.0)
    assert channel.calls < 10_000  # the other workers stopped too
    stop = threading.Event()
    stop.set()
    channel = Channel()
    assert lt.closed_loop_threads("x:1", "retrieve", [b"a"], 2, 100, 30.0, 0, 1.0, stop)[0] == []


def test_perf_analyzer_profile_export_gives_one_latency_per_request(tmp_path):
    from client.perf import profile_latencies
    # as perf_analyzer 2.51 writes it: nanosecond timestamps, the answers' raw bytes (not always UTF-8)
    requests = [{"timestamp": 1_000_000_000, "request_inputs": {"QUERY": "drill"},
                 "response_timestamps": [1_003_250_000], "response_outputs": "\udcff"},
                {"timestamp": 2_000_000_000, "request_inputs": {"QUERY": "hose"},
                 "response_timestamps": [2_001_000_000, 2_002_500_000]}]
    doc = {"experiments": [{"experiment": {"mode": "concurrency", "value": 1}, "requests": requests,
                            "window_boundaries": [0, 1]}], "version": "2.51.0"}
    path = tmp_path / "export.json"
    path.write_bytes(json.dumps(doc).replace('"\\udcff"', '"\xff"').encode("latin-1"))
    assert profile_latencies(path) == pytest.approx([3.25, 2.5])
    requests.reverse()  # listed in another order: still returned in the order sent
    path.write_text(json.dumps(doc))
    assert profile_latencies(path) == pytest.approx([3.25, 2.5])
    requests.reverse()
    requests[1]["response_timestamps"] = []
    path.write_text(json.dumps(doc))
    with pytest.raises(RuntimeError, match="without a response"):
        profile_latencies(path)
    path.write_text(json.dumps({"experiments": []}))
    with pytest.raises(RuntimeError, match="holds no requests"):
        profile_latencies(path)


def test_perf_analyzer_latencies_runs_a_hung_perf_analyzer_again(tmp_path, monkeypatch, capsys):
    """A perf_analyzer run that does not finish in time is killed and run once more; a second hang is a
    clear error, not a 300 s stall per call."""
    from client import perf
    calls = []

    def fake(url, model, input_data, concurrency, options, timeout_s):
        calls.append(timeout_s)
        export = tmp_path / "e.json"
        assert options[options.index("--profile-export-file") + 1] == str(export)
        assert not export.exists()  # a stale export of the killed run would be refused by perf_analyzer
        if len(calls) == 1 or hang_always:
            export.write_text("partial")
            raise subprocess.TimeoutExpired("perf_analyzer", timeout_s)
        reqs = [{"timestamp": i * 10**9, "response_timestamps": [i * 10**9 + 10**6]} for i in range(1, 4)]
        export.write_text(json.dumps({"experiments": [{"requests": reqs}]}))

    monkeypatch.setattr(perf, "_perf_analyzer", fake)
    hang_always = False
    assert perf.perf_analyzer_latencies("x:1", "null_retrieve", tmp_path / "in.json", 3, tmp_path / "e.json",
                                        timeout_s=5) == pytest.approx([1.0, 1.0, 1.0])
    assert calls == [5, 5] and "running it again" in capsys.readouterr().err
    hang_always, calls[:] = True, []
    with pytest.raises(RuntimeError, match="did not finish 3 requests to null_retrieve within 5 s, 2 times"):
        perf.perf_analyzer_latencies("x:1", "null_retrieve", tmp_path / "in.json", 3, tmp_path / "e.json",
                                     timeout_s=5)
    assert len(calls) == 2
