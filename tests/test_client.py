"""Client-side pieces that need no server: retry policy, load statistics, reports."""
import json

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
