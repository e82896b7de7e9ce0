"""Command lines refuse nonsense at the prompt, in one line, before any data is read or anything is
replaced: a count or rate out of range, NaN, a misspelt source, an output that would delete an input."""
import importlib
import re

import pytest


@pytest.mark.parametrize("module, argv, message", [
    ("training.teacher", ["--batch-size", "0"], "argument --batch-size: must be a positive integer, got '0'"),
    ("training.teacher", ["--epochs", "nan"], "argument --epochs: must be a finite number, got 'nan'"),
    ("training.teacher", ["--max-minutes", "-1"], "argument --max-minutes: must be 0 or a positive number"),
    ("training.teacher", ["--patience", "0"], "argument --patience: must be a positive integer"),
    ("training.teacher", ["--eval-every", "-1"], "argument --eval-every: must be 0 or a positive integer"),
    ("training.teacher", ["--random-negatives", "2"], "argument --random-negatives: must be between 0 and 1"),
    ("training.teacher", ["--num-layers", "9"], "--num-layers: the pretrained model has 6 layers"),
    ("training.distill", ["--distill", "x", "--sources", "labelled,bm52"], r"unknown source\(s\) \['bm52'\]"),
    ("training.distill", ["--distill", "x", "--init", "ckpt", "--num-layers", "3"], "comes from the --init checkpoint"),
    ("training.distill", ["--distill", "x", "--head-lr", "-1"], "argument --head-lr: must be 0 or a positive number"),
    ("training.bilstm", ["--distill", "x", "--teacher", "t", "--hidden", "0"], "argument --hidden: must be a positive"),
    ("training.distill_data", ["--teacher", "t", "--perturb", "1.5"], "argument --perturb: must be between 0 and 1"),
    ("training.bilstm", ["--distill", "x", "--teacher", "t", "--freeze-word-embeddings"], "are always frozen"),
    ("training.bilstm", ["--distill", "x", "--teacher", "t", "--max-length", "2"], "a pair needs at least 3 pieces"),
    ("benchmarks.bench_bilstm", ["--compare", "ckpt"], "--compare takes LABEL=DIR, got 'ckpt'"),
    ("benchmarks.bench_bilstm", ["--compare", "a=x", "--compare", "a=y"], "label 'a' given twice"),
    ("training.index", ["--export", "x", "--store", "y", "--hnsw-m", "0"], "argument --hnsw-m: must be a positive"),
    ("training.evaluate", ["--model", "bm25", "--threads", "0"], "argument --threads: must be a positive integer"),
    ("training.pipeline", ["--budget-minutes", "-5"], "argument --budget-minutes: must be 0 or a positive number"),
    ("serving.server", ["--grpc-port", "70000"], "argument --grpc-port: must be a port between 1 and 65535"),
    ("serving.server", ["--grpc-port", "9000", "--http-port", "9000"], "ports must differ"),
    ("serving.stall_probe", ["--pause", "inf"], "argument --pause: must be a finite number, got 'inf'"),
    ("client.suite", ["loadtest", "--levels", "1,,2"], "argument --levels: must be a comma-separated list"),
    ("client", ["loadtest", "--queries", "q", "--rate", "0"], "argument --rate: must be a positive number"),
    ("client", ["loadtest", "--queries", "q", "--keyword-ids", "k"], "--keyword-ids is for --target relevance"),
    ("client", ["query", "drill", "--timeout", "nan"], "argument --timeout: must be a finite number"),
])
def test_bad_flags_are_refused_at_the_prompt(module, argv, message, capsys):
    main = importlib.import_module(module if module != "client" else "client.__main__").main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_outputs_that_would_delete_an_input_are_refused_and_nothing_moves(tmp_path, capsys):
    from serving.repository import main as repository
    from training.export import main as export
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    for argv in (["--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path)],
                 ["--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "model")]):
        with pytest.raises(SystemExit):
            export(argv)
        assert "would replace checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="would replace export"):
        repository(["--export", str(tmp_path / "model"), "--store", str(tmp_path / "s"), "--out", str(tmp_path)])
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"weights"


def test_a_rebuild_without_data_deletes_nothing(tmp_path):
    from serving.build import main as build
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "export.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"^build: no Home Depot data at"):
        build(["--artifacts", str(tmp_path), "--data", str(tmp_path / "nowhere"), "--rebuild"])
    assert (tmp_path / "export" / "export.json").is_file()


def test_unreadable_inputs_end_a_training_command_in_one_line(tmp_path):
    """A file that is not there, a TSV that is not a distillation set or not UTF-8: one line naming it."""
    from training import distill, distill_data
    with pytest.raises(SystemExit, match=r"^distill: .*No such file or directory: .*nope.tsv"):
        distill.main(["--distill", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match=r"^distill_data: .*nope: no teacher checkpoint"):  # before any BM25 work
        distill_data.main(["--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "d.tsv")])
    (tmp_path / "other.tsv").write_text("query\tkeyword\nfan\tFan\n")
    with pytest.raises(SystemExit, match=r"^distill: .*other.tsv: not a distillation set .*missing columns"):
        distill.main(["--distill", str(tmp_path / "other.tsv"), "--out", str(tmp_path / "t")])
    (tmp_path / "nan.tsv").write_text("query\tkeyword_id\tkeyword\tlabel\tteacher_logit\tsource\n"
                                      "fan\t1\tFan\t\tnan\tlabelled\n")
    with pytest.raises(SystemExit, match=r"^distill: .*nan.tsv:2: teacher_logit must be a finite number"):
        distill.main(["--distill", str(tmp_path / "nan.tsv"), "--out", str(tmp_path / "t")])
    (tmp_path / "latin.tsv").write_bytes("query\tkeyword_id\tkeyword\tlabel\tteacher_logit\tsource\n"
                                         "caf\xe9\t1\tFan\t\t1.0\tlabelled\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"^distill: an input file is not valid UTF-8"):
        distill.main(["--distill", str(tmp_path / "latin.tsv"), "--out", str(tmp_path / "t")])
