"""Every training command end to end on a tiny Home Depot-shaped CSV written here (small models)."""
import json
import random

import pytest

from title_words import in_order, title_words
from training import bilstm, distill, distill_data, evaluate, teacher
from training.data import split_of
from training.twin import TwinBERT, TwinConfig

PRODUCTS = ["cordless drill", "ceiling fan", "garden hose", "kitchen faucet", "toilet seat", "led bulb",
            "interior paint", "concrete mix", "angle bracket", "door lock", "wood screws", "shop vacuum"]
BRANDS = ["DEWALT", "Hampton Bay", "Flexzilla", "Glacier Bay", "BEMIS", "Philips", "BEHR", "Quikrete"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd")
    rng = random.Random(0)
    rows, uid = [], 100000
    titles = {}
    for p in PRODUCTS:
        for b in BRANDS[:4]:
            uid += 1
            titles[uid] = f"{b} {p.title()} Model {uid % 97}"
    queries = [f"{adj} {p}" for p in PRODUCTS for adj in ("best", "cheap", "white", "large", "small", "new")]
    assert {split_of(q) for q in queries} == {"train", "dev", "test"}
    for i, q in enumerate(queries):
        product = q.split(" ", 1)[1]
        for uid, t in rng.sample(sorted(titles.items()), 2) + [next((u, t) for u, t in titles.items()
                                                                  if product.title() in t)]:
            rel = 3.0 if product.title() in t else rng.choice([1.0, 1.33, 2.0])
            rows.append(f'{len(rows) + 1},{uid},"{t}","{q}",{rel}')
    (root / "train.csv").write_text('"id","product_uid","product_title","search_term","relevance"\n'
                                    + "\n".join(rows) + "\n", encoding="latin-1")
    return root


def test_teacher_distillation_students_and_evaluation(tiny_data, tmp_path, capsys):
    import torch
    d = ["--data", str(tiny_data)]
    small = ["--max-steps", "3", "--eval-every", "2", "--dev-pairs", "20", "--batch-size", "8"]
    teacher.main(d + ["--out", str(tmp_path / "teacher"), "--num-layers", "1"] + small)
    assert json.loads((tmp_path / "teacher" / "train_summary.json").read_text())["step"] == 3
    TwinBERT(TwinConfig(num_layers=1)).save(tmp_path / "student")
    distill_data.main(d + ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
                           "--out", str(tmp_path / "distill.tsv"), "--student-negatives", "3", "--synthetic", "40"])
    rows = [line.split("\t") for line in (tmp_path / "distill.tsv").read_text().splitlines()[1:]]
    with pytest.raises(SystemExit) as exit_:  # student negatives without a student would silently be none
        distill_data.main(d + ["--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "x.tsv"),
                               "--student-negatives", "2"])
    assert exit_.value.code == 2 and "--student-negatives needs --student" in capsys.readouterr().err
    assert {r[-1].strip() for r in rows} == {"labelled", "random", "bm25", "student", "perturbed", "synthetic"}
    synthetic = {}
    for r in rows:
        if r[-1].strip() == "synthetic":
            synthetic.setdefault(r[0], []).append(r[2].lower())
    # every synthetic query is a span of its first title, unjudged, and one the split puts in train
    assert synthetic and all(split_of(q) == "train" and q in titles[0] for q, titles in synthetic.items())
    assert all(r[3] == "" for r in rows if r[-1].strip() == "synthetic")
    # the mixed style (the fp32 profile's): a query's words come from its first title, in order
    distill_data.main(d + ["--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "mixed.tsv"),
                           "--random", "0", "--bm25", "0", "--perturb", "0", "--synthetic", "40",
                           "--synthetic-style", "mixed"])
    mixed = {}
    for r in [line.split("\t") for line in (tmp_path / "mixed.tsv").read_text().splitlines()[1:]]:
        if r[-1].strip() == "synthetic":
            mixed.setdefault(r[0], []).append(title_words(r[2]))
    assert mixed and all(split_of(q) == "train" and in_order(q.split(), titles[0]) for q, titles in mixed.items())
    assert set(mixed) != set(synthetic)
    per_query = {}
    for r in rows:
        if r[-1].strip() == "student":
            per_query.setdefault(r[0], set()).add(r[1])
    assert max(map(len, per_query.values())) == 3 and all(r[3] == "" for r in rows if r[-1].strip() == "student")
    distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "student"),
                      "--out", str(tmp_path / "twin")] + small)
    assert TwinBERT.load(tmp_path / "twin").config.trained_crossings == ("cos", "res")
    assert TwinBERT.load(tmp_path / "twin").config.keyword_max_len == 32  # the checkpoint's, by default
    # the full profiles' second pass reads longer titles than the checkpoint it starts from
    distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "twin"),
                      "--out", str(tmp_path / "twin48"), "--keyword-max-len", "48"] + small)
    assert TwinBERT.load(tmp_path / "twin48").config.keyword_max_len == 48
    with pytest.raises(SystemExit) as exit_:  # past the encoder's position embeddings
        distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "twin"),
                          "--out", str(tmp_path / "x"), "--keyword-max-len", "513"] + small)
    assert exit_.value.code == 2 and "between 3 ([CLS], a token, [SEP]) and 512" in capsys.readouterr().err
    distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "student"),
                      "--out", str(tmp_path / "twin_listwise"), "--group-size", "4", "--listwise-weight", "1",
                      "--res-loss", "logit-mse", "--proj-dim", "32", "--head-lr", "1e-3"] + small)
    assert json.loads((tmp_path / "twin_listwise" / "train_summary.json").read_text())["step"] == 3
    # a projection put on the initialising checkpoint is kept, and loads with the student
    assert TwinBERT.load(tmp_path / "twin_listwise").config.proj_dim == 32
    # --separate-encoders parts a shared checkpoint's towers, which then train apart
    distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "student"),
                      "--out", str(tmp_path / "twin_separate"), "--separate-encoders"] + small)
    separate = TwinBERT.load(tmp_path / "twin_separate")
    assert not separate.config.shared_encoders and separate.query_encoder is not separate.keyword_encoder
    q_state, k_state = separate.query_encoder.state_dict(), separate.keyword_encoder.state_dict()
    assert any(not torch.equal(q_state[k], k_state[k]) for k in q_state)
    with pytest.raises(SystemExit) as exit_:  # a listwise term needs lists
        distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--out", str(tmp_path / "x"),
                          "--listwise-weight", "1"])
    assert exit_.value.code == 2 and "needs --group-size of at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a checkpoint's projection is not replaced by another size
        distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "twin_listwise"),
                          "--out", str(tmp_path / "x"), "--proj-dim", "16"] + small)
    assert exit_.value.code == 2 and "already projects to 32 dims" in capsys.readouterr().err
    for command, given in ((distill, ["--distill", "x"]), (bilstm, ["--distill", "x", "--teacher", "x"]),
                           (teacher, [])):  # a dropout rate of 1 would zero every activation
        with pytest.raises(SystemExit) as exit_:
            command.main(d + given + ["--out", str(tmp_path / "x"), "--dropout", "1"])
        assert exit_.value.code == 2 and "at least 0 and below 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    bilstm.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--teacher", str(tmp_path / "teacher"),
                     "--out", str(tmp_path / "bilstm")] + small)
    trained = bilstm.BiLSTMStudent.load(tmp_path / "bilstm")
    assert trained.config.interaction and trained.config.max_length == 40  # the defaults
    bilstm.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--teacher", str(tmp_path / "teacher"),
                     "--out", str(tmp_path / "bilstm_plain"), "--no-interaction", "--max-length", "12"] + small)
    plain = bilstm.BiLSTMStudent.load(tmp_path / "bilstm_plain")
    assert not plain.config.interaction and plain.config.max_length == 12
    ids, mask = plain.tokenizer()(["cordless drill"], ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit"])
    assert mask.shape == (1, 12) and mask.all()  # the checkpoint reads the pieces it was trained on
    report = evaluate.evaluate([("BM25", "bm25"), ("teacher", f"teacher:{tmp_path / 'teacher'}"),
                                ("twin", f"twin:{tmp_path / 'twin'}"), ("bilstm", f"bilstm:{tmp_path / 'bilstm'}"),
                                ("bilstm-bf16", f"bilstm-bf16:{tmp_path / 'bilstm'}"),
                                ("rerank", f"rerank:teacher:{tmp_path / 'teacher'}@{tmp_path / 'twin'}"),
                                ("rerank@1", f"rerank:bilstm:{tmp_path / 'bilstm'}@{tmp_path / 'twin'}@1")],
                               "homedepot:test", tmp_path / "eval", data=str(tiny_data), cache_dir=None)
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"BM25", "teacher", "twin (cos)", "twin (res)", "bilstm", "bilstm-bf16", "rerank", "rerank@1"}
    # the same student with its LSTM in bf16: its own scores, close to fp32's ranking of the pairs
    assert rows["bilstm-bf16"]["params"] == rows["bilstm"]["params"]
    assert rows["bilstm-bf16"]["roc_auc"] == pytest.approx(rows["bilstm"]["roc_auc"], abs=0.02)
    assert all(0.0 <= r["roc_auc"] <= 1.0 for k, r in rows.items() if not k.startswith("rerank"))
    # the query encode is timed eager and as served (the traced, optimised export), for both twin rows
    assert all(rows[t]["query_encode_ms"] > 0 and rows[t]["served_query_encode_ms"] > 0 for t in ("twin (cos)", "twin (res)"))
    assert "served_query_encode_ms" not in rows["teacher"]
    # re-ordering only the first candidate leaves the cosine order as it was
    assert all(rows["rerank@1"][m] == rows["twin (cos)"][m] for m in ("ndcg@10", "recall@100", "mrr@10"))
    with pytest.raises(ValueError, match="depth must be between 1 and 100"):
        evaluate.load_model(f"rerank:bilstm:{tmp_path / 'bilstm'}@{tmp_path / 'twin'}@0", None, None)
    with pytest.raises(ValueError, match="depth must be between 1 and 100, got -5"):
        evaluate.load_model(f"rerank:bilstm:{tmp_path / 'bilstm'}@{tmp_path / 'twin'}@-5", None, None)
    # the teacher re-orders exactly the twin's cosine top list: same recall, its own order
    assert "roc_auc" not in rows["rerank"] and rows["rerank"]["recall@100"] == rows["twin (cos)"]["recall@100"]
    with pytest.raises(ValueError, match="rerank needs"):
        evaluate.load_model(f"rerank:bm25@{tmp_path / 'twin'}", None, None)
    assert "ndcg@10" in rows["twin (cos)"] and "ndcg@10" in rows["BM25"] and "ndcg@10" not in rows["teacher"]
    assert "| twin (res) |" in (tmp_path / "eval.md").read_text()
    # against the baselines: BM25 for retrieval, the teacher for ROC-AUC, found by kind
    assert report["comparison"]["baseline"] == "BM25" and report["comparison"]["reference"] == "teacher"
    assert set(rows["twin (cos)"]["vs_baseline"]) == {"ndcg@10", "recall@100", "mrr@10"}
    d = rows["rerank"]["vs_baseline"]["ndcg@10"]
    assert d["low"] <= d["diff"] <= d["high"]
    assert d["diff"] == pytest.approx(rows["rerank"]["ndcg@10"] - rows["BM25"]["ndcg@10"])
    assert "vs_baseline" not in rows["BM25"] and "roc_auc_vs_reference" not in rows["teacher"]
    assert rows["bilstm"]["roc_auc_vs_reference"]["ratio"] == pytest.approx(
        rows["bilstm"]["roc_auc"] / rows["teacher"]["roc_auc"])
    assert "## Against the baselines" in (tmp_path / "eval.md").read_text()
    with pytest.raises(ValueError, match="--baseline 'nope'"):
        evaluate.evaluate([("BM25", "bm25")], "homedepot:test", tmp_path / "x", data=str(tiny_data), baseline="nope")
    # every trained model records the split it held out, and the report names the split it evaluated on
    recorded = {n: json.loads((tmp_path / n / "split.json").read_text()) for n in ("teacher", "twin", "bilstm")}
    assert len({json.dumps(r, sort_keys=True) for r in recorded.values()}) == 1
    assert report["split"] == {"name": "test", "seed": recorded["teacher"]["seed"],
                               "method": recorded["teacher"]["method"], **recorded["teacher"]["splits"]["test"]}
    assert f"query list sha256 {report['split']['queries_sha256'][:16]}" in (tmp_path / "eval.md").read_text()
    # a model trained on another split is refused, not scored on queries it may have trained on
    other = dict(recorded["bilstm"], seed=recorded["bilstm"]["seed"] + 1)
    (tmp_path / "bilstm" / "split.json").write_text(json.dumps(other))
    for spec in (f"bilstm:{tmp_path / 'bilstm'}", f"rerank:bilstm:{tmp_path / 'bilstm'}@{tmp_path / 'twin'}@3"):
        with pytest.raises(ValueError, match=r"x: .*bilstm was trained on another split of the data"):
            evaluate.evaluate([("x", spec)], "homedepot:test", tmp_path / "x", data=str(tiny_data), cache_dir=None)
    (tmp_path / "twin" / "split.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"twin: .*split.json is not a split record"):
        evaluate.evaluate([("twin", f"twin:{tmp_path / 'twin'}")], "homedepot:test", tmp_path / "x",
                          data=str(tiny_data), cache_dir=None)


def test_head_params_res_moves_only_the_res_crossing_at_the_head_rate(tiny_data, tmp_path):
    """With the base rate at 0, --head-lr moves exactly the parameters --head-params names: `res` leaves the
    encoder, the pooling and the projection (so every cos vector) where the initialising checkpoint had them."""
    import torch
    d = ["--data", str(tiny_data)]
    TwinBERT(TwinConfig(num_layers=1, proj_dim=32)).save(tmp_path / "student")
    before = TwinBERT.load(tmp_path / "student").state_dict()
    rows = ["query\tkeyword_id\tkeyword\tlabel\tteacher_logit\tsource"]
    rows += [f"best {p}\t{100001 + i}\tDEWALT {p.title()}\t\t{1.5 - i * 0.2:.2f}\tlabelled"
             for i, p in enumerate(PRODUCTS)]
    (tmp_path / "distill.tsv").write_text("\n".join(rows) + "\n")
    small = ["--max-steps", "3", "--eval-every", "0", "--dev-pairs", "10", "--batch-size", "4", "--lr", "0",
             "--head-lr", "1e-2", "--contrastive-weight", "0"]
    moved = {}
    for which in ("res", "head"):
        distill.main(d + ["--distill", str(tmp_path / "distill.tsv"), "--init", str(tmp_path / "student"),
                          "--out", str(tmp_path / which), "--head-params", which] + small)
        after = TwinBERT.load(tmp_path / which).state_dict()
        moved[which] = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved["res"] and all(k.startswith("pool_cross.res_") for k in moved["res"])
    assert {"pool_cross.pool_v", "pool_cross.proj_w"} <= moved["head"]
    assert all(k.startswith("pool_cross.") for k in moved["head"])  # the encoder stays at rate 0


def test_distill_under_torchrun_keeps_both_replicas_equal(tiny_data, tmp_path, torchrun):
    """training.distill with two gloo processes: DistributedDataParallel syncs the gradients only when
    the loss runs the model through its wrapper, so after training both ranks must hold the same weights
    (before the loss called the model's parts directly, rank 1 ended 2.5e-4 away from rank 0)."""
    import textwrap

    TwinBERT(TwinConfig(num_layers=1)).save(tmp_path / "student")
    rows = ["query\tkeyword_id\tkeyword\tlabel\tteacher_logit\tsource"]
    rows += [f"{adj} {p}\t{100001 + i}\tDEWALT {p.title()}\t\t{1.5 - i * 0.2:.2f}\tlabelled"
             for adj in ("best", "cheap") for i, p in enumerate(PRODUCTS)]
    (tmp_path / "distill.tsv").write_text("\n".join(rows) + "\n")
    script = tmp_path / "ddp_distill.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        import training.distill as d
        real_loop = d.train_loop
        def checked_loop(model, *a, **k):
            state = real_loop(model, *a, **k)
            for name, w in model.state_dict().items():
                other = w.clone(); dist.broadcast(other, 0)
                assert torch.equal(w, other), f"rank {{dist.get_rank()}}: {{name}} differs from rank 0"
            print(f"rank {{dist.get_rank()}} equal after {{state['step']}} steps", flush=True)
            return state
        d.train_loop = checked_loop
        d.main(["--data", {str(tiny_data)!r}, "--distill", {str(tmp_path / "distill.tsv")!r},
                "--init", {str(tmp_path / "student")!r}, "--out", {str(tmp_path / "twin")!r},
                "--max-steps", "2", "--eval-every", "0", "--dev-pairs", "10", "--batch-size", "4", "--threads", "1"])
    """))
    stdout = torchrun(script)
    assert "rank 0 equal after 2 steps" in stdout and "rank 1 equal after 2 steps" in stdout


def test_train_twin_refuses_a_batch_larger_than_its_data(tiny_data, tmp_path):
    from training import train_twin
    with pytest.raises(SystemExit, match="fewer than one batch of 4096"):
        train_twin.main(["--data", str(tiny_data), "--out", str(tmp_path / "t"), "--batch-size", "4096",
                         "--num-layers", "1"])
    assert not (tmp_path / "t" / "model.safetensors").exists()


def test_train_twin_under_torchrun_averages_gradients_and_rank_0_saves(tiny_data, tmp_path, torchrun):
    """training.train_twin with two gloo processes: each takes its own batch of a step, the gradients are
    averaged, so both ranks end with the same weights, different from one process's; rank 0 writes."""
    import textwrap

    import torch

    script = tmp_path / "ddp_twin.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        import training.train_twin as t
        made = []
        class Recorded(t.TwinBERT):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)
        t.TwinBERT = Recorded
        t.train(t.parse_args(["--data", {str(tiny_data)!r}, "--out", {str(tmp_path / "twin")!r}, "--max-steps", "2",
                              "--batch-size", "4", "--num-layers", "1", "--threads", "2", "--precision", "fp32"]))
        for name, w in made[0].state_dict().items():
            other = w.clone(); dist.broadcast(other, 0)
            assert torch.equal(w, other), f"rank {{dist.get_rank()}}: {{name}} differs from rank 0"
        print(f"rank {{dist.get_rank()}} equal", flush=True)
        probe = torch.nn.Linear(2, 1)  # the mean, not the sum: rank r's gradients are all r + 1
        for p in probe.parameters():
            p.grad = torch.full_like(p, dist.get_rank() + 1.0)
        t.average_gradients(probe, 2)
        assert all(torch.equal(p.grad, torch.full_like(p, 1.5)) for p in probe.parameters())
        print(f"rank {{dist.get_rank()}} mean", flush=True)
        t.finish_distributed()
    """))
    stdout = torchrun(script)
    assert "rank 0 equal" in stdout and "rank 1 equal" in stdout and "rank 1 mean" in stdout
    assert stdout.count("train_twin: 2 steps") == 1 and "16 pairs" in stdout  # 2 steps x 2 ranks x 4
    assert json.loads((tmp_path / "twin" / "train_config.json").read_text())["world_size"] == 2
    assert (tmp_path / "twin" / "split.json").is_file()
    from training import train_twin
    train_twin.main(["--data", str(tiny_data), "--out", str(tmp_path / "one"), "--max-steps", "2", "--batch-size", "4",
                     "--num-layers", "1", "--precision", "fp32"])
    two, one = TwinBERT.load(tmp_path / "twin").state_dict(), TwinBERT.load(tmp_path / "one").state_dict()
    assert any(not torch.equal(two[k], one[k]) for k in one)  # the second rank's batches moved the weights


def test_born_again_teacher_trains_on_soft_targets_and_refuses_held_out_queries(tiny_data, tmp_path, capsys):
    """--soft-targets: a row's target is the scoring teacher's probability, mixed with the label where there is
    one; a set holding a dev or test query is refused before any training, and --label-mix needs the set."""
    import math

    from training.data import DataError, load_pairs, split_pairs
    d = ["--data", str(tiny_data)]
    queries = [f"{adj} {p}" for p in PRODUCTS for adj in ("best", "cheap", "white", "large", "small", "new")]
    train_q = [q for q in queries if split_of(q) == "train"]
    held_q = next(q for q in queries if split_of(q) != "train")
    header = "query\tkeyword_id\tkeyword\tlabel\tteacher_logit\tsource"
    rows = [f"{train_q[0]}\t100001\tDEWALT Cordless Drill\t3.0\t0.0\tlabelled",
            f"{train_q[1]}\t100002\tBEHR Interior Paint\t\t-2.0\tbm25"]
    rows += [f"{q}\t{100003 + i}\tPhilips Led Bulb\t1.0\t1.0\tperturbed" for i, q in enumerate(train_q[2:10])]
    (tmp_path / "set.tsv").write_text("\n".join([header] + rows) + "\n")
    splits = split_pairs(load_pairs(tiny_data))
    pairs = teacher.soft_target_pairs(tmp_path / "set.tsv", splits, 0.5)
    assert len(pairs) == 10
    assert pairs[0] == (train_q[0], "DEWALT Cordless Drill", 0.5 * 1.0 + 0.5 * 0.5)
    assert pairs[1][2] == pytest.approx(1 / (1 + math.exp(2.0)))  # no label: the teacher's probability alone
    assert pairs[2][2] == pytest.approx(0.5 * 0.0 + 0.5 / (1 + math.exp(-1.0)))
    assert teacher.soft_target_pairs(tmp_path / "set.tsv", splits, 1.0)[0][2] == 1.0

    (tmp_path / "leak.tsv").write_text("\n".join([header] + rows + [f"{held_q}\t100099\tBEMIS Toilet Seat\t\t0.5\tbm25"]) + "\n")
    with pytest.raises(DataError, match="held-out"):
        teacher.soft_target_pairs(tmp_path / "leak.tsv", splits, 0.5)
    with pytest.raises(SystemExit) as exit_:
        teacher.main(d + ["--out", str(tmp_path / "t"), "--label-mix", "0.3"])
    assert exit_.value.code == 2 and "--label-mix needs --soft-targets" in capsys.readouterr().err

    small = ["--max-steps", "3", "--epochs", "3", "--eval-every", "0", "--dev-pairs", "10", "--batch-size", "4",
             "--num-layers", "1"]
    teacher.main(d + ["--out", str(tmp_path / "t2"), "--soft-targets", str(tmp_path / "set.tsv"),
                      "--label-mix", "0.3"] + small)
    assert json.loads((tmp_path / "t2" / "train_summary.json").read_text())["step"] == 3
    assert teacher.CrossEncoder.load(tmp_path / "t2").score(["best drill"], ["DEWALT Cordless Drill"]).shape == (1,)
