"""The whole offline pipeline, every step for real, on a slice of the real Home Depot data.

The quick profile itself (`make train-quick`) takes about 15 minutes, too long for the test run; this runs
the same `pipeline.run("quick", ...)` with a few steps per model on the first 2,500 judged pairs, so that
each step reads what the one before it wrote: the quick student, the teacher, the teacher-scored
distillation set (with its negatives and perturbed queries), both TwinBERT passes and the BiLSTM (each
with its no-augmentation ablation), and the evaluation of all of them beside BM25 and zero-shot MiniLM.
The quick profile's own step counts are checked by test_pipeline_deadline's wiring test."""
from __future__ import annotations

import csv
import json
import math

import pytest

ROWS = 2500
MODELS = ("model", "teacher", "twin_pass1", "twin", "twin_noaug", "bilstm", "bilstm_noaug")


@pytest.fixture(scope="module")
def data_slice(home_depot_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("slice")
    with open(home_depot_csv, newline="", encoding="latin-1") as f, \
            open(out / "train.csv", "w", newline="", encoding="latin-1") as g:
        reader, writer = csv.reader(f), csv.writer(g, quoting=csv.QUOTE_ALL)
        for i, row in enumerate(reader):
            if i > ROWS:
                break
            writer.writerow(row)
    return out


def test_every_pipeline_step_runs_for_real_and_reads_the_one_before(data_slice, tmp_path, monkeypatch):
    from training import evaluate, pipeline
    from training.data import load_pairs
    few = ["--max-steps", "4", "--eval-every", "2", "--dev-pairs", "40"]
    monkeypatch.setitem(pipeline.PROFILES, "quick", dict(
        pipeline.PROFILES["quick"], student_steps=4, teacher=few, distill_data=["--max-queries", "40"],
        twin=few, twin_pass2=["--max-steps", "3", "--eval-every", "0", "--dev-pairs", "40", "--seed", "1"],
        bilstm=few, ablation_twin=few, ablation_bilstm=few, eval_queries=30))
    # a step that ignored --data would read this (empty) directory and fail, not the whole data set
    (tmp_path / "no_data").mkdir()
    monkeypatch.setenv("TWINBERT_DATA", str(tmp_path / "no_data"))
    artifacts, reports = tmp_path / "a", tmp_path / "r"
    pipeline.run("quick", artifacts, reports, str(data_slice), force=False, precision="fp32")

    for name in MODELS:
        assert (artifacts / name / "model.safetensors").is_file(), name
    # one split, written beside every model trained on it (the quick student's included)
    splits = {name: (artifacts / name / "split.json").read_text() for name in MODELS}
    assert len(set(splits.values())) == 1, splits.keys()
    split = json.loads(splits["twin"])["splits"]
    assert sum(m["pairs"] for m in split.values()) == len(load_pairs(data_slice)) <= ROWS

    with open(artifacts / "distill.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sources = {r["source"] for r in rows}
    assert {"labelled", "random", "bm25", "student", "perturbed"} <= sources, sources
    assert all(math.isfinite(float(r["teacher_logit"])) for r in rows)

    report = json.loads((reports / "eval_quick.json").read_text())
    assert 0 < report["pairs"] <= split["test"]["pairs"] and 0 < report["queries"] <= 30  # eval_queries
    by_model = {r["model"]: r for r in report["rows"]}
    for label in ("BM25", "MiniLM-L6 zero-shot", "TwinBERT (cos)", "TwinBERT (res)", "TwinBERT, no augmentation (cos)"):
        assert 0 <= by_model[label]["ndcg@10"] <= 1 and 0 <= by_model[label]["recall@100"] <= 1, label
    for label in ("teacher (cross-encoder)", "TwinBERT (cos)", "TwinBERT (res)", "BiLSTM", "BiLSTM, LSTM in bf16",
                  "BiLSTM, no augmentation"):
        assert 0 <= by_model[label]["roc_auc"] <= 1, label
    for label in ("teacher re-ranks TwinBERT cos top-30", "BiLSTM re-ranks TwinBERT cos top-100",
                  "BiLSTM re-ranks TwinBERT cos top-30 (retrieve_rerank, DEPTH 30)"):
        assert 0 <= by_model[label]["ndcg@10"] <= 1, label
    assert (reports / "eval_quick.md").read_text().startswith("# Evaluation: homedepot:test")
    summary = json.loads((reports / "train_quick.json").read_text())
    assert summary["skipped"] == [] and summary["precision"] == "fp32"
    # each TwinBERT pass read the whole set, the ablation its labelled rows alone
    assert summary["twin_pass1"]["pairs"] == summary["twin"]["pairs"] == len(rows)
    assert summary["twin_noaug"]["pairs"] == sum(r["source"] == "labelled" for r in rows)
    assert summary["teacher"]["step"] == summary["bilstm"]["step"] == 4  # their --max-steps
    assert 1 <= summary["twin"]["step"] <= 3 and all(1 <= summary[n]["step"] <= 4 for n in MODELS[2:]), summary

    # a second run reuses every model and rebuilds only the report
    calls = []
    monkeypatch.setattr(evaluate, "main", lambda argv: calls.append(argv))
    pipeline.run("quick", artifacts, reports, str(data_slice), force=False)
    summary = json.loads((reports / "train_quick.json").read_text())
    assert len(summary["skipped"]) == 8 and "evaluation" not in summary["skipped"] and len(calls) == 1
