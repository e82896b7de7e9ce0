"""keyword_store's stage counters: the stages of its `execute`, the two metric names, and reading them
back from a Prometheus scrape (`make bench`, tests). One definition for the model that writes them and
the tools that read them.

`STAGE_METRIC{stage=...}` sums microseconds per stage; `TIMED_METRIC` counts the requests those sums
cover, flushed together, so the difference of two scrapes of a stage over that of the requests is the
stage's mean per request.
"""
from __future__ import annotations

import urllib.request

STAGES = ("execute", "parse", "encode", "compute", "respond")
STAGE_METRIC = "twinbert_keyword_store_stage_us_total"
TIMED_METRIC = "twinbert_keyword_store_timed_requests_total"


def stage_sums(scrape: str) -> dict[str, float]:
    """Summed microseconds per stage over every instance and version in a /metrics text, and
    "requests", the requests they cover."""
    sums = {st: 0.0 for st in (*STAGES, "requests")}
    for line in scrape.splitlines():
        if line.startswith(STAGE_METRIC + "{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            if stage in sums:
                sums[stage] += float(line.rsplit(" ", 1)[1])
        elif line.startswith(TIMED_METRIC + "{"):
            sums["requests"] += float(line.rsplit(" ", 1)[1])
    return sums


def scrape_stage_sums(metrics_url: str) -> dict[str, float]:
    """stage_sums of the server's /metrics at `metrics_url`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        return stage_sums(r.read().decode())


def per_request(before: dict, after: dict) -> dict | None:
    """Mean microseconds per request in each stage between two stage_sums (None when no request was
    flushed in between)."""
    n = after["requests"] - before["requests"]
    if n <= 0:
        return None
    return {"requests": int(n), **{f"{st}_us": round((after[st] - before[st]) / n) for st in STAGES}}
