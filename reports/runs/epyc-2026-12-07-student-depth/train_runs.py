"""Writes train_runs.json: each training run of run.sh, its steps, minutes and dev samples (the mean of the cos
and res ROC-AUC over the 2,000 dev pairs of its seed), from its checkpoint's train_summary.json and its log."""
import json
import re
import sys
from pathlib import Path

exp = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/exp/depth")
runs = {}
for name in ("L6", "L2", "E10", "Q2K6", "Q2K6_p1", "Q2K6_p1p2"):
    summary = json.loads((exp / name / "train_summary.json").read_text())
    log = (exp / f"{name}.log").read_text().replace("\r", "\n")
    minutes = float(re.search(r"steps in ([0-9.]+) min", log).group(1))
    runs[name] = {"steps": summary["step"], "minutes": minutes, "seed": summary["settings"]["seed"],
                  "dev_samples": {e["step"]: round(e["metric"], 4) for e in summary["evals"]}}
out = Path(__file__).with_name("train_runs.json")
out.write_text(json.dumps(runs, indent=2) + "\n")
print(out.read_text())
