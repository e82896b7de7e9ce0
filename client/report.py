"""Load-test reports a newcomer can read: a table (Markdown), JSON, CSV and a PNG with two plots,
latency against throughput (p50 and p99 per load level) and the latency distribution per level."""
from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = ["tool", "mode", "target", "level", "requests", "errors", "throughput_rps", "p50_ms", "p90_ms",
           "p99_ms", "p999_ms", "mean_ms"]


def _rows(results, tool: str) -> list[dict]:
    rows = []
    for r in results:
        d = r.summary()
        d.setdefault("tool", tool)
        rows.append(d)
    return rows


def write_load_report(results, out: Path, title: str, tool: str = "project load generator",
                      extra_series: dict[str, list[dict]] | None = None, notes: list[str] | None = None) -> None:
    """`results`: LoadResult objects (with latencies); `extra_series`: other tools' rows (dicts) to plot beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _rows(results, tool)
    series = {tool: rows, **(extra_series or {})}
    all_rows = [r for rs in series.values() for r in rs]
    out.with_name(out.name + ".json").write_text(json.dumps({"title": title, "rows": all_rows}, indent=2) + "\n")
    with open(out.with_name(out.name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(all_rows)
    lines = [f"# Load test: {title}", "",
             "Each row is one load level: `closed` = that many concurrent clients each waiting for its answer; "
             "`open` = requests started at that rate per second. Latency is measured at the client, "
             "end to end over gRPC.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in all_rows]
    lines += ["", *(notes or []), "", f"![latency against throughput]({out.name}.png)", ""]
    out.with_name(out.name + ".md").write_text("\n".join(lines))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rs in series.items():
        rs = sorted((r for r in rs if r["p50_ms"] is not None), key=lambda r: r["throughput_rps"])  # None: all failed
        x = [r["throughput_rps"] for r in rs]
        ax1.plot(x, [r["p50_ms"] for r in rs], "o-", label=f"{name} p50")
        ax1.plot(x, [r["p99_ms"] for r in rs], "s--", label=f"{name} p99")
        for r in rs:
            ax1.annotate(f"{r['mode'][0]}{r['level']:g}", (r["throughput_rps"], r["p99_ms"]), fontsize=7,
                         textcoords="offset points", xytext=(3, 3))
    ax1.set_xlabel("throughput (requests/s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency against throughput\n(labels: c = concurrency, o = rate)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    for r in results:
        lat = getattr(r, "latencies_ms", None)
        if lat:
            ax2.hist(lat, bins=60, histtype="step", label=f"{r.mode} {r.level:g}")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("requests")
    ax2.set_title(f"latency distribution ({tool})")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out.with_name(out.name + ".png"), dpi=110)
    plt.close(fig)
