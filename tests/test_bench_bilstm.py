"""benchmarks.bench_bilstm on real dev pairs: its forms and the checkpoints given by --compare are timed in
the same blocks, each compared checkpoint reading pairs with its own tokenizer."""
import dataclasses
import json

from training.bilstm import BiLSTMStudent


def test_bench_bilstm_times_compared_checkpoints_beside_the_forms(tiny_reranker, home_depot_csv, tmp_path):
    from benchmarks import bench_bilstm
    ckpt = json.loads((tiny_reranker / "reranker.json").read_text())["checkpoint"]
    student = BiLSTMStudent.load(ckpt)
    short = BiLSTMStudent(dataclasses.replace(student.config, max_length=12))
    short.load_state_dict(student.state_dict())
    short.save(tmp_path / "short")
    bench_bilstm.main(["--checkpoint", ckpt, "--data", str(home_depot_csv.parent), "--batches", "1", "--rounds", "2",
                       "--compare", f"short={tmp_path / 'short'}", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "bench_bilstm.json").read_text())
    assert result["compare"] == {"inference short": {"checkpoint": str((tmp_path / "short").resolve()), "max_length": 12}}
    for setting, unit in (("per_pair", "ms_per_pair"), ("rerank", "ms")):
        rows = result[setting]
        assert {"student", "inference", "inference_bf16", "inference short"} <= set(rows)
        assert rows["inference short"]["calls"] == rows["inference"]["calls"] > 0
        assert rows["inference short"][f"median_{unit}"] > 0
    assert "| inference short |" in (tmp_path / "out" / "bench_bilstm.md").read_text()
    assert result["max_abs_logit_diff"] < 1e-4
