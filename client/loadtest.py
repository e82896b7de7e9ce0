"""asyncio load generator for the retrieve / relevance ensembles.

Closed loop (`--concurrency N`): N workers, each sends its next request when the last one answered.
Open loop (`--rate R`): requests start on a Poisson schedule at R per second, whatever the latency
(queueing shows up in latency instead of being hidden by back-pressure). Both stop at whichever
comes first of `--requests` and `--duration`; queries cycle through the given list.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from client.core import AsyncTwinBertClient, ClientError


@dataclass
class LoadResult:
    mode: str
    target: str
    level: float                 # concurrency or request rate
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    error_examples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


def summarize(mode, target, level, latencies, errors, seconds, examples) -> LoadResult:
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    pct = lambda p: round(float(np.percentile(lat, p)), 3)  # noqa: E731
    return LoadResult(mode, target, level, len(latencies) + errors, errors, round(seconds, 3),
                      round(len(latencies) / seconds, 2) if seconds else 0.0, pct(50), pct(90), pct(99), pct(99.9),
                      round(float(lat.mean()), 3), examples[:5], [round(x, 3) for x in latencies])


def make_call(client: AsyncTwinBertClient, target: str, top_k: int, keyword_ids: list[str] | None):
    if target == "retrieve":
        return lambda q: client.retrieve(q, top_k)
    if target == "relevance":
        if not keyword_ids:
            raise ValueError("relevance load needs keyword ids")
        return lambda q: client.relevance(q, keyword_ids)
    raise ValueError(f"target must be retrieve or relevance, got {target!r}")


async def run_load(url: str, queries: list[str], target: str = "retrieve", concurrency: int = 0, rate: float = 0.0,
                   requests: int = 1000, duration_s: float = 30.0, top_k: int = 100,
                   keyword_ids: list[str] | None = None, warmup: int = 20, seed: int = 0) -> LoadResult:
    if bool(concurrency) == bool(rate):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if not queries:
        raise ValueError("no queries to send")
    latencies: list[float] = []
    errors, examples = 0, []
    async with AsyncTwinBertClient(url, timeout_s=30.0) as client:
        call = make_call(client, target, top_k, keyword_ids)
        for q in queries[:warmup]:
            await call(q)
        counter = iter(range(requests))
        deadline = time.perf_counter() + duration_s

        async def one(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                await call(queries[i % len(queries)])
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
                tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
    return summarize("closed" if concurrency else "open", target, concurrency or rate, latencies, errors,
                     seconds, examples)


def sweep(url: str, queries: list[str], target: str, levels: list[float], mode: str = "closed",
          requests: int = 1000, duration_s: float = 20.0, top_k: int = 100, keyword_ids=None) -> list[LoadResult]:
    out = []
    for level in levels:
        kwargs = {"concurrency": int(level)} if mode == "closed" else {"rate": float(level)}
        r = asyncio.run(run_load(url, queries, target, requests=requests, duration_s=duration_s, top_k=top_k,
                                 keyword_ids=keyword_ids, **kwargs))
        print(f"loadtest {target} {mode} {level:g}: {r.throughput_rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, "
              f"p99 {r.p99_ms:.2f} ms, errors {r.errors}", flush=True)
        out.append(r)
    return out

