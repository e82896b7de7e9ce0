"""Serving benchmarks that start the real server themselves, measure, write reports, and stop it.

    python -m client.suite loadtest [--repository DIR] [--out reports/loadtest]   # make loadtest
    python -m client.suite bench    [--repository DIR] [--out reports/bench]      # make bench
    python -m client.suite tune     [--repository DIR] [--out reports/tuning]     # batching/placement variants
    python -m client.suite update   [--export DIR --store DIR] [--out reports/live_update]  # make bench-update

loadtest: perf_analyzer and the project's generator (threads; its open loop on asyncio), same held-out queries, same closed-loop
concurrency levels, side by side (report: table, JSON, CSV, PNG).
bench: in one run on the same queries and candidates: served `relevance` for 100 candidates against
the teacher cross-encoder scoring the same 100 pairs in-process; served `retrieve` top-100 (the
server's default K', and with the top 100 re-scored by res) and, when the repository has the
re-ranker, `retrieve_rerank` (top 10 of the cosine top DEPTH) against the same pipeline in-process
without Triton; then the serving floor: `null_store` (client/floor_repository, served beside the
repository), a model with retrieve's inputs and outputs that does no work, alone and behind a one-step
ensemble, against keyword_store, retrieve and the in-process pipeline in interleaved blocks, which bounds
how low served / in-process can go.
update: keyword-store updates at the served catalogue's size under `retrieve` traffic (a partial update,
then the whole catalogue under new ids): build and swap times, failed requests, latency per phase.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from training.cli import int_list, positive_float, positive_int


def held_out_queries(data=None, n: int = 500) -> list[str]:
    from training.datasets import load_homedepot
    _, rs = load_homedepot(data, "test")
    return list(rs.queries.values())[:n]


def _pct(samples, p):
    return round(float(np.percentile(samples, p)), 3)


def _time_calls(fn, args_list, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        a = args_list[i % len(args_list)]
        t = time.perf_counter()
        fn(*a)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _work() -> Path:
    """Logs and perf_analyzer inputs (held-out queries: data, not reports) stay under artifacts/."""
    path = Path(os.environ.get("TWINBERT_ARTIFACTS", "artifacts")) / "bench_work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _server(repository: Path, log: Path, **options):
    from serving.server import TritonServer, free_server_ports
    return TritonServer(repository, **free_server_ports(),
                        log_file=log, **options)


def loadtest(repository: Path, out: Path, levels: list[int], data=None, requests: int = 2000,
             duration_s: float = 15.0, top_k: int = 100) -> dict:
    from client.loadtest import run_load
    from client.perf import run_perf_analyzer, write_input_data
    from client.report import write_load_report
    queries = held_out_queries(data)[:200]  # the same queries for both tools
    input_data = write_input_data(_work() / "perf_input.json", queries, top_k=top_k)
    own, perf, library = [], [], {}
    with _server(repository, _work() / "loadtest_server.log") as server:
        for c in levels:  # interleave the two tools per level so drift hits both alike
            perf.append(run_perf_analyzer(server.grpc_url, "retrieve", input_data, c, _work() / f"perf_c{c}.csv"))
            r = asyncio.run(run_load(server.grpc_url, queries, "retrieve", concurrency=c, requests=requests,
                                     duration_s=duration_s, top_k=top_k))
            own.append(r)
            p = perf[-1]
            print(f"c={c}: perf_analyzer {p['throughput_rps']:.0f}/s p50 {p['p50_ms']:.2f} ms p99 {p['p99_ms']:.2f} | "
                  f"own {r.throughput_rps:.0f}/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms, errors {r.errors}",
                  flush=True)
        for c in (levels[0], levels[-1]):  # what an application sees through the client library
            library[c] = asyncio.run(run_load(server.grpc_url, queries, "retrieve", concurrency=c, requests=requests,
                                              duration_s=duration_s, top_k=top_k, client="library"))
    agreement = [{"level": p["level"], "p50_perf_analyzer": p["p50_ms"], "p50_own": r.p50_ms,
                  "relative_difference": round(abs(r.p50_ms - p["p50_ms"]) / p["p50_ms"], 3)}
                 for p, r in zip(perf, own)]
    notes = [f"Model `retrieve`, top-{top_k}, the same {len(queries)} held-out test queries for both tools "
             f"(perf_analyzer reads them from its input-data file); closed loop at concurrency {levels}. The "
             "project's generator sends pre-serialised requests and does not decode answers (`--client wire`), "
             "as perf_analyzer does.",
             "", "p50 agreement between the tools (|own - perf_analyzer| / perf_analyzer):", "",
             "| concurrency | perf_analyzer p50 ms | own p50 ms | difference |", "|---|---|---|---|"]
    notes += [f"| {a['level']} | {a['p50_perf_analyzer']} | {a['p50_own']} | {a['relative_difference']:.1%} |"
              for a in agreement]
    notes += ["", "Through the client library (`--client library`: typed results, answers decoded in Python on the "
              "same 2 cores as the server):", "", "| concurrency | req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    notes += [f"| {c} | {r.throughput_rps} | {r.p50_ms} | {r.p99_ms} |" for c, r in library.items()]
    write_load_report(own, out, f"retrieve top-{top_k}: project load generator vs perf_analyzer",
                      extra_series={"perf_analyzer": perf}, notes=notes)
    result = json.loads(out.with_name(out.name + ".json").read_text())
    result["agreement"] = agreement
    result["library_client"] = [r.summary() for r in library.values()]
    out.with_name(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _model_stats(url: str) -> dict:
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        client.close()
    return {(m["name"], m["version"]): m["inference_stats"] for m in stats}


def _stage_breakdown(before: dict, after: dict) -> list[dict]:
    """Per-model mean microseconds per request between two statistics snapshots (Triton's own
    accounting: queue wait, then compute split into input, infer and output)."""
    rows = []
    for key, st in after.items():
        n = int(st["success"].get("count", 0)) - int(before.get(key, {}).get("success", {}).get("count", 0))
        if n <= 0:
            continue
        prev = before.get(key, {})
        mean = lambda k: round((int(st[k].get("ns", 0)) - int(prev.get(k, {}).get("ns", 0))) / n / 1e3)  # noqa: E731
        rows.append({"model": key[0], "requests": n, "total_us": mean("success"), "queue_us": mean("queue"),
                     "input_us": mean("compute_input"), "infer_us": mean("compute_infer"),
                     "output_us": mean("compute_output")})
    return sorted(rows, key=lambda r: -r["total_us"])


def _flushed_stage_sums(call, metrics_url: str) -> dict[str, float]:
    """keyword_store's stage counters (serving.stage_metrics) after one more request, sent once every
    instance may flush again (at most once a second): it adds what earlier calls left pending."""
    from serving.stage_metrics import scrape_stage_sums
    time.sleep(1.05)
    call()
    return scrape_stage_sums(metrics_url)


def _in_process_stages(pipe, queries: list[str], calls: int) -> dict:
    """Mean microseconds per `retrieve` top-100 in-process, split as keyword_store's stage counters
    split a served request (no respond stage: nothing is serialised)."""
    from serving.stage_metrics import STAGES
    sums = {st: 0.0 for st in STAGES}
    for i in range(calls):
        t0 = time.perf_counter()
        ids, mask = pipe.encoder.tokenize([queries[i % len(queries)]])
        t1 = time.perf_counter()
        states = pipe.encoder(ids, mask)
        t2 = time.perf_counter()
        pipe.retriever.retrieve(states, mask, 100, 0)
        t3 = time.perf_counter()
        for st, dt in (("parse", t1 - t0), ("encode", t2 - t1), ("compute", t3 - t2), ("execute", t3 - t0)):
            sums[st] += dt
    return {"requests": calls, **{f"{st}_us": round(sums[st] / calls * 1e6) for st in STAGES}}


# A null model with retrieve's inputs and outputs (client/floor_repository): bench serves it beside the
# repository to measure what serving costs before any model works.
FLOOR_REPOSITORY = Path(__file__).resolve().parent / "floor_repository"


FLOOR_NULL, FLOOR_SERVED, FLOOR_LOCAL = ("null_retrieve (its one-step ensemble)", "retrieve (the served ensemble)",
                                         "in-process (same code, no Triton)")


def library_retrieve(c, model: str, k: int):
    """call(query) -> hits: TwinBertClient.retrieve (server default K') sent to `model`, any model with
    retrieve's inputs and outputs."""
    return lambda q: c._retrieve_from(model, [q], k)[0]


def _floor_paths(c, pipe, k: int) -> dict[str, object]:
    """{name: call(query)} of the serving-floor comparison: the null model alone and behind retrieve's
    one-step ensemble, keyword_store alone and behind it, and the same work in-process."""
    return {"null_store (no model work)": library_retrieve(c, "null_store", k),
            FLOOR_NULL: library_retrieve(c, "null_retrieve", k),
            "keyword_store (the model, no ensemble)": library_retrieve(c, "keyword_store", k),
            FLOOR_SERVED: library_retrieve(c, "retrieve", k),
            FLOOR_LOCAL: lambda q: pipe.retrieve(q, k)}


# The same `retrieve` requests through leaner clients than the library (which decodes 100 ids and texts
# into typed hits in Python, work the in-process baseline does not do): what the serving path itself costs.
FLOOR_WIRE = "retrieve, wire client (request built once, answer not decoded)"
FLOOR_PA_NULL, FLOOR_PA = "null_retrieve, perf_analyzer (C++ client)", "retrieve, perf_analyzer (C++ client)"
PERF_FLOOR_EXPORT = "perf_floor_export.json"  # perf_analyzer's profile export, beside its input-data file


def _floor_blocks(url: str, queries: list[str], k: int, perf_input: Path | None) -> dict[str, object]:
    """{name: block(n) -> n latencies in ms} of the lean-client paths: the project's wire client (one
    blocking gRPC call at a time, requests serialised once, as `loadtest --client wire`), and, given
    perf_analyzer's input-data file, perf_analyzer at concurrency 1 against null_retrieve and retrieve."""
    from client.loadtest import closed_loop_threads, serialized_requests
    from client.perf import perf_analyzer_latencies
    payloads = serialized_requests("retrieve", queries, k, None)

    # Each block opens its own connection (perf_analyzer is a process per block): one untimed request
    # first, so that connecting is not counted as a request's latency.
    def wire(n: int) -> list[float]:
        latencies, errors, examples, _ = closed_loop_threads(url, "retrieve", payloads, 1, n, 3600.0, 1, 30.0)
        if errors or len(latencies) != n:
            raise RuntimeError(f"wire client: {errors} of {n} requests failed ({examples[:1]})")
        return latencies

    blocks = {FLOOR_WIRE: wire}
    if perf_input is not None:
        export = perf_input.with_name(PERF_FLOOR_EXPORT)
        blocks[FLOOR_PA_NULL] = lambda n: perf_analyzer_latencies(url, "null_retrieve", perf_input, n + 1, export)[1:]
        blocks[FLOOR_PA] = lambda n: perf_analyzer_latencies(url, "retrieve", perf_input, n + 1, export)[1:]
    return blocks


def serving_floor(c, pipe, args, repeats: int, threads: int, k: int = 100, url: str | None = None,
                  perf_input: Path | None = None) -> dict:
    """p50 / p99 of each floor path (top-`k`) over interleaved blocks, and what they imply for the ratio
    served / in-process, measured again here in the same blocks (`ratio_served`): with a served model
    doing the in-process work and nothing more, it would be about (in-process + null_retrieve) /
    in-process (`ratio_floor`, from medians). The server must serve FLOOR_REPOSITORY beside the
    repository. Given the server's `url`, the same requests also go through the wire client
    (`ratio_served_wire`), and given `perf_input` (perf_analyzer's input-data file for the queries of
    `args`), through perf_analyzer to null_retrieve and retrieve (`ratio_served_perf_analyzer`,
    `ratio_floor_perf_analyzer`)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    paths = _floor_paths(c, pipe, k)
    blocks = _floor_blocks(url, [a[0] for a in args], k, perf_input) if url else {}
    samples = {name: [] for name in [*paths, *blocks]}
    per_block = max(repeats // 5, 1)
    try:
        for _ in range(5):  # interleave: drift on a shared machine hits every path alike
            for name, call in paths.items():
                samples[name] += _time_calls(call, args, per_block)
            for name, block in blocks.items():
                samples[name] += block(per_block)
    finally:
        torch.set_num_threads(before)
    median = {name: statistics.median(v) for name, v in samples.items()}
    local, null, served = median[FLOOR_LOCAL], median[FLOOR_NULL], median[FLOOR_SERVED]
    out = {"paths": {name: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "calls": len(v)}
                     for name, v in samples.items()},
           "served_minus_in_process_ms": round(served - local, 3),
           "null_retrieve_ms": round(null, 3),
           "ratio_served": round(served / local, 3),
           "ratio_floor": round((local + null) / local, 3)}
    if FLOOR_WIRE in median:
        out["ratio_served_wire"] = round(median[FLOOR_WIRE] / local, 3)
    if FLOOR_PA in median:
        out["ratio_served_perf_analyzer"] = round(median[FLOOR_PA] / local, 3)
        out["ratio_floor_perf_analyzer"] = round((local + median[FLOOR_PA_NULL]) / local, 3)
    return out


def _perf_floor_input(url: str, queries: list[str], k: int = 100) -> Path | None:
    """perf_analyzer's input-data file for the floor's queries, once a short run shows perf_analyzer
    works here; None (its rows left out, and said so) where it cannot run."""
    import subprocess

    from client.perf import perf_analyzer_latencies, write_input_data
    path = write_input_data(_work() / "perf_floor_input.json", queries, top_k=k)
    try:
        perf_analyzer_latencies(url, "retrieve", path, 5, path.with_name(PERF_FLOOR_EXPORT))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"bench: perf_analyzer cannot run here ({str(e)[:300]}); the floor's perf_analyzer rows are left "
              "out (`make setup` installs it and the libraries it needs)", flush=True)
        return None
    return path


def served_encoder_threads(repository: Path) -> int:
    """The intra-op threads the served query encoder runs with: keyword_store's "threads" parameter
    (retrieve and relevance encode the query in keyword_store)."""
    from serving.repository import model_parameter
    return int(model_parameter(repository, "keyword_store", "threads", "1"))


def bench(repository: Path, out: Path, teacher_dir: Path, data=None, n_queries: int = 50, repeats: int = 300,
          rerank_depth: int = 30) -> dict:
    import torch

    from client.core import TwinBertClient
    from serving.pipeline import InProcessPipeline
    from serving.stage_metrics import per_request
    from training.teacher import CrossEncoder
    # The in-process baseline runs as the server is configured: `served_threads` intra-op threads
    # (keyword_store's "threads" parameter; it encodes, searches and crosses). It is also timed with
    # both cores, what one process alone would use.
    served_threads = served_encoder_threads(repository)
    queries = held_out_queries(data, n_queries)
    pipe = InProcessPipeline(repository, threads=served_threads)
    # The same 100 candidates for every path: the cosine top-100 of each query.
    candidates = {q: [i.decode() for i in pipe.retrieve(q, 100, 0)[0][0]] for q in queries}
    rows, stages, stub = {}, {}, {}
    with _server(repository, _work() / "bench_server.log", extra_args=[f"--model-repository={FLOOR_REPOSITORY}"]
                 ) as server, TwinBertClient(server.grpc_url) as c:
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        for q in queries[:5]:  # warm both paths
            c.retrieve(q, 100), c.retrieve(q, 100, 100), c.relevance(q, candidates[q])
            pipe.retrieve(q, 100), pipe.retrieve(q, 100, 100), pipe.relevance(q, candidates[q])
            if pipe.reranker is not None:
                c.retrieve(q, 10, rerank_depth=rerank_depth), pipe.retrieve_rerank(q, 10, rerank_depth)
        args = [(q,) for q in queries]
        paths = [("retrieve top-100", lambda q: c.retrieve(q, 100), lambda q: pipe.retrieve(q, 100)),
                 ("retrieve top-100, 100 re-scored with res", lambda q: c.retrieve(q, 100, 100),
                  lambda q: pipe.retrieve(q, 100, 100)),
                 ("relevance 100 candidates", lambda q: c.relevance(q, candidates[q]),
                  lambda q: pipe.relevance(q, candidates[q]))]
        if pipe.reranker is not None:
            paths.append((f"retrieve_rerank top-10 of the cosine top-{rerank_depth}",
                          lambda q: c.retrieve(q, 10, rerank_depth=rerank_depth),
                          lambda q: pipe.retrieve_rerank(q, 10, rerank_depth)))
        for name, served, local in paths:
            s_served, s_local, s_local2 = [], [], []
            stub_before = _flushed_stage_sums(lambda: served(args[0][0]), metrics_url)
            before = _model_stats(server.grpc_url)
            for _ in range(3):  # interleave served and in-process blocks
                s_served += _time_calls(served, args, repeats // 3)
                torch.set_num_threads(served_threads)
                s_local += _time_calls(local, args, repeats // 3)
                torch.set_num_threads(2)
                s_local2 += _time_calls(local, args, repeats // 3)
            stages[name] = _stage_breakdown(before, _model_stats(server.grpc_url))
            # the block's last counts, and one request more in the window
            stub[name] = per_request(stub_before, _flushed_stage_sums(lambda: served(args[0][0]), metrics_url))
            served_p50 = statistics.median(s_served)
            rows[name] = {"served_p50_ms": _pct(s_served, 50), "served_p99_ms": _pct(s_served, 99),
                          "in_process_p50_ms": _pct(s_local, 50), "in_process_p99_ms": _pct(s_local, 99),
                          "served_over_in_process": round(served_p50 / statistics.median(s_local), 3),
                          "in_process_2_threads_p50_ms": _pct(s_local2, 50),
                          "served_over_in_process_2_threads": round(served_p50 / statistics.median(s_local2), 3),
                          "calls": len(s_served)}
            print(f"{name}: served p50 {rows[name]['served_p50_ms']} ms p99 {rows[name]['served_p99_ms']} ms; "
                  f"in-process p50 {rows[name]['in_process_p50_ms']} ms (x{rows[name]['served_over_in_process']}), "
                  f"with 2 threads {rows[name]['in_process_2_threads_p50_ms']} ms "
                  f"(x{rows[name]['served_over_in_process_2_threads']})", flush=True)
        floor = serving_floor(c, pipe, args, repeats, served_threads, url=server.grpc_url,
                              perf_input=_perf_floor_input(server.grpc_url, queries))
        print(f"serving floor: null_retrieve p50 {floor['null_retrieve_ms']} ms; served retrieve costs "
              f"{floor['served_minus_in_process_ms']} ms over in-process (x{floor['ratio_served']}); a model "
              f"doing only the in-process work would be served at about x{floor['ratio_floor']}; wire client "
              f"x{floor['ratio_served_wire']}, perf_analyzer x{floor.get('ratio_served_perf_analyzer', '-')} "
              f"(floor x{floor.get('ratio_floor_perf_analyzer', '-')})", flush=True)
        # the first path's stages in-process, as keyword_store's counters split them (means, like theirs)
        torch.set_num_threads(served_threads)
        stub["retrieve top-100, in-process"] = _in_process_stages(pipe, queries, repeats)
        torch.set_num_threads(2)
        teacher = CrossEncoder.load(teacher_dir)
        texts = {q: [pipe.store.texts[p] for p in pipe.store.positions(candidates[q])] for q in queries}
        t_teacher, served_rel = [], []
        for _ in range(4):  # interleaved blocks: drift on a shared machine hits both sides alike
            t_teacher += _time_calls(lambda q: teacher.score([q] * 100, texts[q], batch_size=100), args[:10], 5)
            served_rel += _time_calls(lambda q: c.relevance(q, candidates[q]), args, 25)
    rows["teacher vs twin, 100 pairs"] = {
        "teacher_in_process_p50_ms": _pct(t_teacher, 50), "twin_served_relevance_p50_ms": _pct(served_rel, 50),
        "twin_speedup": round(statistics.median(t_teacher) / statistics.median(served_rel), 1)}
    print(f"teacher 100 pairs p50 {_pct(t_teacher, 50)} ms vs served twin relevance {_pct(served_rel, 50)} ms "
          f"(x{rows['teacher vs twin, 100 pairs']['twin_speedup']})", flush=True)
    result = {"queries": len(queries), "served_threads_per_model": served_threads, "rows": rows,
              "reranker_precision": pipe.reranker.precision if pipe.reranker is not None else None,
              "server_stages": stages, "keyword_store_stages": stub, "serving_floor": floor}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# End-to-end benchmark (one run, same queries and candidates)", "",
             f"{len(queries)} held-out test queries. `retrieve top-100` runs the served default K' "
             f"({pipe.default_candidates}: " + ("the cosine order, no re-scoring" if not pipe.default_candidates
                                               else "re-scored with res") + "); the next row asks for the top 100 "
             "re-scored with res (`candidates` = 100); relevance candidates are each query's cosine top-100. "
             + (f"`retrieve_rerank` asks for the top 10 of the cosine top {rerank_depth} re-ordered by the BiLSTM "
                f"re-ranker ({pipe.reranker.precision}, {pipe.reranker_threads} threads served, and in-process in the "
                "`in_process_*` baseline). " if pipe.reranker is not None else "")
             + "Served = over gRPC "
             "through the real tritonserver (one client); in-process = the same artifacts and code without Triton, "
             f"with {served_threads} intra-op thread(s) as each served model is configured (`in_process_*`, the "
             "baseline of `served_over_in_process`) and with both cores (`*_2_threads`). Medians and p99 in ms "
             "over interleaved blocks.", "",
             "| comparison | metric | value |", "|---|---|---|"]
    for name, r in rows.items():
        lines += [f"| {name} | {k} | {v} |" for k, v in r.items()]
    lines += ["", "## Where the served time goes", "",
              "Triton's own statistics over the served calls above: mean microseconds per request in each model "
              "(queue wait; compute split into reading inputs, the model's execute, writing outputs). The "
              "ensemble's total covers its steps plus the hand-offs between them; the client's latency adds gRPC "
              "and the client library. A Python-backend model's infer time includes the round trip to its stub "
              "process, so compare it with the same work in-process.", ""]
    for name, st in stages.items():
        lines += [f"### {name}", "", "| model | requests | total µs | queue | input | infer | output |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['requests']} | {r['total_us']} | {r['queue_us']} | {r['input_us']} | "
                  f"{r['infer_us']} | {r['output_us']} |" for r in st]
        lines.append("")
    lines += ["### Inside keyword_store's execute", "",
              "Its own counters (`twinbert_keyword_store_stage_us_total`, README's Metrics), mean µs per request: "
              "the whole execute, then reading inputs and tokenising (parse), the query encoder, search and "
              "crossing (compute), building the output tensors (respond). Triton's infer time for keyword_store "
              "less this execute is the round trip to the stub process. The last row is the same code in-process "
              "(the served thread setting), split the same way.", "",
              "| path | requests | execute | parse | encode | compute | respond |", "|---|---|---|---|---|---|---|"]
    for name, st in stub.items():
        if st:
            lines.append(f"| {name} | {st['requests']} | {st['execute_us']} | {st['parse_us']} | {st['encode_us']} | "
                         f"{st['compute_us']} | {st['respond_us']} |")
    lines.append("")
    lines += ["## The serving floor", "",
              "`retrieve` top-100 with the served default K' through the client library, beside the same calls to "
              "`null_store` (client/floor_repository: retrieve's inputs and outputs, a fixed answer of 100 hits, no "
              "model work) alone and behind `null_retrieve`, retrieve's one-step ensemble over it, and to "
              "keyword_store without the ensemble; interleaved blocks, one client, p50 / p99 in ms. "
              "null_retrieve is what a served request costs before any model works (gRPC both ways, Triton's core, "
              "the ensemble hop, the round trip to a Python-backend stub, the library's encoding and checks), so "
              "a served model that did only the in-process work would still be served at about (in-process + "
              "null_retrieve) / in-process. The ratios below come from these blocks, those of the first table "
              "from its own.", "",
              "| path | p50 | p99 | calls |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r['calls']} |" for name, r in floor["paths"].items()]
    lines += ["", f"Served minus in-process: {floor['served_minus_in_process_ms']} ms (ratio "
              f"{floor['ratio_served']}); the floor alone: {floor['null_retrieve_ms']} ms, a ratio of about "
              f"{floor['ratio_floor']} at this in-process time with no serving cost but the floor.", ""]
    if "ratio_served_wire" in floor:
        lines += ["The client library decodes each answer's 100 ids and texts into typed hits in Python, work the "
                  "in-process baseline (which returns the encoded arrays) does not do. The `wire client` rows send "
                  "the same `retrieve` requests built once and leave the answers undecoded (`loadtest --client "
                  "wire`), and the `perf_analyzer` rows send them with Triton's C++ client at concurrency 1: what "
                  "the serving path costs with the least client work. Served over in-process: wire client "
                  f"{floor['ratio_served_wire']}"
                  + (f", perf_analyzer {floor['ratio_served_perf_analyzer']}; perf_analyzer's floor "
                     f"(null_retrieve) alone: {floor['ratio_floor_perf_analyzer']}."
                     if "ratio_served_perf_analyzer" in floor else "; perf_analyzer could not run here."), ""]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    return result


# Repository variants compared by `tune`: (name, {model: [(config text, replacement)]}); the SERVER
# key holds TritonServer options instead (e.g. the rate limiter off).
SERVER = "(server)"
TWO_STEP = ("two steps as shipped before: query_encoder (2 instances, dynamic batching) -> keyword_store "
            "(3 instances, no batching)")
VARIANTS = [
    ("as shipped", {}),
    # the design before keyword_store encoded queries itself, as it shipped: two Python-backend processes
    # per request
    (TWO_STEP, {
        "retrieve": [("step [\n", 'step [\n    {\n      model_name: "query_encoder"\n      model_version: -1\n'
                      '      input_map { key: "QUERY" value: "QUERY" }\n'
                      '      output_map { key: "TOKEN_STATES" value: "token_states" }\n'
                      '      output_map { key: "TOKEN_MASK" value: "attention_mask" }\n    },\n'),
                     ('input_map { key: "QUERY" value: "QUERY" }\n      input_map { key: "TOP_K"',
                      'input_map { key: "TOKEN_STATES" value: "token_states" }\n'
                      '      input_map { key: "ATTENTION_MASK" value: "attention_mask" }\n      input_map { key: "TOP_K"')],
        "query_encoder": [("instance_group [ { count: 1 kind: KIND_CPU } ]",
                           "instance_group [\n  { count: 1 kind: KIND_CPU rate_limiter { priority: 1 } },\n"
                           "  { count: 1 kind: KIND_CPU rate_limiter { priority: 1000 } }\n]")],
        "keyword_store": [("dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 0 }\n", ""),
                          ("{ count: 1 kind: KIND_CPU rate_limiter { priority: 1000 } }",
                           "{ count: 2 kind: KIND_CPU rate_limiter { priority: 1000 } }")]}),
    ("rate limiter off (Triton's default: free instances take requests in turn)", {SERVER: {"rate_limit": False}}),
    ("equal priorities (fewest executions first)", {
        "keyword_store": [("rate_limiter { priority: 1000 }", "rate_limiter { priority: 1 }")]}),
    ("store without dynamic batching (each request encoded alone)",
     {"keyword_store": [("dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 0 }\n", "")]}),
    ("store batches all that is queued (no preferred size)",
     {"keyword_store": [("preferred_batch_size: [ 4 ] ", "")]}),
    ("store preferred batch size 2", {"keyword_store": [("preferred_batch_size: [ 4 ]", "preferred_batch_size: [ 2 ]")]}),
    ("store preferred batch size 8", {"keyword_store": [("preferred_batch_size: [ 4 ]", "preferred_batch_size: [ 8 ]")]}),
    ("3 store instances", {"keyword_store": [("{ count: 1 kind: KIND_CPU rate_limiter { priority: 1000 } }",
                                              "{ count: 2 kind: KIND_CPU rate_limiter { priority: 1000 } }")]}),
    ("1 store instance", {"keyword_store": [("},\n  { count: 1 kind: KIND_CPU rate_limiter { priority: 1000 } }", "}")]}),
]


def variant_configs(repository: Path, edits: dict) -> dict[str, str]:
    """The config.pbtxt text of each model a variant edits; every edited text must occur exactly once."""
    out = {}
    for model, subs in edits.items():
        if model == SERVER:
            continue
        text = (repository / model / "config.pbtxt").read_text()
        for old, new in subs:
            if text.count(old) != 1:
                raise ValueError(f"{model}: {old!r} must occur exactly once in config.pbtxt")
            text = text.replace(old, new)
        out[model] = text
    return out


def tune(repository: Path, out: Path, data=None, duration_s: float = 10.0) -> dict:
    """Same load on each repository variant: one client (latency) and 16 clients (throughput)."""
    import shutil

    from client.loadtest import run_load
    queries = held_out_queries(data)
    def link_or_copy(src, dst):  # hard links need one filesystem; copy across two
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    rows = []
    variant = _work() / "tune_repo"
    try:
        for name, edits in VARIANTS:
            shutil.rmtree(variant, ignore_errors=True)
            shutil.copytree(repository, variant, copy_function=link_or_copy)
            for model, text in variant_configs(repository, edits).items():
                cfg = variant / model / "config.pbtxt"
                cfg.unlink()  # maybe hard-linked: write a new file, leave the original alone
                cfg.write_text(text)
            with _server(variant, _work() / "tune_server.log", **edits.get(SERVER, {})) as server:
                one = asyncio.run(run_load(server.grpc_url, queries, "retrieve", concurrency=1, requests=400,
                                           duration_s=duration_s, top_k=100))
                many = asyncio.run(run_load(server.grpc_url, queries, "retrieve", concurrency=16, requests=4000,
                                            duration_s=duration_s, top_k=100))
            rows.append({"variant": name, "c1_p50_ms": one.p50_ms, "c1_p99_ms": one.p99_ms,
                         "c16_rps": many.throughput_rps, "c16_p50_ms": many.p50_ms, "c16_p99_ms": many.p99_ms,
                         "errors": one.errors + many.errors})
            print(f"tune: {rows[-1]}", flush=True)
    finally:  # a variant that fails to load must not leave its copy behind
        shutil.rmtree(variant, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    cols = list(rows[0])
    lines = ["# Batching and placement on 2 CPU cores (retrieve top-100, held-out queries)", "",
             "Each variant changes the shipped repository as named; one client for latency, 16 for throughput.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    return {"rows": rows}


class _RetrieveTraffic:
    """One client in a closed loop of `retrieve` top-10 on held-out queries, in a thread: for each
    request its start (monotonic s), latency (ms), and the ids answered or the error."""

    def __init__(self, url: str, queries: list[str]):
        import threading
        self.url, self.queries, self.log = url, queries, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from client import TwinBertClient
        with TwinBertClient(self.url) as c:
            i = 0
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    ids = [h.keyword_id for h in c.retrieve(self.queries[i % len(self.queries)], 10)]
                    self.log.append((t, (time.monotonic() - t) * 1000, ids, None))
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    self.log.append((t, (time.monotonic() - t) * 1000, None, repr(e)[:200]))
                i += 1

    def window(self, t0: float, t1: float) -> dict:
        rows = [r for r in self.log if t0 <= r[0] < t1]
        lat = [r[1] for r in rows if r[3] is None]
        errors = [r[3] for r in rows if r[3] is not None]
        return {"seconds": round(t1 - t0, 2), "requests": len(rows), "failed": len(errors),
                "errors": errors[:3], "p50_ms": _pct(lat, 50) if lat else None,
                "p99_ms": _pct(lat, 99) if lat else None, "max_ms": round(max(lat), 3) if lat else None}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def live_update(export_dir: Path, store: Path, out: Path, data=None, idle_s: float = 10.0,
                replaced: int = 1000, deleted: int = 500, queries: list[str] | None = None) -> dict:
    """Keyword-store updates on the running server under `retrieve` traffic, at the served catalogue's
    size: a partial update (`replaced` titles re-embedded, `deleted` ids dropped), then the whole
    catalogue replaced by new ids. Per phase: wall time, requests, failures, latency; and whether each
    answer of the catalogue swap came wholly from one catalogue, the old one never after the new."""
    import shutil

    from serving.keyword_store import KeywordStore, latest_version
    from serving.repository import assemble
    from serving.update_store import build_updated_version, publish
    work = _work() / "live_update"
    shutil.rmtree(work, ignore_errors=True)
    base = latest_version(store)
    # a private copy of the store and a fresh repository on it: the updates add versions to both (a copy,
    # not links: a link changes the files' ctime, which a server running on them takes for a change)
    shutil.copytree(base, work / "store" / base.name)
    repo = assemble(export_dir, work / "store", work / "repo")
    served = KeywordStore(base, load_index=False)
    old_ids, titles = list(served.ids), dict(zip(served.ids, served.texts))
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(old_ids))
    replace = {old_ids[i]: titles[old_ids[i]] + " (2-pack)" for i in pick[:replaced]}
    delete = {old_ids[i] for i in pick[replaced:replaced + deleted]}
    new_catalogue = {f"v2-{i}": titles[i] for i in old_ids}
    queries = queries or held_out_queries(data, 200)
    phases, marks = {}, {}
    with _server(repo, _work() / "live_update_server.log") as server, \
            _RetrieveTraffic(server.grpc_url, queries) as traffic:
        def phase(name, fn):
            t0 = time.monotonic()
            result = fn()
            marks[name] = (t0, time.monotonic())
            print(f"{name}: {marks[name][1] - t0:.1f} s", flush=True)
            return result

        phase("idle before", lambda: time.sleep(idle_s))
        v = phase("partial: build", lambda: build_updated_version(export_dir, work / "store", replace, delete,
                                                                   progress=True))
        phase("partial: publish", lambda: publish(repo, v, server.grpc_url))
        phase("idle between", lambda: time.sleep(idle_s))
        served_now = set(KeywordStore(latest_version(work / "store"), load_index=False, load_texts=False).ids)
        v = phase("catalogue: build", lambda: build_updated_version(export_dir, work / "store", new_catalogue,
                                                                     served_now, progress=True))
        phase("catalogue: publish", lambda: publish(repo, v, server.grpc_url))
        phase("idle after", lambda: time.sleep(idle_s))
    for name, (t0, t1) in marks.items():
        phases[name] = traffic.window(t0, t1)
    old_set, new_set = set(old_ids), set(new_catalogue)
    t_swap = marks["catalogue: publish"][0]
    kinds = ["old" if set(ids) <= old_set else "new" if set(ids) <= new_set else "mixed"
             for t, _, ids, err in traffic.log if err is None and t >= t_swap]
    swap = {"answers_from_swap_start": len(kinds), "old": kinds.count("old"), "new": kinds.count("new"),
            "mixed": kinds.count("mixed"), "old_after_new": kinds != sorted(kinds, key=lambda k: k == "new")}
    result = {"keywords": len(old_ids), "replaced": replaced, "deleted": deleted, "index_type":
              served.manifest["index_type"], "traffic": f"one client, closed loop, retrieve top-10, {len(queries)} "
              "held-out test queries", "phases": phases, "catalogue_swap_answers": swap,
              "failed_total": sum(p["failed"] for p in phases.values())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Live keyword-store updates under load", "",
             f"The served catalogue ({len(old_ids):,} keywords, `{result['index_type']}`) on the real server, with "
             f"{result['traffic']} running throughout. Builds run on the serving host (embedding the changed "
             "titles and rebuilding the ANN index share the 2 cores with the server); publish = the new version "
             "loaded beside the old one, the ensembles switched, the old one unloaded (`serving.update_store`). "
             f"Partial: {replaced:,} titles replaced and {deleted:,} ids deleted. Catalogue: every id deleted and "
             f"the {len(old_ids):,} titles added under new ids. `python -m client.suite update`.", "",
             "| phase | seconds | requests | failed | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p['seconds']} | {p['requests']} | {p['failed']} | {p['p50_ms']} | {p['p99_ms']} | "
              f"{p['max_ms']} |" for n, p in phases.items()]
    lines += ["", f"Answers from the start of the catalogue swap: {swap['old']} from the old catalogue, then "
              f"{swap['new']} from the new one; {swap['mixed']} mixed; an old answer after a new one: "
              f"{'yes' if swap['old_after_new'] else 'no'}. Failed requests in all: {result['failed_total']}."]
    out.with_name(out.name + ".md").write_text("\n".join(lines) + "\n")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("loadtest", "bench", "tune", "update"))
    ap.add_argument("--repository", default="artifacts/model_repository")
    ap.add_argument("--teacher", default="artifacts/teacher")
    ap.add_argument("--export", default="artifacts/export", help="update: the served encoder's export")
    ap.add_argument("--store", default="artifacts/keyword_store", help="update: the served keyword store (copied)")
    ap.add_argument("--data")
    ap.add_argument("--out", default=None)
    ap.add_argument("--levels", type=int_list, default=[1, 2, 4, 8, 16],
                    help="loadtest: concurrency levels (tune always runs 1 and 16)")
    ap.add_argument("--duration", type=positive_float, default=None,
                    help="seconds per load level at most (own generator): loadtest 15, tune 10 by default")
    ap.add_argument("--rerank-depth", type=positive_int, default=30,
                    help="bench: cosine candidates retrieve_rerank re-orders")
    args = ap.parse_args(argv)
    if args.command == "update":  # assembles its own repository on a copy of the store
        live_update(Path(args.export), Path(args.store), Path(args.out or "reports/live_update"), args.data)
        return
    repo = Path(args.repository)
    if not (repo / "retrieve").is_dir():
        raise SystemExit(f"{repo} is not a built model repository: run `make build` (after `make train` for the "
                         "distilled model)")
    if args.command == "loadtest":
        loadtest(repo, Path(args.out or "reports/loadtest"), args.levels, args.data,
                 duration_s=15.0 if args.duration is None else args.duration)
    elif args.command == "tune":
        tune(repo, Path(args.out or "reports/tuning"), args.data, 10.0 if args.duration is None else args.duration)
    else:
        bench(repo, Path(args.out or "reports/bench"), Path(args.teacher), args.data, rerank_depth=args.rerank_depth)


if __name__ == "__main__":
    main()
