"""End to end on the real tritonserver: tiny real model + index built here, queried over gRPC."""
import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import AsyncTwinBertClient, ClientError, InvalidRequest, TwinBertClient
from serving.encoder import trim_padding
from serving.server import TritonServer, free_server_ports

pytestmark = pytest.mark.server

TITLES = {
    "d1": "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit",
    "d2": "Milwaukee M18 Cordless Compact Drill Driver",
    "f1": "Hampton Bay 52 in. Ceiling Fan with Light Kit",
    "f2": "Westinghouse 42 in. White Indoor Ceiling Fan",
    "h1": "Flexzilla 50 ft. Garden Hose",
    "h2": "Gilmour 75 ft. Heavy Duty Rubber Garden Hose",
    "k1": "Glacier Bay White Single-Handle Kitchen Faucet",
    "t1": "American Standard Elongated Toilet Seat",
    "p1": "BEHR Premium Plus Ultra Interior Paint",
    "l1": "Philips 60-Watt Equivalent LED Light Bulb",
    "m1": "Quikrete 80 lb. Concrete Mix",
    "s1": "Simpson Strong-Tie 12-Gauge Angle Bracket",
}


@pytest.fixture(scope="module")
def server(tiny_export, tiny_reranker, tmp_path_factory, build_repository):
    root = tmp_path_factory.mktemp("serving")
    _, repo = build_repository(tiny_export, TITLES, root, tiny_reranker)
    with TritonServer(repo, **free_server_ports(),
                      log_file=root / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def in_process(server):
    from serving.pipeline import InProcessPipeline
    return InProcessPipeline(server.repository)


def test_served_models_run_the_cpp_pool_cross_path(server):
    log = server.log_file.read_text(errors="replace")
    assert "keyword_store: pool_cross CPU path: C++" in log and "pool_cross: pool_cross CPU path: C++" in log


def test_served_encoders_run_the_path_auto_picks_for_this_cpu(server):
    from training.precision import cpu_has_bf16_matmul
    log = server.log_file.read_text(errors="replace")
    want = "fast bf16 (" if cpu_has_bf16_matmul() else "torchscript (auto: no bf16 matrix hardware on this CPU)"
    for model in ("keyword_store", "query_encoder"):
        assert f"{model}: query encoder: {want}" in log, model


def test_retrieve_ranks_the_asked_for_product_first(server):
    with TwinBertClient(server.grpc_url) as c:
        drill = c.retrieve("cordless drill", 5)
        hose = c.retrieve("50 ft garden hose", 3)
    assert len(drill) == 5 and [h.rank for h in drill] == [1, 2, 3, 4, 5]
    assert drill[0].keyword_id in {"d1", "d2"}
    assert drill[0].keyword == TITLES[drill[0].keyword_id]
    assert all(a.score >= b.score for a, b in zip(drill, drill[1:]))
    assert hose[0].keyword_id in {"h1", "h2"}


def test_batched_request_answers_each_row(server):
    with TwinBertClient(server.grpc_url) as c:
        fan, faucet = c.retrieve_batch(["ceiling fan", "kitchen faucet"], 2)
    assert fan[0].keyword_id in {"f1", "f2"} and faucet[0].keyword_id == "k1"


def test_k_larger_than_the_store_returns_the_whole_store(server):
    with TwinBertClient(server.grpc_url) as c:
        assert len(c.retrieve("paint", 100)) == len(TITLES)


@pytest.mark.parametrize("query, k, message", [
    ("   ", 5, "empty or blank"),
    ("drill", 0, "between 1 and 1000"),
    ("drill", 5000, "between 1 and 1000"),
])
def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(server, query, k, message):
    with TwinBertClient(server.grpc_url) as c:
        with pytest.raises(ClientError, match=message) as err:
            c.retrieve(query, k)
        assert err.value.status == "StatusCode.INVALID_ARGUMENT"
        assert c.retrieve("drill", 1)[0].keyword_id in {"d1", "d2"}


def _query_and_top_k(query: bytes, k: int):
    """QUERY and TOP_K inputs for one raw request (what the client library would not send)."""
    q = grpcclient.InferInput("QUERY", [1, 1], "BYTES")
    q.set_data_from_numpy(np.array([[query]], dtype=object))
    top_k = grpcclient.InferInput("TOP_K", [1, 1], "INT32")
    top_k.set_data_from_numpy(np.array([[k]], dtype=np.int32))
    return q, top_k


def test_non_utf8_query_is_rejected(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q, k = _query_and_top_k(b"\xff\xfedrill", 3)
    with pytest.raises(Exception, match="not valid UTF-8"):
        client.infer("retrieve", [q, k])
    client.close()


def test_a_10000_character_query_is_answered(server):
    """Truncated to the encoder's 16 WordPieces ([CLS], 14 words, [SEP]): the answer of those 14 words."""
    with TwinBertClient(server.grpc_url) as c:
        long = c.retrieve("drill " * 1700, 3)
        assert len(long) == 3 and long == c.retrieve("drill " * 14, 3)


def test_cli_prints_json_results(server):
    out = subprocess.run([sys.executable, "-m", "client", "query", "garden hose", "--top-k", "2",
                          "--url", server.grpc_url, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["keyword_id"] in {"h1", "h2"}


def test_relevance_scores_each_keyword_and_matches_in_process(server, in_process):
    ids = ["d1", "f1", "h1", "k1"]
    with TwinBertClient(server.grpc_url) as c:
        served = c.relevance("cordless drill", ids)
        served_res = c.relevance("cordless drill", ids, crossing="res")
    assert len(served) == 4 and served[0] == max(served)  # tiny model: default crossing is cos
    np.testing.assert_allclose(served, in_process.relevance("cordless drill", ids, "cos"), atol=1e-5)
    np.testing.assert_allclose(served_res, in_process.relevance("cordless drill", ids, "res"), atol=1e-5)


def test_served_retrieve_equals_the_in_process_pipeline(server, in_process):
    with TwinBertClient(server.grpc_url) as c:
        for candidates in (None, 0, 8):  # None: the server's default
            hits = c.retrieve("ceiling fan with light", 5, candidates=candidates)
            ids, _, scores = in_process.retrieve("ceiling fan with light", 5, candidates)
            assert [h.keyword_id for h in hits] == [i.decode() for i in ids[0]]
            np.testing.assert_allclose([h.score for h in hits], scores[0], atol=1e-5)


def test_retrieve_rerank_reorders_the_cosine_candidates_as_in_process(server, in_process):
    query = "cordless drill with battery"
    with TwinBertClient(server.grpc_url) as c:
        for k, depth in ((3, 8), (5, 5), (4, 200)):  # 200: deeper than the store, which has 12
            hits = c.retrieve(query, k, rerank_depth=depth)
            ids, texts, scores = in_process.retrieve_rerank(query, k, depth)
            assert [h.keyword_id for h in hits] == [i.decode() for i in ids[0]]
            assert [h.keyword for h in hits] == [TITLES[h.keyword_id] for h in hits]
            np.testing.assert_allclose([h.score for h in hits], scores[0], atol=1e-5)
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:])) and len(hits) == k
            cosine = {h.keyword_id for h in c.retrieve(query, depth if depth <= len(TITLES) else len(TITLES),
                                                      candidates=0)}
            assert {h.keyword_id for h in hits} <= cosine  # re-ordered candidates, nothing else
        # the re-ranker's scores are those of the pairs: the same as scoring them directly
        direct = in_process.reranker.scores(query, [TITLES[h.keyword_id] for h in hits])
        np.testing.assert_allclose([h.score for h in hits], direct, atol=1e-5)
        batched = c.retrieve_batch([query, "garden hose"], 2, rerank_depth=6)
        assert [h.keyword_id for h in batched[0]] == [h.keyword_id for h in c.retrieve(query, 2, rerank_depth=6)]


@pytest.mark.parametrize("k, depth, message", [
    (5, 3, "DEPTH must be between TOP_K .5. and 200, got 3"),
    # refused by keyword_store before it searches (it has no TOP_K: 1..200)
    (5, 201, "DEPTH must be between 1 and 200, got 201"), (5, 0, "DEPTH must be between 1 and 200, got 0"),
    (5, -4, "DEPTH must be between 1 and 200, got -4"), (0, 10, "TOP_K must be between 1 and 1000, got 0$"),
])
def test_retrieve_rerank_bad_depth_or_k_fails_alone(server, k, depth, message):
    with TwinBertClient(server.grpc_url) as c:
        with pytest.raises(InvalidRequest, match=message):
            c.retrieve("drill", k, rerank_depth=depth)
        assert len(c.retrieve("drill", 2, rerank_depth=4)) == 2


def test_retrieve_rerank_refuses_a_missing_depth_and_a_blank_query(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q, k = _query_and_top_k(b"drill", 3)
    with pytest.raises(Exception, match="DEPTH"):
        client.infer("retrieve_rerank", [q, k])
    client.close()
    with TwinBertClient(server.grpc_url) as c:
        with pytest.raises(InvalidRequest, match="empty or blank"):
            c.retrieve("  ", 3, rerank_depth=5)
        with pytest.raises(ValueError, match="exclude each other"):
            c.retrieve("drill", 3, candidates=5, rerank_depth=5)
    # a raw request with candidates (which Triton passes on to every model of the ensemble) is refused
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    q, k = _query_and_top_k(b"drill", 3)
    depth = grpcclient.InferInput("DEPTH", [1, 1], "INT32")
    depth.set_data_from_numpy(np.array([[5]], dtype=np.int32))
    for candidates in (5, 3):  # 3 < DEPTH: keyword_store names the real problem, not "between TOP_K (5)"
        with pytest.raises(Exception, match=f"'candidates' .{candidates}. does not apply to retrieve_rerank"):
            raw.infer("retrieve_rerank", [q, k, depth], parameters={"candidates": candidates})
    assert len(raw.infer("retrieve_rerank", [q, k, depth], parameters={"candidates": 0}).as_numpy("SCORES")[0]) == 3
    raw.close()
    with TwinBertClient(server.grpc_url) as c:
        # candidates=0 (the cosine order) is what the re-ranker reads anyway, so it is allowed
        assert ([h.keyword_id for h in c.retrieve("drill", 3, candidates=0, rerank_depth=5)]
                == [h.keyword_id for h in c.retrieve("drill", 3, rerank_depth=5)])


def test_answers_carry_their_query_digest_and_the_reranker_refuses_another_querys_candidates(server):
    """QUERY_DIGEST on the wire, row by row; candidates handed to the re-ranker with another query's
    digest (what a stalled stub's stale answer would be) fail that request, and only it."""
    from serving.requests import query_digest
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    q = grpcclient.InferInput("QUERY", [2, 1], "BYTES")
    q.set_data_from_numpy(np.array([[b"drill"], [b"ceiling fan"]], dtype=object))
    k = grpcclient.InferInput("TOP_K", [2, 1], "INT32")
    k.set_data_from_numpy(np.array([[3], [3]], dtype=np.int32))
    assert raw.infer("retrieve", [q, k]).as_numpy("QUERY_DIGEST").tolist() == [[query_digest(b"drill")],
                                                                               [query_digest(b"ceiling fan")]]

    def rerank(digest):
        inputs = []
        for name, dtype, value in (("QUERY", "BYTES", np.array([[b"drill"]], dtype=object)),
                                   ("KEYWORD_IDS", "BYTES", np.array([[b"d1", b"d2"]], dtype=object)),
                                   ("KEYWORD_TEXTS", "BYTES", np.array([[TITLES["d1"].encode(), TITLES["d2"].encode()]],
                                                                       dtype=object)),
                                   ("TOP_K", "INT32", np.array([[2]], dtype=np.int32)),
                                   ("DEPTH", "INT32", np.array([[2]], dtype=np.int32)),
                                   ("CANDIDATES_DIGEST", "INT64", np.array([[digest]], dtype=np.int64))):
            t = grpcclient.InferInput(name, list(value.shape), dtype)
            t.set_data_from_numpy(value)
            inputs.append(t)
        return raw.infer("reranker", inputs)
    assert rerank(query_digest(b"drill")).as_numpy("QUERY_DIGEST").tolist() == [[query_digest(b"drill")]]
    with pytest.raises(InferenceServerException, match="belong to another query"):
        rerank(query_digest(b"ceiling fan"))
    assert len(rerank(query_digest(b"drill")).as_numpy("SCORES")[0]) == 2
    raw.close()


@pytest.mark.parametrize("model", ["keyword_vectors", "relevance", "query_encoder"])
def test_an_empty_batch_fails_alone(server, model):
    """A request of 0 rows: Triton 2.51 refuses it before any model runs (its size checks count a
    batch of at least one); the models refuse one too (serving/requests.py), should it get through."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, dims, dtype in {"query_encoder": [("INPUT_IDS", [0, 4], "INT64"), ("ATTENTION_MASK", [0, 4], "INT64")],
                              "keyword_vectors": [("KEYWORD_IDS", [0, 2], "BYTES")],
                              "relevance": [("KEYWORD_IDS", [0, 2], "BYTES"), ("QUERY", [0, 1], "BYTES")]}[model]:
        t = grpcclient.InferInput(name, dims, dtype)
        t.set_data_from_numpy(np.zeros(dims, dtype=object if dtype == "BYTES" else np.int64))
        inputs.append(t)
    with pytest.raises(Exception, match="empty batch|string elements|byte size mismatch"):
        client.infer(model, inputs)
    client.close()
    with TwinBertClient(server.grpc_url) as c:
        assert len(c.relevance("drill", ["d1", "f1"])) == 2


def test_unknown_keyword_id_is_named_and_only_that_request_fails(server):
    with TwinBertClient(server.grpc_url) as c:
        with pytest.raises(InvalidRequest, match="'nope'"):
            c.relevance("drill", ["d1", "nope"])
        assert len(c.relevance("drill", ["d1"])) == 1


@pytest.mark.parametrize("params, message", [
    ({"candidates": 3}, "between TOP_K"), ({"candidates": 5000}, "between TOP_K"), ({"candidates": "x"}, "integer"),
])
def test_bad_candidates_parameter(server, params, message):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q, k = _query_and_top_k(b"drill", 5)
    with pytest.raises(Exception, match=message):
        client.infer("retrieve", [q, k], parameters=params)
    client.close()


def test_invisible_queries_and_all_padding_masks_fail_alone(server):
    """Text the tokenizer drops entirely (NUL, zero-width space, a lone combining accent) is a blank
    query, not an arbitrary one; an all-zero ATTENTION_MASK row has nothing to encode."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for text in ("\x00", "\u200b", "\u0301"):
        for model in ("retrieve", "tokenizer"):
            q = grpcclient.InferInput("QUERY", [1, 1], "BYTES")
            q.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
            inputs = [q, _query_and_top_k(b"x", 3)[1]] if model == "retrieve" else [q]
            with pytest.raises(InferenceServerException, match="empty or blank") as e:
                client.infer(model, inputs)
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    ids, mask = np.array([[101, 7592, 102]], dtype=np.int64), np.zeros((1, 3), dtype=np.int64)
    with pytest.raises(InferenceServerException, match="ATTENTION_MASK row 0 has no real token"):
        _infer_encoder(client, INPUT_IDS=ids, ATTENTION_MASK=mask)
    states, real = _infer_encoder(client, INPUT_IDS=ids, ATTENTION_MASK=np.ones_like(mask))
    with pytest.raises(InferenceServerException, match="ATTENTION_MASK row 0 has no real token"):
        _infer_store(client, TOKEN_STATES=states, ATTENTION_MASK=np.zeros_like(real))
    assert len(_infer_store(client, TOKEN_STATES=states, ATTENTION_MASK=real)[0][0]) == 3
    client.close()


def test_a_parameter_of_another_ensemble_is_refused_not_ignored(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q, k = _query_and_top_k(b"drill", 3)
    ids = grpcclient.InferInput("KEYWORD_IDS", [1, 1], "BYTES")
    ids.set_data_from_numpy(np.array([[b"d1"]], dtype=object))
    depth = grpcclient.InferInput("DEPTH", [1, 1], "INT32")
    depth.set_data_from_numpy(np.array([[5]], dtype=np.int32))
    for model, inputs, params, message in (
            ("retrieve", [q, k], {"crossing": "cos"}, "'crossing' does not apply to retrieve"),
            ("retrieve_rerank", [q, k, depth], {"crossing": "res"}, "'crossing' does not apply to retrieve_rerank"),
            ("relevance", [q, ids], {"candidates": 5}, "'candidates' does not apply to relevance")):
        with pytest.raises(InferenceServerException, match=message) as e:
            client.infer(model, inputs, parameters=params)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert len(client.infer("retrieve", [q, k]).as_numpy("SCORES")[0]) == 3  # the server keeps serving
    client.close()


def test_bad_crossing_and_wrong_dtype_are_rejected(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q = grpcclient.InferInput("QUERY", [1, 1], "BYTES")
    q.set_data_from_numpy(np.array([[b"drill"]], dtype=object))
    ids = grpcclient.InferInput("KEYWORD_IDS", [1, 1], "BYTES")
    ids.set_data_from_numpy(np.array([[b"d1"]], dtype=object))
    with pytest.raises(Exception, match="crossing"):
        client.infer("relevance", [q, ids], parameters={"crossing": "dot"})
    k = grpcclient.InferInput("TOP_K", [1, 1], "FP32")
    k.set_data_from_numpy(np.array([[5.0]], dtype=np.float32))
    with pytest.raises(Exception, match="TYPE_INT32|INT32|data-type"):
        client.infer("retrieve", [q, k])
    assert client.is_server_ready()
    client.close()


def test_a_bad_request_among_concurrent_ones_fails_alone(server):
    async def go():
        async with AsyncTwinBertClient(server.grpc_url) as c:
            good = [c.retrieve(q, 3) for q in ("drill", "fan", "hose", "paint", "toilet seat", "faucet")]
            bad = c.retrieve(" ", 3)
            return await asyncio.gather(*good, bad, return_exceptions=True)
    *good, bad = asyncio.run(go())
    assert all(isinstance(r, list) and len(r) == 3 for r in good)
    assert isinstance(bad, InvalidRequest)


def _store_counts(url, at_least=0, timeout_s=10.0):
    """keyword_store's (inference_count, execution_count) once they settle. Triton records a batch's statistics
    after its responses are released, so a client can hold its last answer before the count includes it: poll
    until the counts reach at_least and stay unchanged for 0.3 s (or the timeout passes, and the caller's
    assertion reports the difference)."""
    client = grpcclient.InferenceServerClient(url)
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while True:
        stats = client.get_inference_statistics("keyword_store", as_json=True)["model_stats"]
        counts = (sum(int(m.get("inference_count", 0)) for m in stats),
                  sum(int(m.get("execution_count", 0)) for m in stats))
        if counts != last:
            last, since = counts, time.monotonic()
        settled = counts[0] >= at_least and time.monotonic() - since >= 0.3
        if settled or time.monotonic() > deadline:
            client.close()
            return counts
        time.sleep(0.05)


def test_queries_batched_by_the_store_answer_as_they_do_alone(server):
    """keyword_store encodes the queries of queued requests in one forward pass (padded to the widest):
    under concurrency each answer equals the same query's answer when it came alone."""
    queries = ["drill", "cordless drill with two batteries", "ceiling fan", "50 ft heavy duty rubber garden hose",
               "paint", "toilet seat elongated", "led bulb", "concrete mix 80 lb"]
    with TwinBertClient(server.grpc_url) as c:
        alone = {q: c.retrieve(q, 5) for q in queries}
        alone_rel = {q: c.relevance(q, ["d1", "h2", "f1"]) for q in queries}

    async def go():
        async with AsyncTwinBertClient(server.grpc_url) as c:
            calls = [c.retrieve(q, 5) for q in queries * 3] + [c.relevance(q, ["d1", "h2", "f1"]) for q in queries * 3]
            return await asyncio.gather(*calls)

    expected, shared = 2 * 3 * len(queries), False
    for _ in range(3):  # requests queue together only while both instances are busy: a stalled client may not
        before = _store_counts(server.grpc_url)
        answers = asyncio.run(go())
        inferences, executions = (a - b for a, b in zip(_store_counts(server.grpc_url, before[0] + expected), before))
        assert inferences == expected
        for q, hits in zip(queries * 3, answers[:3 * len(queries)]):
            assert [h.keyword_id for h in hits] == [h.keyword_id for h in alone[q]]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone[q]], atol=1e-5)
        for q, scores in zip(queries * 3, answers[3 * len(queries):]):
            np.testing.assert_allclose(scores, alone_rel[q], atol=1e-5)
        shared = executions < inferences
        if shared:
            break
    assert shared, "no two requests shared a batch in three bursts of 48"


def test_health_and_custom_metrics(server):
    with TwinBertClient(server.grpc_url) as c:
        h = c.health(f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert h["live"] and h["ready"] and h["keyword_store_size"] == {"1": len(TITLES)}
    assert {"retrieve", "relevance", "retrieve_rerank", "reranker", "keyword_store", "keyword_vectors",
            "pool_cross"} <= set(h["models"])
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert f'twinbert_keyword_store_keywords{{model="keyword_store",version="1"}} {len(TITLES)}' in metrics
    assert "nv_inference_request_success" in metrics


def test_cli_health(server):
    out = subprocess.run([sys.executable, "-m", "client", "health", "--url", server.grpc_url, "--metrics-url",
                          f"http://127.0.0.1:{server.metrics_port}/metrics"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ready=True" in out.stdout and f"keyword store v1: {len(TITLES)} keywords" in out.stdout


def test_cli_query_with_the_reranker(server):
    out = subprocess.run([sys.executable, "-m", "client", "query", "garden hose", "--top-k", "2", "--rerank", "6",
                          "--url", server.grpc_url, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["rank"] for line in out.stdout.splitlines()] == [1, 2]
    both = subprocess.run([sys.executable, "-m", "client", "query", "hose", "--rerank", "6", "--candidates", "10",
                           "--url", server.grpc_url], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_cli_reports_a_server_error(server):
    out = subprocess.run([sys.executable, "-m", "client", "query", " ", "--url", server.grpc_url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "empty or blank" in out.stderr


def _infer_encoder(client, **tensors):
    inputs = []
    for name, value in tensors.items():
        t = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else "INT64")
        t.set_data_from_numpy(value)
        inputs.append(t)
    result = client.infer("query_encoder", inputs)
    return result.as_numpy("TOKEN_STATES"), result.as_numpy("TOKEN_MASK")


def test_query_encoder_takes_text_or_the_tokenizer_ids(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = np.array([[b"cordless drill"], [b"garden hose 50 ft"]], dtype=object)
    q = grpcclient.InferInput("QUERY", [2, 1], "BYTES")
    q.set_data_from_numpy(text)
    tokens = client.infer("tokenizer", [q])
    ids, mask = tokens.as_numpy("INPUT_IDS"), tokens.as_numpy("ATTENTION_MASK")
    states_text, mask_text = _infer_encoder(client, QUERY=text)
    states_ids, mask_ids = _infer_encoder(client, INPUT_IDS=ids, ATTENTION_MASK=mask)
    _, trimmed = trim_padding(ids, mask)
    assert trimmed.shape[1] < mask.shape[1]  # short queries: trailing padding is not encoded
    np.testing.assert_array_equal(mask_text, trimmed)
    np.testing.assert_array_equal(mask_ids, trimmed)
    np.testing.assert_allclose(states_text, states_ids, atol=1e-5)
    assert states_text.shape[:2] == trimmed.shape
    with pytest.raises(Exception, match="not both"):
        _infer_encoder(client, QUERY=text, INPUT_IDS=ids, ATTENTION_MASK=mask)
    with pytest.raises(Exception, match="both INPUT_IDS and ATTENTION_MASK"):
        _infer_encoder(client, INPUT_IDS=ids)
    with pytest.raises(Exception, match="empty or blank"):
        _infer_encoder(client, QUERY=np.array([[b"  "]], dtype=object))
    long_ids = np.full((1, 600), 1000, dtype=np.int64)  # past the position embeddings
    with pytest.raises(Exception, match="at most 512 tokens"):
        _infer_encoder(client, INPUT_IDS=long_ids, ATTENTION_MASK=np.ones_like(long_ids))
    assert client.is_server_ready()
    client.close()


def _infer_store(client, k=3, **tensors):
    """keyword_store called directly: retrieval (TOP_K = k) unless CANDIDATE_IDS is given (k=None: no TOP_K)."""
    rows = len(next(iter(tensors.values())))
    if k is not None:
        tensors["TOP_K"] = np.full((rows, 1), k, np.int32)
    inputs = []
    for name, value in tensors.items():
        dtype = {np.dtype(object): "BYTES", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}.get(value.dtype, "INT64")
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        inputs.append(t)
    result = client.infer("keyword_store", inputs)
    if "CANDIDATE_IDS" in tensors:
        return result.as_numpy("SCORES")
    return result.as_numpy("KEYWORD_IDS"), result.as_numpy("SCORES")


def test_keyword_store_encodes_the_query_itself_or_takes_the_encoders_states(server):
    """retrieve and relevance are one step each (keyword_store encodes QUERY); the composable path,
    query_encoder's states sent to keyword_store, gives the same answers."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = np.array([[b"cordless drill"], [b"garden hose 50 ft"]], dtype=object)
    ids_text, scores_text = _infer_store(client, QUERY=text)
    states, mask = _infer_encoder(client, QUERY=text)
    ids_states, scores_states = _infer_store(client, TOKEN_STATES=states, ATTENTION_MASK=mask)
    np.testing.assert_array_equal(ids_text, ids_states)
    np.testing.assert_allclose(scores_text, scores_states, atol=1e-5)
    assert ids_text[0, 0] in (b"d1", b"d2") and ids_text[1, 0] in (b"h1", b"h2")
    with pytest.raises(Exception, match="not both"):
        _infer_store(client, QUERY=text, TOKEN_STATES=states, ATTENTION_MASK=mask)
    with pytest.raises(Exception, match="both TOKEN_STATES and ATTENTION_MASK"):
        _infer_store(client, TOKEN_STATES=states)
    with pytest.raises(Exception, match="not valid UTF-8"):
        _infer_store(client, QUERY=np.array([[b"\xffdrill"]], dtype=object))
    # relevance: the candidates' cached vectors crossed with the query, on either path
    candidates = np.array([[b"d1", b"h1", b"f1"], [b"h2", b"d2", b"k1"]], dtype=object)
    scores_text = _infer_store(client, None, QUERY=text, CANDIDATE_IDS=candidates)
    scores_states = _infer_store(client, None, TOKEN_STATES=states, ATTENTION_MASK=mask, CANDIDATE_IDS=candidates)
    np.testing.assert_allclose(scores_text, scores_states, atol=1e-5)
    assert scores_text.shape == (2, 3) and scores_text[0].argmax() == 0 and scores_text[1].argmax() == 0
    with pytest.raises(Exception, match="one of TOP_K .retrieval., CANDIDATE_IDS"):
        _infer_store(client, 3, QUERY=text, CANDIDATE_IDS=candidates)
    with pytest.raises(Exception, match="one of TOP_K .retrieval., CANDIDATE_IDS"):
        _infer_store(client, None, QUERY=text)
    bad = states.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(Exception, match="TOKEN_STATES holds NaN, infinite or out-of-range values"):
        _infer_store(client, TOKEN_STATES=bad, ATTENTION_MASK=mask)
    assert client.is_server_ready()
    client.close()


def test_the_composable_parts_chain_into_the_relevance_answer(server):
    """query_encoder -> pool_cross with keyword_vectors' cached vectors gives what relevance gives;
    non-finite client tensors are refused by name."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = np.array([[b"cordless drill"]], dtype=object)
    ids = np.array([[b"d1", b"h1", b"f1"]], dtype=object)
    states, mask = _infer_encoder(client, QUERY=text)
    t = grpcclient.InferInput("KEYWORD_IDS", [1, 3], "BYTES")
    t.set_data_from_numpy(ids)
    vectors = client.infer("keyword_vectors", [t]).as_numpy("KEYWORD_VECTORS")

    def cross(states, vectors, mask=mask):
        inputs = []
        for name, value, dtype in (("TOKEN_STATES", states, "FP32"), ("ATTENTION_MASK", mask, "INT64"),
                                   ("KEYWORD_VECTORS", vectors, "FP32")):
            inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
            inputs[-1].set_data_from_numpy(value)
        return client.infer("pool_cross", inputs).as_numpy("SCORES")  # the default crossing, as relevance's
    np.testing.assert_allclose(cross(states, vectors), _infer_store(client, None, QUERY=text, CANDIDATE_IDS=ids),
                               atol=1e-5)
    bad = vectors.copy()
    bad[0, 1, 2] = np.inf
    with pytest.raises(Exception, match="KEYWORD_VECTORS holds NaN, infinite or out-of-range values"):
        cross(states, bad)
    with pytest.raises(Exception, match="TOKEN_STATES holds NaN, infinite or out-of-range"):  # 1e38 overflowed into NaN
        cross(np.full_like(states, 1e38), vectors)
    with pytest.raises(Exception, match="ATTENTION_MASK row 0 has no real token"):  # as keyword_store refuses it
        cross(states, vectors, np.zeros_like(mask))
    with pytest.raises(Exception, match="TOKEN_STATES holds NaN, infinite or out-of-range"):
        _infer_store(client, TOKEN_STATES=np.full_like(states, 1e38), ATTENTION_MASK=mask)
    assert client.is_server_ready()
    client.close()


@pytest.mark.parametrize("client", ["wire", "library"])
def test_load_generator_closed_and_open_loop(server, client):
    from client.loadtest import run_load
    queries = ["cordless drill", "ceiling fan", "garden hose", "paint"]
    closed = asyncio.run(run_load(server.grpc_url, queries, "retrieve", concurrency=2, requests=40, duration_s=30,
                                  top_k=5, warmup=2, client=client))
    assert (closed.requests, closed.errors, len(closed.latencies_ms)) == (40, 0, 40)
    assert closed.throughput_rps > 0 and 0 < closed.p50_ms <= closed.p99_ms
    opened = asyncio.run(run_load(server.grpc_url, queries, "relevance", rate=50, requests=20, duration_s=30,
                                  keyword_ids=["d1", "h1", "p1"], warmup=2, client=client))
    assert opened.errors == 0 and opened.requests == 20


def test_load_generator_counts_refused_requests_with_the_server_message(server):
    from client.loadtest import run_load
    r = asyncio.run(run_load(server.grpc_url, ["drill", " "], "retrieve", concurrency=1, requests=10,
                             duration_s=30, top_k=5, warmup=0))
    assert r.errors == 5 and len(r.latencies_ms) == 5
    assert "INVALID_ARGUMENT" in r.error_examples[0] and "empty or blank" in r.error_examples[0]
