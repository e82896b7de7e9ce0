"""Training utilities: metrics, data formats, augmentation, and the resumable / distributed loop."""
import dataclasses
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from title_words import in_order, title_words
from training.artifacts import ArtifactError
from training.augment import misspell, perturb, token_dropout, token_swap
from training.datasets import (LabelledPairs, RetrievalSet, read_beir, read_labelled_pairs, retrieval_from_homedepot,
                               write_beir, write_labelled_pairs)
from training.data import Pair
from training.loop import LoopConfig, bucketed_batches, train_loop
from training.metrics import (bootstrap_auc_ratio, bootstrap_mean_diff, mrr_at, ndcg_at, pair_metrics, rank_auc,
                              recall_at, retrieval_metrics)


def test_retrieval_metrics_on_a_hand_computed_ranking():
    gains = {"a": 2.0, "b": 1.0}
    assert ndcg_at(["a", "b", "c"], gains) == pytest.approx(1.0)
    assert ndcg_at(["c", "a"], gains) == pytest.approx((2 / np.log2(3)) / (2 + 1 / np.log2(3)))
    assert recall_at(["c", "a"], gains, 100) == 0.5 and mrr_at(["c", "a"], gains) == 0.5
    m = retrieval_metrics({"q1": ["a"], "q2": ["x"]}, {"q1": {"a": 1.0}, "q2": {"y": 1.0}})
    assert m["mrr@10"] == 0.5 and m["queries"] == 2


def test_pair_metrics_perfect_and_inverted():
    labels = [1.0, 2.0, 3.0, 3.0]
    binary = [0, 0, 1, 1]
    assert pair_metrics([0.1, 0.2, 0.8, 0.9], labels, binary)["roc_auc"] == 1.0
    assert pair_metrics([0.9, 0.8, 0.2, 0.1], labels, binary)["roc_auc"] == 0.0


def test_rank_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
    assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_mean_diff_interval():
    rng = np.random.default_rng(0)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(400))}
    same = bootstrap_mean_diff(base, base)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    better = bootstrap_mean_diff({q: v + 0.1 for q, v in base.items()}, base)
    assert better["diff"] == pytest.approx(0.1) and better["low"] == pytest.approx(0.1)
    noisy = {q: v + 0.02 + float(rng.normal(0, 0.3)) for q, v in base.items()}
    d = bootstrap_mean_diff(noisy, base)
    assert d["low"] < d["diff"] < d["high"] and d["low"] < 0.0 < d["high"]  # too noisy to resolve 0.02
    assert bootstrap_mean_diff({"q0": 1.0, "extra": 5.0}, base)["queries"] == 1  # only common queries
    with pytest.raises(ValueError, match="no query in common"):
        bootstrap_mean_diff({"x": 1.0}, base)


def test_bootstrap_auc_ratio_resamples_whole_queries():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 5)
    y = rng.integers(0, 2, 1000)
    ref = y + rng.normal(0, 1.0, 1000)
    r = bootstrap_auc_ratio(ref, ref, y, groups, resamples=200)
    assert r["ratio"] == r["low"] == r["high"] == 1.0 and r["groups"] == 200
    better = bootstrap_auc_ratio(y + rng.normal(0, 0.3, 1000), ref, y, groups, resamples=200)
    assert 1.0 < better["low"] < better["ratio"] < better["high"]
    # a query-level effect: pairs of one query share an offset, so resampling pairs alone would be
    # overconfident; resampling the 200 queries gives a wider interval than resampling 1000 "queries"
    shared = ref + np.repeat(rng.normal(0, 2.0, 200), 5)
    by_query = bootstrap_auc_ratio(shared, ref, y, groups, resamples=300)
    by_pair = bootstrap_auc_ratio(shared, ref, y, np.arange(1000), resamples=300)
    assert by_query["high"] - by_query["low"] > by_pair["high"] - by_pair["low"]
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_auc_ratio(ref, ref, np.ones(1000), groups, resamples=10)
    # a reference that gets a few queries exactly wrong: resamples of those alone have no ratio (ROC-AUC
    # 0), they are skipped instead of dividing by zero; an exactly wrong reference overall is refused
    few_y, few_groups = np.array([1, 0] * 3), np.repeat(np.arange(3), 2)
    wrong = np.array([0.0, 1.0] * 3) + np.array([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])  # right on query 2 only
    r = bootstrap_auc_ratio(few_y.astype(float), wrong, few_y, few_groups, resamples=200)
    assert np.isfinite([r["low"], r["high"], r["ratio"]]).all()
    with pytest.raises(ValueError, match="reference's ROC-AUC is 0"):
        bootstrap_auc_ratio(few_y.astype(float), 1.0 - few_y, few_y, few_groups, resamples=10)
    with pytest.raises(ValueError, match="one entry per pair"):
        bootstrap_auc_ratio(ref, ref[:10], y, groups)


def test_labelled_pairs_round_trip_csv_and_tsv(tmp_path):
    pairs = LabelledPairs(["drill", "fan, white"], ["DEWALT drill", 'Hunter "fan"'], [3.0, 1.0])
    for name in ("p.csv", "p.tsv"):
        write_labelled_pairs(pairs, tmp_path / name)
        back = read_labelled_pairs(tmp_path / name)
        assert (back.queries, back.keywords, back.labels) == (pairs.queries, pairs.keywords, pairs.labels)
        assert back.binary == [1, 0]


def test_beir_round_trip_and_homedepot_qrels(tmp_path):
    rows = [Pair("Drill", "1", "DEWALT drill", 3.0), Pair("drill", "2", "Bosch drill", 2.67),
            Pair("drill", "3", "Paint", 1.0), Pair("fan", "4", "Fan", 2.0)]
    rs = retrieval_from_homedepot(rows, rows)
    assert rs.qrels == {"drill": {"1": 2.0, "2": pytest.approx(1.67)}}  # 'fan' has no relevant item
    assert list(rs.queries) == ["drill"] and len(rs.corpus) == 4
    write_beir(rs, tmp_path / "beir")
    back = read_beir(tmp_path / "beir")
    assert back.corpus == rs.corpus and back.queries == rs.queries
    assert back.qrels["drill"]["2"] == pytest.approx(1.67)
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        read_beir(tmp_path)


def test_labelled_pairs_reader_names_the_bad_line(tmp_path):
    p = tmp_path / "p.csv"
    p.write_bytes("\ufeffquery,keyword,label\ndrill,DEWALT drill,3\n".encode("utf-8"))  # a spreadsheet's BOM
    assert read_labelled_pairs(p).queries == ["drill"]
    for body, message in (("query,keyword,label\ndrill,x,3\nfan,y\n", r"p.csv:3: 2 fields, the header has 3"),
                          ("query,keyword,label\ndrill,x,n/a\n", r"p.csv:2: label must be a finite number, got 'n/a'"),
                          ("query,keyword\ndrill,x\n", "header must have"), ("query,keyword,label\n", "no pairs")):
        p.write_text(body)
        with pytest.raises(ValueError, match=message):
            read_labelled_pairs(p)
    p.write_bytes("query,keyword,label\nperceuse,caf\xe9,3\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_labelled_pairs(p)


def test_beir_reader_header_blank_lines_and_bad_input(tmp_path):
    d = tmp_path / "b"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "drill"}\n\n{"_id": "d2", "title": "fan", "text": ""}\n')
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "drill"}\n{"_id": "q2", "text": "fan"}\n')
    qrels = d / "qrels" / "test.tsv"
    qrels.write_text("q1\td1\t1\nq2\td2\t2\n\n")  # no header, a trailing blank line
    rs = read_beir(d)
    assert rs.qrels == {"q1": {"d1": 1.0}, "q2": {"d2": 2.0}} and rs.corpus["d2"] == "fan"
    qrels.write_text("\nquery-id\tcorpus-id\tscore\nq1\td1\t1\n")  # the header after a blank line
    assert read_beir(d).qrels == {"q1": {"d1": 1.0}}
    for body, message in (("query-id\tcorpus-id\tscore\nq1\t0\td1\t1\n", r"test.tsv:2: want 3"),
                          ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: score must be a finite number"),
                          ):
        qrels.write_text(body)
        with pytest.raises(ValueError, match=message):
            read_beir(d)
    qrels.write_text("q9\td1\t1\n")
    with pytest.warns(UserWarning, match=r"1 judged query id\(s\) are not in queries.jsonl, e.g. \['q9'\]"), \
            pytest.raises(ValueError, match="no query in queries.jsonl"):
        read_beir(d)
    qrels.write_text("q1\td1\t1\nq1\tgone\t1\n")
    with pytest.warns(UserWarning, match="1 relevant corpus id.*'gone'"):
        assert read_beir(d).qrels["q1"] == {"d1": 1.0, "gone": 1.0}
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "drill"}\n{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: each line must be an object with \['_id', 'text'\]"):
        read_beir(d)
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "drill"\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:1: not JSON"):
        read_beir(d)


def test_labelled_pairs_reader_refuses_rows_it_would_misread(tmp_path):
    def read(name, body: bytes):
        (tmp_path / name).write_bytes(body)
        return read_labelled_pairs(tmp_path / name)

    head = b"query,keyword,label\n"
    for body, message in ((head + b"drill,bosch, 12,3\n", r"x.csv:2: 4 fields, the header has 3 \(an unquoted comma"),
                          (head + b"drill,bosch,nan\n", r"x.csv:2: label must be a finite number, got 'nan'"),
                          (head + b"drill,bosch,inf\n", "finite number"),
                          (head + b"drill,bosch,1_0\n", "finite number"),
                          (head + b"drill,bosch,1e400\n", "finite number"),
                          (head + b"drill,bosch,3\n  ,saw,1\n", r"x.csv:3: blank query"),
                          (head + b"drill,,2\n", r"x.csv:2: blank keyword"),
                          (b"query,keyword,label,label\ndrill,bosch,3,1\n", r"header names \['label'\] more than once"),
                          (head + b'drill,"bosch,3\n', "x.csv:2: unexpected end of data")):
        with pytest.raises(ValueError, match=message):
            read("x.csv", body)
    bad = head + b"drill,bosch,3\n" * 2000 + b"saw,caf\xe9,1\n"
    with pytest.raises(ValueError, match=f"x.csv:2002: not UTF-8 .* at byte {bad.index(b'caf') + 3} of the file"):
        read("x.csv", bad)
    # TSV has no quoting: an inch mark is text and does not swallow the rows after it
    got = read("x.tsv", b'query\tkeyword\tlabel\n"6 pipe\tpvc pipe\t3\ndrill\t"bosch" drill\t2\n3" pipe\tpvc\t1\n')
    assert got.queries == ['"6 pipe', "drill", '3" pipe'] and got.keywords[1] == '"bosch" drill'
    # what csv.writer (and this project's writer before) put in a TSV: a field with a quote, quoted whole
    assert read("x.tsv", b'query\tkeyword\tlabel\n"1/2"" pipe"\t"""6"""\t3\n').queries == ['1/2" pipe']
    assert read("x.tsv", b'query\tkeyword\tlabel\n"1/2"" pipe"\t"""6"""\t3\n').keywords == ['"6"']
    write_labelled_pairs(LabelledPairs(['"6"', '1/2" pipe'], ['"quoted"', "k"], [1.0, 2.0]), tmp_path / "q.tsv")
    assert read_labelled_pairs(tmp_path / "q.tsv").queries == ['"6"', '1/2" pipe']
    assert read("x.TSV", b"query\tkeyword\tlabel\ndrill\tbosch\t3\n").labels == [3.0]
    assert read("x.txt", b"query\tkeyword\tlabel\r\ndrill\tbosch\t3\r\n").keywords == ["bosch"]
    assert read("y.csv", b'query,keyword,label\r\n"fan, white","Hunter ""fan""\nceiling",2\r\n').keywords == [
        'Hunter "fan"\nceiling']
    with pytest.raises(ValueError, match=r"comma-separated, from the file's first line"):
        read("x.txt", b"query;keyword;label\n")
    with pytest.raises(ValueError, match="a tab or newline"):
        write_labelled_pairs(LabelledPairs(["a\tb"], ["k"], [1.0]), tmp_path / "w.tsv")


def test_beir_reader_refuses_documents_and_ids_it_would_misread(tmp_path):
    def beir(corpus=None, queries=None, qrels=b"q1\td1\t1\nq2\td2\t1\n", split="test"):
        d = tmp_path / "b"
        (d / "qrels").mkdir(parents=True, exist_ok=True)
        (d / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "drill"}\n{"_id": "d2", "text": "saw"}\n'
                                         if corpus is None else corpus)
        (d / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "drill"}\n{"_id": "q2", "text": "saw"}\n'
                                          if queries is None else queries)
        (d / "qrels" / "dev.tsv").write_bytes(qrels)
        return read_beir(d, split)

    assert beir(split="dev").qrels == {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}
    with pytest.raises(FileNotFoundError, match=r"no qrels/test.tsv; splits present: \['dev'\]"):
        beir()
    for kw, message in (
            (dict(corpus=b'{"_id": "d1", "text": "drill"}\n{"_id": "d2"}\n'),
             r"corpus.jsonl:2: each line must be an object with \['_id', 'text'\]"),
            (dict(corpus=b'{"_id": "d1", "text": 123}\n'), r"corpus.jsonl:1: \"text\" and \"title\" must be strings"),
            (dict(queries=b'{"_id": "q1", "text": null}\n'), r"queries.jsonl:1: \"text\" must be a non-blank string"),
            (dict(queries=b'{"_id": "q1", "text": "  "}\n'), "non-blank"),
            (dict(corpus=b'{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'),
             r"corpus.jsonl:2: \"_id\" 'd1' again \(first on line 1\)"),
            (dict(corpus=b'{"_id": 3.0, "text": "a"}\n'), r"\"_id\" must be a string or an integer, got 3.0"),
            (dict(corpus=b'{"_id": null, "text": "a"}\n'), "must be a string or an integer"),
            (dict(corpus=b""), r"corpus.jsonl: no documents"),
            (dict(qrels=b"q1\td1\t1\nq1\td1\t2\n"), r"dev.tsv:2: q1 d1 judged again with another score"),
            (dict(qrels=b"q1\td1\t1\nq2\td2\tnan\n"), r"dev.tsv:2: score must be a finite number, got 'nan'"),
            (dict(qrels=b"q1\td1\t1\nq1\td2\tinf\n"), "finite number"),
            (dict(corpus=b'{"_id": "d1", "text": "caf\xe9"}\n'), r"corpus.jsonl:1: not UTF-8 .* at byte 26 of")):
        with pytest.raises(ValueError, match=message):
            beir(split="dev", **kw)
    with pytest.warns(UserWarning, match="2 relevant corpus id"), \
            pytest.raises(ValueError, match="none of the relevant"):
        beir(corpus=b'{"_id": "d9", "text": "x"}\n', split="dev")
    # ids: integers and padded strings match the qrels' text; an empty document is counted, not dropped silently
    with pytest.warns(UserWarning, match=r"1 document\(s\) have neither title nor text, e.g. \['d3'\]"):
        got = beir(corpus=b'{"_id": "d1 ", "text": "drill"}\n{"_id": 2, "text": "saw"}\n{"_id": "d3", "text": ""}\n',
                   qrels=b"q1\td1\t1\nq2\t2\t1\nq2\t2\t1\n", split="dev")
    assert got.qrels == {"q1": {"d1": 1.0}, "q2": {"2": 1.0}}
    assert (got.corpus["d1"], got.corpus["2"]) == ("drill", "saw")


def test_dataset_specs_name_what_is_wrong(tmp_path):
    from training.evaluate import load_dataset, load_model
    for spec in ("bilstm", "twin:", "teacher"):
        with pytest.raises(ValueError, match=r"needs a checkpoint directory: \w+:DIR"):
            load_model(spec, None, None)
    with pytest.raises(ValueError, match=r"unknown split 'bogus' \(train, dev, test\)"):
        load_dataset("homedepot:bogus")
    with pytest.raises(ValueError, match="pairs:FILE needs a file"):
        load_dataset("pairs:")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_dataset(f"pairs:{tmp_path}")
    with pytest.raises(ValueError, match="beir:DIR needs a directory"):
        load_dataset("beir:")
    d = tmp_path / "b"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "drill"}\n')
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "drill"}\n')
    (d / "qrels" / "dev.tsv").write_text("q1\td1\t1\n")
    assert load_dataset(f"beir:{d}:dev")[1].qrels == {"q1": {"d1": 1.0}}
    with pytest.raises(FileNotFoundError,
                       match=rf"no qrels/test.tsv; splits present: \['dev'\] \(pick one with beir:{d}:SPLIT\)"):
        load_dataset(f"beir:{d}")


def test_perturbed_queries_never_land_on_held_out_queries():
    """Dropping or swapping a word can make a train query into a held-out one; such rows are dropped, and
    only those: a perturbed query that is no split's query stays, whatever split its hash would pick."""
    from training.data import Pair, split_of
    from training.distill_data import perturbed_rows
    query = "gates fence"
    train = [Pair(query, str(i), "title", 3.0) for i in range(400)]
    leaked = sum(perturb(query, random.Random(s))[0] == "gates" for s in range(400))
    assert leaked > 0  # the perturbations do make the held-out query from this train one
    rows = perturbed_rows(train, 1.0, random.Random(0), held_out={"gates"})
    assert rows and "gates" not in {q for q, *_ in rows}
    kept = {q for q, *_ in rows}
    assert any(split_of(q) != "train" for q in kept)  # e.g. misspellings no split holds: kept
    assert {r[-1] for r in rows} == {"perturbed"} and all(r[2] == 3.0 for r in rows)
    unfiltered = perturbed_rows(train, 1.0, random.Random(0), held_out=set())
    assert len(unfiltered) - len(rows) == sum(q == "gates" for q, *_ in unfiltered) > 0


def test_perturbations_change_the_query_deterministically():
    q = "cordless drill battery"
    assert token_dropout(q, random.Random(0)) in {"drill battery", "cordless battery", "cordless drill"}
    assert sorted(token_swap(q, random.Random(0)).split()) == sorted(q.split())
    m = misspell(q, random.Random(1))
    assert m != q and abs(len(m) - len(q)) <= 1
    assert perturb(q, random.Random(3)) == perturb(q, random.Random(3))
    assert perturb("x", random.Random(0)) == ("x", "none")


def test_a_title_query_is_a_span_of_the_title_that_ends_on_a_word():
    from training.augment import title_query
    title = "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit with 2 Batteries"
    for seed in range(50):
        q = title_query(title, random.Random(seed))
        assert q and q in title.lower() and 1 <= len(q.split()) <= 4
        assert q.split()[0] not in {"with", "x", "in."} and q.split()[-1].isalpha()
    assert title_query("3/4 in. x 50 ft.", random.Random(0)) == ""  # nothing but measures


def test_a_mixed_title_query_joins_words_of_the_title_in_order_and_keeps_a_numbers_unit():
    from training.augment import mixed_title_query
    title = "RIDGID 10 in. Portable Tile Saw with Laser"
    words = "ridgid 10 in. portable tile saw laser".split()
    seen = set()
    for seed in range(200):
        q = mixed_title_query(title, random.Random(seed))
        assert q == mixed_title_query(title, random.Random(seed))  # deterministic in the generator
        qw = q.split()
        assert in_order(qw, words) and qw[-1] in {"portable", "tile", "saw", "laser"} and "with" not in qw
        assert 2 <= len([w for w in qw if w != "in."]) <= 5
        assert ("10" in qw) == ("in." in qw)  # a number keeps its unit, and a unit never stands alone
        seen.add(q)
    assert "ridgid 10 in. portable" in seen and len(seen) > 20  # brand, size and type together, and variety
    assert mixed_title_query("3/4 in. x 50 ft.", random.Random(0)) == ""  # nothing but measures
    assert mixed_title_query("Drill", random.Random(0)) == ""  # no word after the first to end on


def test_synthetic_rows_make_train_queries_of_either_style_with_their_title_and_neighbours():
    from training.augment import BM25Index
    from training.data import split_of
    from training.distill_data import synthetic_rows
    titles = ["DEWALT 20-Volt MAX Cordless Drill/Driver Kit", "RIDGID 10 in. Portable Tile Saw with Laser",
              "Hampton Bay 52 in. Oil Rubbed Bronze Ceiling Fan", "Everbilt 1/2 in. Galvanized Anchor Bolt",
              "Milwaukee M18 Cordless Impact Driver Kit", "Sharp Carousel 1.1 cu. ft. Countertop Microwave Oven"] * 3
    corpus = {f"k{i}": f"{t} {i}" for i, t in enumerate(titles)}
    bm25 = BM25Index(list(corpus), list(corpus.values()))
    for style in ("span", "mixed"):
        rows = synthetic_rows(corpus, bm25, len(corpus), 2, random.Random(1), style)
        assert rows == synthetic_rows(corpus, bm25, len(corpus), 2, random.Random(1), style)
        by_query: dict[str, list[str]] = {}
        for q, kid, label, source in rows:
            assert label is None and source == "synthetic" and kid in corpus
            by_query.setdefault(q, []).append(kid)
        assert by_query and all(split_of(q) == "train" and len(kids) == 4 for q, kids in by_query.items())
        for q, kids in by_query.items():  # made from the first title of its rows
            assert in_order(q.split(), title_words(corpus[kids[0]])), (style, q)
    with pytest.raises(KeyError):
        synthetic_rows(corpus, bm25, 3, 2, random.Random(1), "spans")


def test_bilstm_interaction_sees_the_query_and_keyword_pieces_and_exact_matches():
    from training.bilstm import CLS_ID, SEP_ID, BiLSTMConfig, BiLSTMStudent, exact_match, pair_segments
    from training.pretrained import minilm_dir
    from training.tokenize import PairTokenizer
    tok = PairTokenizer(minilm_dir() / "tokenizer.json", 32)
    assert (tok._tok.token_to_id("[CLS]"), tok._tok.token_to_id("[SEP]")) == (CLS_ID, SEP_ID)
    queries, keywords = ["cordless drill", "cordless drill", ""], ["dewalt cordless drill kit", "ceiling fan", "fan"]
    ids, mask = map(torch.from_numpy, tok(queries, keywords))
    qm, km = pair_segments(ids, mask)
    pieces = len(tok._tok.encode("cordless drill", add_special_tokens=False).ids)
    assert qm.sum(1).tolist() == [pieces, pieces, 0]  # the empty query has none
    n = mask.sum(1).tolist()
    assert km.sum(1).tolist() == [n[0] - pieces - 3, n[1] - pieces - 3, 1]  # less [CLS], 2 [SEP], the query
    assert not (qm & km).any() and not (qm | km)[mask == 0].any()
    torch.manual_seed(0)
    e = torch.nn.Embedding(30522, 16)(ids)  # any embeddings: a piece always matches itself exactly
    mean, low = exact_match(e, qm, km)
    assert mean[0].item() == pytest.approx(1.0) and low[0].item() == pytest.approx(1.0)
    assert low[1].item() < 0.9 and mean[2].item() == 0.0 and low[2].item() == 1.0
    out = BiLSTMStudent(BiLSTMConfig(interaction=True)).eval()(ids, mask)
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_packed_bilstm_reads_only_real_tokens_so_padding_does_not_move_a_score():
    from training.bilstm import BiLSTMConfig, BiLSTMStudent
    from training.pretrained import minilm_dir
    from training.tokenize import PairTokenizer
    tok = PairTokenizer(minilm_dir() / "tokenizer.json", 48)
    pairs = [("drill", "dewalt cordless drill kit with two batteries and a hard case"), ("fan", "ceiling fan")]
    ids, mask = map(torch.from_numpy, tok(*zip(*pairs)))
    assert mask[1].sum() < mask.shape[1]  # the short pair is padded in the batch
    torch.manual_seed(0)
    for interaction in (False, True):
        packed = BiLSTMStudent(BiLSTMConfig(interaction=interaction, packed=True)).eval()
        with torch.no_grad():
            batch = packed(ids, mask)
            alone = torch.stack([packed(*map(torch.from_numpy, tok([q], [k]))) for q, k in pairs]).squeeze(1)
            torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
            # the same states as torch's LSTM over a packed sequence
            x = torch.tanh(packed.proj(packed.embed(ids)))
            seq = torch.nn.utils.rnn.pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
            ref, _ = torch.nn.utils.rnn.pad_packed_sequence(packed.lstm(seq)[0], batch_first=True,
                                                            total_length=ids.shape[1])
            torch.testing.assert_close(packed._packed_lstm(x, mask)[mask.bool()], ref[mask.bool()], atol=1e-6, rtol=0)
    padded = BiLSTMStudent(BiLSTMConfig(interaction=True, packed=False)).eval()  # checkpoints from before:
    padded.load_state_dict(packed.state_dict())                                   # the padding leaks in
    with torch.no_grad():
        assert (padded(ids, mask)[1] - padded(*map(torch.from_numpy, tok(["fan"], ["ceiling fan"])))[0]).abs() > 1e-6



def test_bilstm_inference_form_scores_as_the_student_and_is_a_snapshot():
    from training.bilstm import BiLSTMConfig, BiLSTMStudent
    queries = ["cordless drill", "", "milwaukee m18 fuel hammer drill driver kit with two batteries", "fan"]
    keywords = ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", "Flexzilla 50 ft. Garden Hose",
                "Hampton Bay 52 in. Ceiling Fan with Light Kit " * 8, "ceiling fan"]  # cut to 48 pieces
    torch.manual_seed(0)
    for interaction in (False, True):
        for packed in (False, True):
            student = BiLSTMStudent(BiLSTMConfig(interaction=interaction, packed=packed)).eval()
            ids, mask = map(torch.from_numpy, student.tokenizer()(queries, keywords))
            scorer = student.inference()
            with torch.no_grad():
                expected = student(ids, mask)
                torch.testing.assert_close(scorer(ids, mask), expected, atol=1e-5, rtol=0)
                for row in range(len(queries)):  # alone, at its own width
                    one = student.tokenizer()([queries[row]], [keywords[row]])
                    torch.testing.assert_close(scorer(*map(torch.from_numpy, one)), student(*map(torch.from_numpy, one)),
                                               atol=1e-5, rtol=0)
            np.testing.assert_allclose(scorer.score(queries, keywords, batch_size=3),  # unpacked: the
                                       student.score(queries, keywords, batch_size=3), atol=1e-5)  # batch matters
            with torch.no_grad():  # training the student on does not move the snapshot
                student.head[-1].bias.add_(1.0)
                student.proj.weight.mul_(2.0)
                torch.testing.assert_close(scorer(ids, mask), expected, atol=1e-5, rtol=0)
                assert (student(ids, mask) - expected).abs().max() > 0.5


def test_bilstm_inference_form_traced_forms_each_batchs_own_query_rows():
    """The inference form forms only the rows up to the batch's last query piece (query_span); a trace
    keeps that span data-dependent, so a batch with longer queries than the example, or none at all, scores
    as the student does."""
    from training.bilstm import BiLSTMConfig, BiLSTMStudent, pair_segments, query_span
    torch.manual_seed(0)
    student = BiLSTMStudent(BiLSTMConfig(interaction=True, packed=True)).eval()
    tok = student.tokenizer()
    short = tuple(map(torch.from_numpy, tok(["fan", "hose"], ["Hampton Bay 52 in. Ceiling Fan", "garden hose 50 ft"])))
    long = tuple(map(torch.from_numpy, tok(["milwaukee m18 fuel hammer drill driver kit with two batteries", "fan"],
                                           ["drill", "box fan"])))
    empty = tuple(map(torch.from_numpy, tok(["", ""], ["box fan", "DEWALT 20-Volt MAX Cordless Drill"])))
    q_long = pair_segments(*long)[0]
    assert query_span(pair_segments(*short)[0]) == 2 < query_span(q_long) == int(q_long.sum(1).max()) + 1 > 8
    assert query_span(pair_segments(*empty)[0]) == 1
    with torch.no_grad():
        traced = torch.jit.trace(student.inference(), short, check_trace=False)
        for ids, mask in (short, long, empty):
            torch.testing.assert_close(traced(ids, mask), student(ids, mask), atol=1e-5, rtol=0)


def test_bilstm_inference_form_in_bf16_runs_its_lstm_in_bf16_and_scores_close_to_fp32():
    from training.bilstm import BiLSTMConfig, BiLSTMStudent
    queries = ["cordless drill", "", "milwaukee m18 fuel hammer drill driver kit with two batteries", "fan"]
    keywords = ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", "Flexzilla 50 ft. Garden Hose",
                "Hampton Bay 52 in. Ceiling Fan with Light Kit " * 8, "ceiling fan"]
    torch.manual_seed(0)
    for interaction in (False, True):
        for packed in (False, True):
            student = BiLSTMStudent(BiLSTMConfig(interaction=interaction, packed=packed)).eval()
            ids, mask = map(torch.from_numpy, student.tokenizer()(queries, keywords))
            fp32, bf16 = student.inference(), student.inference("bf16")
            assert bf16.projected.dtype == torch.bfloat16 and bf16.lstm.weight_hh_l0.dtype == torch.bfloat16
            assert fp32.projected.dtype == torch.float32 and bf16.head[0].weight.dtype == torch.float32
            with torch.no_grad():
                got, want = bf16(ids, mask), fp32(ids, mask)
            assert got.dtype == torch.float32 and 0 < (got - want).abs().max() < 0.05
            assert bf16.score(queries, keywords).dtype == np.float32
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        student.inference("fp16")

def test_bucketed_batches_cover_each_item_once_and_group_lengths():
    lengths = list(range(1000))
    batches = bucketed_batches(lengths, 10, seed=1, bucket=20)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000)) and batches == bucketed_batches(lengths, 10, seed=1, bucket=20)
    assert np.mean([max(b) - min(b) for b in batches]) < 200  # vs ~800 for random batches


def _toy_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return x, y


def _toy_loss(model, batch, x, y):
    return ((model(x[batch]).squeeze(-1) - y[batch]) ** 2).mean()


def _toy_run(out, crash_at=None, resume=True, epochs=6, save_every=5):
    """(model, state) of the loop on the toy problem, 8 steps an epoch; KeyboardInterrupt during step
    `crash_at`, as a killed run would stop."""
    x, y = _toy_problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        if crash_at and calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return _toy_loss(m, batch, x, y)

    cfg = LoopConfig(out=str(out), epochs=epochs, lr=0.3, eval_every=0, save_every=save_every, threads=1,
                     resume=resume)
    state = train_loop(model, cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e), loss, None, lambda m: None,
                       desc="toy")
    return model, state


def test_loop_learns_and_a_crashed_run_resumes_to_the_same_weights(tmp_path):
    x, y = _toy_problem()
    initial = _toy_loss(torch.nn.Linear(4, 1), torch.arange(64), x, y).item()
    straight, state = _toy_run(tmp_path / "a")
    assert state["step"] == 48
    assert _toy_loss(straight, torch.arange(64), x, y).item() < 0.05 * initial
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", crash_at=13)  # checkpoint at step 10, crash during step 13
    resumed, state_b = _toy_run(tmp_path / "b")
    assert state_b["step"] == 48
    torch.testing.assert_close(resumed.weight, straight.weight)
    torch.testing.assert_close(resumed.bias, straight.bias)


def _resume_run(out, crash_at=None, resume=True) -> dict:
    """One epoch of 8 steps, a checkpoint every 3: the toy run the resume tests damage."""
    return _toy_run(out, crash_at, resume, epochs=1, save_every=3)[1]


def _crashed(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _resume_run(tmp_path, crash_at=5)  # checkpoint at step 3
    return tmp_path / "checkpoint"


def test_a_damaged_checkpoint_is_refused_not_trained_over(tmp_path):
    ckpt = _crashed(tmp_path)
    (ckpt / "state.json").unlink()
    with pytest.raises(ArtifactError, match="a checkpoint without state.json .* pass --no-resume"):
        _resume_run(tmp_path)
    assert _resume_run(tmp_path, resume=False)["step"] == 8  # the way out it names


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing at step 3"),
    (lambda c: save_file({k: (torch.zeros(2, 2) if k == "0.exp_avg" else v) for k, v in
                          load_file(str(c / "optimizer.safetensors")).items()}, str(c / "optimizer.safetensors")),
     r"parameter 0's moments are \(2, 2\), the parameter \(1, 4\)"),
    (lambda c: save_file({k: v for k, v in load_file(str(c / "optimizer.safetensors")).items()
                          if not k.endswith("exp_avg_sq")}, str(c / "optimizer.safetensors")),
     r"lacks \['exp_avg_sq'\]"),
    (lambda c: (c / "state.json").write_text(json.dumps({k: v for k, v in json.loads(
        (c / "state.json").read_text()).items() if k != "step"})), "state.json lacks a step"),
    (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors: not a readable safetensors"),
    (lambda c: _edit_state(c, lambda s: s["torch_rng_by_rank"].append([300] * len(s["torch_rng_by_rank"][0]))),
     "lacks .* torch_rng_by_rank"),  # a damaged entry of another rank stops this one too
    (lambda c: _edit_state(c, lambda s: s.pop("torch_rng_by_rank")), "lacks .* torch_rng_by_rank"),
])
def test_a_resume_refuses_damaged_state_by_name(tmp_path, damage, message):
    ckpt = _crashed(tmp_path)
    damage(ckpt)
    with pytest.raises(ArtifactError, match=message):
        _resume_run(tmp_path)


def _edit_state(ckpt, change):
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def test_a_checkpoint_from_before_every_ranks_rng_was_kept_still_resumes(tmp_path):
    straight, _ = _toy_run(tmp_path / "straight", epochs=1, save_every=3)
    ckpt = _crashed(tmp_path)
    _edit_state(ckpt, lambda s: s.update(torch_rng=s.pop("torch_rng_by_rank")[0]))  # the old layout
    resumed, state = _toy_run(tmp_path, epochs=1, save_every=3)
    assert state["step"] == 8
    torch.testing.assert_close(resumed.weight, straight.weight)


def test_a_crash_between_the_checkpoint_renames_resumes_from_the_previous_one(tmp_path, capsys):
    ckpt = _crashed(tmp_path)
    ckpt.rename(ckpt.with_name("checkpoint.old"))  # the instant between replace_dir's two renames
    capsys.readouterr()
    assert _resume_run(tmp_path)["step"] == 8
    assert "resuming at step 3 from" in capsys.readouterr().out and (tmp_path / "checkpoint" / "state.json").is_file()


def test_bf16_hardware_is_read_off_the_cpu_flags():
    from training.precision import bf16_matmul_flags
    head = "processor\t: 0\nmodel name\t: CPU\nflags\t\t: fpu sse avx2 avx512f "
    assert bf16_matmul_flags(head + "avx512_bf16 avx512_vnni\n")  # AMD Zen 4: no AMX, bf16 dot products
    assert bf16_matmul_flags(head + "amx_bf16 amx_tile amx_int8\n")  # Xeon Sapphire Rapids
    assert not bf16_matmul_flags(head + "avx512_vnni\n")  # Cascade Lake: bf16 GEMMs 2x slower than fp32
    assert not bf16_matmul_flags(head.replace("flags", "bugs") + "avx512_bf16\n")  # only the flags line counts
    assert not bf16_matmul_flags("")
    from training.precision import flags_of
    assert "amx_bf16" in flags_of(head + "amx_bf16 amx_tile\n")  # training.pipeline's profile choice reads it
    assert "amx_bf16" not in flags_of(head + "avx512_bf16\n") and flags_of("") == frozenset()


def test_precision_resolves_auto_by_the_cpu_and_refuses_unknown_names(monkeypatch):
    from training import precision
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.resolve("fp32") == "fp32" and precision.resolve("bf16") == "bf16"
    assert precision.resolve("auto") == ("bf16" if precision.cpu_has_bf16_matmul() else "fp32")
    monkeypatch.setenv(precision.ENV, "fp32")
    assert precision.resolve(None) == "fp32" and precision.resolve("bf16") == "bf16"  # a flag beats the variable
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve("fp16")
    with precision.autocast("bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with precision.autocast("fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_a_bf16_run_learns_and_keeps_fp32_weights(tmp_path):
    x, y = _toy_problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    initial = _toy_loss(model, torch.arange(64), x, y).item()
    cfg = LoopConfig(out=str(tmp_path), epochs=6, lr=0.3, eval_every=2, save_every=0, threads=1, precision="bf16")
    seen = {"step": set(), "eval": set()}

    def loss(m, batch):
        seen["step"].add(m(x[batch]).dtype)
        return _toy_loss(m, batch, x, y)

    better = iter(range(100))

    def evaluate(m):
        seen["eval"].add(m(x).dtype)
        return next(better)  # always improving: no early stop

    train_loop(model, cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e), loss, evaluate, lambda m: None, desc="toy")
    # the forward passes ran in bf16, the dev evaluation in fp32 (as served), the weights stay fp32
    assert seen == {"step": {torch.bfloat16}, "eval": {torch.float32}}
    assert model.weight.dtype == torch.float32
    assert _toy_loss(model, torch.arange(64), x, y).item() < 0.05 * initial


def test_early_stopping_keeps_the_best_evaluation(tmp_path):
    x, y = _toy_problem()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.1, 0.9])
    saved = []
    cfg = LoopConfig(out=str(tmp_path), epochs=10, lr=0.01, eval_every=2, patience=3, save_every=0, threads=1)
    state = train_loop(torch.nn.Linear(4, 1), cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e),
                       lambda m, b: _toy_loss(m, b, x, y), lambda m: next(scores), lambda m: saved.append(1))
    assert state["stopped_early"] and state["best"] == 0.7 and state["step"] == 10 and len(saved) == 2


def test_a_run_that_stopped_early_stays_stopped_when_rerun(tmp_path):
    x, y = _toy_problem()
    cfg = LoopConfig(out=str(tmp_path), epochs=10, lr=0.01, eval_every=2, patience=1, save_every=0, threads=1)
    run = lambda: train_loop(torch.nn.Linear(4, 1), cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e),  # noqa: E731
                             lambda m, b: _toy_loss(m, b, x, y), lambda m: 0.5, lambda m: None)
    first = run()
    assert first["stopped_early"] and first["step"] == 4  # 0.5, then no better: patience 1
    assert run()["step"] == 4  # the rerun resumes the stopped run and trains no further


def test_a_resume_with_other_settings_is_refused_by_name(tmp_path):
    _crashed(tmp_path)
    x, y = _toy_problem()
    cfg = LoopConfig(out=str(tmp_path), epochs=1, lr=0.01, eval_every=0, save_every=3, threads=1)  # lr 0.3 there
    with pytest.raises(ArtifactError, match=r"other settings \(lr 0.3 there, 0.01 now\).*--no-resume"):
        train_loop(torch.nn.Linear(4, 1), cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e),
                   lambda m, b: _toy_loss(m, b, x, y), None, lambda m: None, desc="toy")
    with pytest.raises(ArtifactError, match=r"steps_per_epoch 8 there, 4 now"):  # other data or batch size
        train_loop(torch.nn.Linear(4, 1), dataclasses.replace(cfg, lr=0.3),
                   lambda e: bucketed_batches([0] * 64, 16, seed=e), lambda m, b: _toy_loss(m, b, x, y), None,
                   lambda m: None, desc="toy")
    assert _resume_run(tmp_path)["step"] == 8  # its own settings resume


def test_a_dev_metric_that_is_not_a_number_stops_the_run_by_name(tmp_path):
    from training.data import DataError
    x, y = _toy_problem()
    cfg = LoopConfig(out=str(tmp_path), epochs=1, lr=0.01, eval_every=2, save_every=0, threads=1)
    with pytest.raises(DataError, match="dev metric at step 2 is nan"):
        train_loop(torch.nn.Linear(4, 1), cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e),
                   lambda m, b: _toy_loss(m, b, x, y), lambda m: float("nan"), lambda m: None, desc="toy")


def test_epochs_with_fewer_batches_than_the_first_run_their_full_count(tmp_path):
    """Grouped batches vary by a few from epoch to epoch; an epoch shorter than epoch 0 wraps round
    instead of indexing past its end (an IndexError after a whole epoch of training, before)."""
    x, y = _toy_problem()
    seen = []
    cfg = LoopConfig(out=str(tmp_path), epochs=3, lr=0.01, eval_every=0, save_every=0, threads=1)
    sizes = {0: 8, 1: 6, 2: 10}  # batches per epoch

    def batches(e):
        return [[(e * 16 + i) % 64] for i in range(sizes[e])]

    def loss(m, b):
        seen.append(b[0])
        return _toy_loss(m, b, x, y)
    state = train_loop(torch.nn.Linear(4, 1), cfg, batches, loss, None, lambda m: None, desc="toy")
    assert state["step"] == 24 and seen[8:16] == [16, 17, 18, 19, 20, 21, 16, 17]


def test_a_shortened_schedule_keeps_the_rate_continuous_and_ends_at_zero():
    from training.loop import fit_schedule, linear_schedule, lr_factor
    plan = linear_schedule(1000, 0.06)
    assert [round(lr_factor(plan, s), 4) for s in (0, 59, 60, 530, 999)] == [0.0167, 1.0, 1.0, 0.5, 0.0011]
    cut = fit_schedule(plan, 300, 500)   # past the warm-up: the decay goes on from where it was
    assert lr_factor(cut, 300) == pytest.approx(lr_factor(plan, 300))
    assert lr_factor(cut, 400) == pytest.approx(lr_factor(plan, 300) / 2)
    assert lr_factor(cut, 500) == 0.0
    with pytest.raises(ValueError, match="warm-up"):
        fit_schedule(plan, 20, 200)


def test_a_minute_capped_run_anneals_to_zero_by_its_cap(tmp_path, monkeypatch):
    """Each step takes one (simulated) second: a 10-minute cap on a 2,000-step run must end near
    step 600 with the learning rate annealed, not cut at the cap with the rate still high."""
    import training.loop as loop
    from training.loop import lr_factor
    x, y = _toy_problem()
    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock["t"])

    def loss(m, batch):
        clock["t"] += 1.0
        return _toy_loss(m, batch, x, y)

    cfg = LoopConfig(out=str(tmp_path), epochs=250, lr=0.01, eval_every=0, save_every=0, max_minutes=10, threads=1)
    state = train_loop(torch.nn.Linear(4, 1), cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e), loss, None,
                       lambda m: None, desc="toy")
    assert 590 <= state["step"] <= 600 and state["schedule"]["total"] == state["step"]
    assert lr_factor(state["schedule"], state["step"] - 1) < 0.01


def test_a_minute_capped_run_that_starts_slow_lengthens_its_schedule_again(tmp_path, monkeypatch):
    """The first 100 steps take 2 (simulated) seconds, as with another job on the cores, the rest 0.5: the
    early estimate shortens the schedule to 400 steps, which would end the run at 350 of its 600 seconds.
    Refitted as the steps speed up, it uses its 10 minutes (100 + 800 steps at most), annealed, within its plan."""
    import training.loop as loop
    from training.loop import lr_factor
    x, y = _toy_problem()
    clock = {"t": 0.0, "steps": 0}
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock["t"])
    totals = []

    def loss(m, batch):
        clock["steps"] += 1
        clock["t"] += 2.0 if clock["steps"] <= 100 else 0.5
        return _toy_loss(m, batch, x, y)

    def batches(e):
        return bucketed_batches([0] * 64, 8, seed=e)
    cfg = LoopConfig(out=str(tmp_path / "a"), epochs=250, lr=0.01, eval_every=0, save_every=0, max_minutes=10,
                     threads=1)
    real_fit = loop.fit_schedule
    monkeypatch.setattr(loop, "fit_schedule", lambda *a: totals.append(a[2]) or real_fit(*a))
    state = train_loop(torch.nn.Linear(4, 1), cfg, batches, loss, None, lambda m: None, desc="toy")
    assert totals[0] == 400 and max(totals) > 800  # shortened first, then lengthened
    assert 850 <= state["step"] <= 900 and state["schedule"]["total"] == state["step"]
    assert lr_factor(state["schedule"], state["step"] - 1) < 0.01
    # never past the plan: 2 epochs of 8 batches lengthen no further than 16 steps
    clock.update(t=0.0, steps=0)
    cfg = LoopConfig(out=str(tmp_path / "b"), epochs=2, lr=0.01, eval_every=0, save_every=0, max_minutes=10,
                     threads=1, warmup_frac=0.5)
    assert train_loop(torch.nn.Linear(4, 1), cfg, batches, loss, None, lambda m: None, desc="toy")["step"] == 16


def test_loop_runs_under_torchrun_with_two_processes(tmp_path, torchrun):
    script = tmp_path / "ddp_toy.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from training.loop import LoopConfig, bucketed_batches, finish_distributed, train_loop
        torch.manual_seed(0)
        x = torch.randn(64, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        model = torch.nn.Linear(4, 1)
        cfg = LoopConfig(out={str(tmp_path / 'out')!r}, epochs=4, lr=0.05, eval_every=0, save_every=0, threads=2)
        state = train_loop(model, cfg, lambda e: bucketed_batches([0] * 64, 8, seed=e),
                           lambda m, b: ((m(x[b]).squeeze(-1) - y[b]) ** 2).mean(), None, lambda m: None)
        w = model.weight.detach().clone(); other = w.clone(); dist.broadcast(other, 0)
        assert torch.equal(w, other), "replicas diverged"
        print(f"rank {{dist.get_rank()}} steps {{state['step']}} loss {{state['final_loss']:.4f}}", flush=True)
        finish_distributed()
    """))
    stdout = torchrun(script)
    assert "rank 0 steps 16" in stdout and "rank 1 steps 16" in stdout  # 8 batches/epoch / 2 ranks x 4


def test_a_two_process_run_with_dropout_resumes_to_the_same_weights(tmp_path, torchrun):
    """Each rank draws its own dropout masks (its batches differ in size here, as length buckets do), so
    a checkpoint keeps every rank's RNG state: a crashed two-process run resumes to the weights of one
    that ran straight through (with rank 0's state on both ranks it ended elsewhere)."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from training.loop import LoopConfig, finish_distributed, train_loop
        torch.manual_seed(0)
        x = torch.randn(96, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        batches = [list(range(i, i + (8 if n % 2 == 0 else 4))) for n, i in enumerate(range(0, 96, 12))] * 2
        class Crash(Exception):
            pass
        def run(out, crash_at=None):
            torch.manual_seed(1)
            model = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(4, 1))
            calls = {{"n": 0}}
            def loss(m, b):
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise Crash()
                return ((m(x[b]).squeeze(-1) - y[b]) ** 2).mean()
            cfg = LoopConfig(out=out, epochs=3, lr=0.05, eval_every=0, save_every=5, threads=2)
            train_loop(model, cfg, lambda e: batches, loss, None, lambda m: None)
            return model
        straight = run({str(tmp_path / 'a')!r})
        try:
            run({str(tmp_path / 'b')!r}, crash_at=13)
        except Crash:
            pass
        resumed = run({str(tmp_path / 'b')!r})
        w = resumed[1].weight.detach()
        assert torch.equal(w, straight[1].weight.detach()), f"rank {{dist.get_rank()}}: {{w}} vs {{straight[1].weight}}"
        print(f"rank {{dist.get_rank()}} resumed equal", flush=True)
        finish_distributed()
    """))
    stdout = torchrun(script)
    assert "rank 0 resumed equal" in stdout and "rank 1 resumed equal" in stdout


def test_bm25_scores_and_a_stopword_only_query():
    from training.augment import BM25Index
    bm25 = BM25Index(["d", "f"], ["DEWALT cordless drill", "Hampton Bay ceiling fan"])
    assert bm25.top_k(["cordless drill"], 1) == [["d"]]
    s = bm25.scores("drill")
    assert s[0] > 0 and s[1] == 0
    assert (bm25.scores("the of and") == 0).all()


def test_grouped_batches_keep_each_querys_rows_together():
    from training.distill import grouped_batches
    keys = [f"q{i % 100}" for i in range(400)] + ["big"] * 20   # 100 queries of 4 rows, one of 20
    batches = grouped_batches(keys, 32, 8, seed=3)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and len(flat) > len(keys) - 32  # each row once; a last partial batch left
    assert all(32 <= len(b) < 32 + 8 for b in batches)
    where = {}
    for n, b in enumerate(batches):
        for pos, i in enumerate(b):
            where.setdefault(keys[i], []).append((n, pos))
    for key, places in where.items():
        if key != "big":  # a 4-row query is one group: one batch, adjacent rows
            assert len({n for n, _ in places}) == 1 and max(p for _, p in places) - min(p for _, p in places) == 3
    big = sorted(sum(1 for n, _ in where.get("big", []) if n == m) for m in {n for n, _ in where.get("big", [])})
    assert all(c % 4 == 0 and c <= 20 for c in big)  # cut into groups of 8, 8 and 4
    assert batches == grouped_batches(keys, 32, 8, seed=3) and batches != grouped_batches(keys, 32, 8, seed=4)


def test_listwise_loss_is_minimal_where_the_student_orders_like_the_teacher():
    from training.distill import listwise_loss
    keys = ["a", "a", "a", "b", "b", "c"]                # "c" alone: no list, no term
    teacher = torch.tensor([2.0, 0.0, -1.0, 1.0, -1.0, 5.0])
    agree = torch.sigmoid(teacher + 0.3)                 # same logits up to a shift: the minimum
    swapped = torch.sigmoid(torch.tensor([-1.0, 0.0, 2.0, -1.0, 1.0, 5.0]))
    s = agree.clone().requires_grad_()
    best = listwise_loss(keys, teacher, [s])
    best.backward()
    assert s.grad.abs().max() < 1e-5
    assert listwise_loss(keys, teacher, [swapped]) > best + 0.5
    assert listwise_loss(keys, teacher, [agree, swapped]) > best  # crossings add up
    assert listwise_loss(["a", "b", "c"], teacher[:3], [agree[:3]]) == 0  # no query with two rows


def test_infonce_queue_adds_masked_negatives_first_in_first_out():
    import torch.nn.functional as F
    from training.distill import NegativeQueue, infonce_loss
    g = torch.Generator().manual_seed(0)
    qv, kv = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    qkeys, kids = ["a", "b", "c", "a"], ["1", "2", "3", "4"]
    pos = torch.tensor([True, True, True, False])
    # no queue: cross-entropy of each positive row over the batch, the other row of its query masked out
    logits = 40 * F.normalize(qv, dim=-1) @ F.normalize(kv, dim=-1).T
    logits[0, 3] = float("-inf")
    expect = F.cross_entropy(logits[:3], torch.arange(3))
    assert torch.allclose(infonce_loss(qv, kv, qkeys, kids, pos, 40.0), expect)
    queue = NegativeQueue(6)
    assert torch.allclose(infonce_loss(qv, kv, qkeys, kids, pos, 40.0, queue), expect)  # empty before the batch
    assert len(queue) == 4 and queue.keyword_ids == kids and not queue.vectors.requires_grad
    # the queued rows are now negatives, except those of the row's own query or keyword
    with_queue = infonce_loss(qv, kv, ["a", "x", "c", "d"], ["1", "5", "6", "7"], pos, 40.0, queue)
    plain = 40 * F.normalize(qv, dim=-1) @ F.normalize(kv, dim=-1).T  # no two rows of a query or keyword now
    full = torch.cat([plain, plain], 1)  # the queue holds the first call's keyword vectors
    full[0, 4] = full[0, 7] = full[2, 6] = float("-inf")  # queued ("a", "1"), ("a", "4"), ("c", "3")
    assert torch.allclose(with_queue, F.cross_entropy(full[:3], torch.arange(3)))
    assert with_queue > expect  # more negatives, a harder task
    assert len(queue) == 6 and queue.keyword_ids == ["3", "4", "1", "5", "6", "7"]  # the oldest two dropped
    assert infonce_loss(qv, kv, qkeys, kids, torch.tensor([True, False, False, False]), 40.0, queue) == 0
    assert len(queue) == 6 and queue.keyword_ids == ["6", "7"] + kids  # pushed even when the term is 0


def _tiny_beir(d):
    """Four documents, two of them with the same text; q1 is judged relevant to the second copy."""
    (d / "qrels").mkdir(parents=True)
    docs = {"d1": "cordless drill", "d2": "ceiling fan", "d3": "garden hose", "d4": "cordless drill"}
    (d / "corpus.jsonl").write_text("".join(f'{{"_id": "{i}", "text": "{t}"}}\n' for i, t in docs.items()))
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "cordless drill"}\n{"_id": "q2", "text": "fan"}\n')
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td4\t1\nq2\td2\t1\n")
    return d


def test_evaluate_on_a_small_beir_corpus_with_duplicate_texts(tmp_path):
    from training import evaluate
    d = _tiny_beir(tmp_path / "beir")
    report = evaluate.evaluate([("BM25", "bm25"), ("MiniLM | zero-shot", "minilm")], f"beir:{d}", tmp_path / "r",
                               cache_dir=None)
    rows = {r["model"]: r for r in report["rows"]}
    # BM25 ranks every id of a shared text (d4 as well as d1), so q1's judged d4 is found
    assert rows["BM25"]["recall@100"] == 1.0 and "roc_auc" not in rows["BM25"]
    for r in rows.values():  # a corpus smaller than 100: no padded, repeated ids inflating the metrics
        assert 0.0 <= r["ndcg@10"] <= 1.0 and r["recall@100"] <= 1.0
    assert report["comparison"] == {"baseline": "BM25", "reference": None, "resamples": 1000, "level": 0.95}
    md = (tmp_path / "r.md").read_text()
    assert "| MiniLM \\| zero-shot |" in md and "Retrieval metrics minus BM25's, each" in md
    with pytest.raises(ValueError, match="distinct"):
        evaluate.evaluate([("X", "bm25"), ("X", "minilm")], f"beir:{d}", tmp_path / "x", cache_dir=None)



def test_evaluate_writes_each_retrieval_rows_metrics_per_query(tmp_path, capsys):
    """--per-query: one TSV row per query and retrieval row, whose means are the report's metrics."""
    import csv
    from training import evaluate
    d = _tiny_beir(tmp_path / "beir")
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "cordless\\tdrill"}\n{"_id": "q2", "text": "fan"}\n')
    out = tmp_path / "pq" / "per_query.tsv"
    report = evaluate.evaluate([("BM25", "bm25"), ("MiniLM", "minilm")], f"beir:{d}", tmp_path / "r", cache_dir=None,
                               bootstrap=0, per_query_out=out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["query_id"], r["query"], r["model"]) for r in rows] == [
        ("q1", "cordless\tdrill", "BM25"), ("q2", "fan", "BM25"), ("q1", "cordless\tdrill", "MiniLM"), ("q2", "fan", "MiniLM")]
    for row in report["rows"]:
        for m in ("ndcg@10", "recall@100", "mrr@10"):
            values = [float(r[m]) for r in rows if r["model"] == row["model"]]
            assert abs(sum(values) / len(values) - row[m]) < 1e-6
    assert not out.with_name(out.name + ".tmp").exists()
    p = tmp_path / "pairs.tsv"  # labelled pairs have no corpus: nothing per query, and no empty file
    p.write_text("query\tkeyword\tlabel\ndrill\tcordless drill\t3\ndrill\tgarden hose\t1\n")
    capsys.readouterr()
    evaluate.evaluate([("BM25", "bm25")], f"pairs:{p}", tmp_path / "r2", bootstrap=0, per_query_out=tmp_path / "none.tsv")
    assert not (tmp_path / "none.tsv").exists() and "no retrieval rows" in capsys.readouterr().out
    cli = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", "BM25=bm25", "--dataset", f"beir:{d}",
                          "--out", str(tmp_path / "r3"), "--bootstrap", "0", "--per-query", str(tmp_path / "cli.tsv")],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "cli.tsv").read_text().splitlines()[0] == "query_id\tquery\tmodel\tndcg@10\trecall@100\tmrr@10"
    cli = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", "BM25=bm25", "--dataset", f"beir:{d}",
                          "--out", str(tmp_path / "r4"), "--per-query", str(tmp_path)], capture_output=True, text=True)
    assert cli.returncode == 2 and "is a directory" in cli.stderr and not (tmp_path / "r4.md").exists()


def test_beir_qrels_that_judge_documents_not_relevant_are_labelled_pairs_too(tmp_path, capsys):
    """Score-0 judgements make the qrels labelled pairs (relevant above 0), so pair metrics, and the cross
    models that have only those, get values on a BEIR set; qrels of relevant documents alone give none."""
    from training import evaluate
    from training.datasets import read_beir_judged
    d = _tiny_beir(tmp_path / "beir")
    assert read_beir_judged(d)[1] is None
    evaluate.evaluate([("BM25", "bm25")], f"beir:{d}", tmp_path / "r", cache_dir=None)
    assert "qrels judge no document not relevant" in capsys.readouterr().out
    with open(d / "qrels" / "test.tsv", "a") as f:
        f.write("q1\td2\t0\nq2\td3\t0\nq2\td1\t0\nq2\tgone\t0\n")  # the unknown document is not a pair
    rs, pairs = read_beir_judged(d)
    assert rs.qrels == {"q1": {"d4": 1.0}, "q2": {"d2": 1.0}}  # retrieval is as before
    assert sorted(zip(pairs.queries, pairs.keywords, pairs.labels, pairs.binary)) == [
        ("cordless drill", "ceiling fan", 0.0, 0), ("cordless drill", "cordless drill", 1.0, 1),
        ("fan", "ceiling fan", 1.0, 1), ("fan", "cordless drill", 0.0, 0), ("fan", "garden hose", 0.0, 0)]
    report = evaluate.evaluate([("BM25", "bm25")], f"beir:{d}", tmp_path / "r", cache_dir=None)
    assert report["pairs"] == 5 and report["rows"][0]["roc_auc"] == 1.0 and "ndcg@10" in report["rows"][0]
    # the first query's judgements alone are all relevant: retrieval metrics only, not an error
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td4\t1\nq2\td2\t1\nq2\td3\t0\n")
    capsys.readouterr()
    report = evaluate.evaluate([("BM25", "bm25")], f"beir:{d}", tmp_path / "r", cache_dir=None, max_queries=1)
    assert report["pairs"] == 0 and "roc_auc" not in report["rows"][0] and report["queries"] == 1
    assert "the judged pairs of these queries are of one class" in capsys.readouterr().out


def test_every_model_ranks_ids_of_one_text_in_corpus_order(tmp_path):
    """Ids that share a text score alike. BM25 listed them first id first and FAISS last id first, so a
    judged first copy counted for BM25 and against the bi-encoders (up to 0.004 of nDCG@10 on the Home
    Depot test queries); every model now breaks equal scores by corpus position."""
    import numpy as np
    from training import evaluate
    kv = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    for p in (40, 2000, 4999):
        kv[p] = kv[7]
    assert list(evaluate._rank(kv[7][None], kv, 10)[0, :4]) == [7, 40, 2000, 4999]
    assert list(evaluate._rank(kv[7][None], kv, 2)[0]) == [7, 40]  # a tie group cut at k keeps its first ids
    d = _tiny_beir(tmp_path / "beir")  # d1 and d4 share "cordless drill"; q1 is judged relevant to d4
    rs = read_beir(d)
    assert evaluate.BM25Model(None, rs).rankings(rs)[""]["q1"][:2] == ["d1", "d4"]
    assert evaluate.MiniLMModel().rankings(rs)[""]["q1"][:2] == ["d1", "d4"]
    report = evaluate.evaluate([("BM25", "bm25"), ("MiniLM", "minilm")], f"beir:{d}", tmp_path / "r", cache_dir=None)
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["BM25"]["mrr@10"] == rows["MiniLM"]["mrr@10"] == 1.0 * (0.5 + 1) / 2  # q1's d4 second, q2's d2 first


def test_bm25_lists_hold_top_ids_when_labelled_pairs_add_texts_the_corpus_lacks():
    from training import evaluate
    corpus = {f"d{i}": f"drill model {i}" for i in range(150)}
    rs = RetrievalSet(corpus, {"q": "drill"}, {"q": {"d3": 1.0}})
    pairs = LabelledPairs(["q"] * 20, ["drill" + "!" * i for i in range(20)], [1.0] * 20)  # shorter: BM25 ranks them first
    top = evaluate.BM25Model(pairs, rs).rankings(rs)[""]["q"]
    assert len(top) == evaluate.TOP == len(set(top)) and set(top) <= set(corpus)


def test_evaluate_labelled_pairs_threshold_max_queries_and_reference(tmp_path):
    from training import evaluate
    p = tmp_path / "p.csv"
    p.write_text("query,keyword,label\n" + "".join(f"q{i},cordless drill q{i},{i % 2}\n" for i in range(8))
                 + "q0,ceiling fan,0\n" + " Q0 ,corded drill,1\n")  # a case and spacing variant of q0
    with pytest.raises(ValueError, match="every labelled pair is not relevant at the positive threshold 2.5, so "
                                         "ROC-AUC is undefined; set --positive-threshold"):
        evaluate.evaluate([("BM25", "bm25")], f"pairs:{p}", tmp_path / "r")
    report = evaluate.evaluate([("BM25", "bm25")], f"pairs:{p}", tmp_path / "r", positive_threshold=1)
    assert report["pairs"] == 10 and "comparison" in report
    few = evaluate.evaluate([("BM25", "bm25")], f"pairs:{p}", tmp_path / "r", positive_threshold=1, max_queries=2)
    assert few["pairs"] == 4  # q0 (three pairs, its variant among them) and q1
    with pytest.raises(ValueError, match="--reference 'BM25' has no ROC-AUC"):
        evaluate.evaluate([("BM25", "bm25")], f"beir:{_tiny_beir(tmp_path / 'b')}", tmp_path / "x",
                          reference="BM25")
    with pytest.raises(ValueError, match="pairs:FILE only"):
        evaluate.evaluate([("BM25", "bm25")], "homedepot:test", tmp_path / "x", positive_threshold=1)
    out = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", "BM25=bm25", "--dataset", f"pairs:{p}",
                          "--out", str(tmp_path / "cli"), "--baseline", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "--baseline 'nope' is not one of the --model labels" in out.stderr


def test_add_projection_starts_near_the_checkpoint_and_round_trips(tmp_path):
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(0)
    model = TwinBERT(TwinConfig(num_layers=1, crossing="res"), pretrained=False).eval()
    ids = torch.randint(1000, 2000, (4, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        before = model.embed(ids, mask, "keyword")
        model.add_projection(model.query_encoder.hidden)
        after = model.embed(ids, mask, "keyword")
    assert model.config.proj_dim == model.query_encoder.hidden
    # the identity (plus noise of 1e-3) under tanh: each pooled vector becomes about tanh of itself,
    # which keeps its direction (a random encoder's unit-variance states bend more than a trained one's)
    cos = torch.nn.functional.cosine_similarity
    assert cos(torch.tanh(before), after, dim=1).min() > 0.98
    assert cos(before, after, dim=1).min() > 0.9
    with pytest.raises(ValueError, match="already projects"):
        model.add_projection(64)
    model.save(tmp_path / "ckpt")
    loaded = TwinBERT.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.embed(ids, mask, "keyword"), after)
        s = loaded.score(ids, mask, ids, mask, "res")
    assert s.shape == (4,) and torch.isfinite(s).all()


def test_param_groups_give_the_head_its_own_rate_and_lose_no_parameter():
    from training.loop import param_groups
    model = torch.nn.Sequential()
    model.add_module("enc", torch.nn.Linear(4, 4))
    model.add_module("head", torch.nn.Linear(4, 1))
    every = {id(p) for p in model.parameters()}
    plain = param_groups(model, LoopConfig(out="x", lr=1e-4, head_prefix="head."))  # no head_lr: one rate
    assert len(plain) == 2 and all("lr" not in g for g in plain)
    split = param_groups(model, LoopConfig(out="x", lr=1e-4, head_lr=1e-3, head_prefix="head."))
    assert {id(p) for g in split for p in g["params"]} == every
    assert sum(len(g["params"]) for g in split) == len(every)
    head = [g for g in split if g.get("lr") == 1e-3]
    assert {id(p) for g in head for p in g["params"]} == {id(p) for p in model.head.parameters()}
    assert [g["weight_decay"] for g in head] == [0.01, 0.0]  # the head's matrix decays, its bias not
    opt = torch.optim.AdamW(split, lr=1e-4)
    assert sorted(g["lr"] for g in opt.param_groups) == [1e-4, 1e-4, 1e-3, 1e-3]


def test_frozen_word_embeddings_stay_put_while_the_rest_trains(tmp_path):
    from training.loop import freeze_word_embeddings
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(0)
    model = TwinBERT(TwinConfig(num_layers=1), pretrained=False).train()
    table = model.query_encoder.bert.embeddings.word_embeddings.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1000, 2000, (8, 6))
    mask = torch.ones_like(ids)

    def loss(m, batch):
        return m.embed(ids[batch], mask[batch], "query").pow(2).mean()

    cfg = LoopConfig(out=str(tmp_path / "run"), epochs=1, lr=1e-2, eval_every=0, threads=1,
                     freeze_word_embeddings=True)
    state = train_loop(model, cfg, lambda e: [[0, 1, 2, 3], [4, 5, 6, 7]] * 2, loss, None, lambda m: None)
    assert state["step"] == 4 and not table.requires_grad
    assert torch.equal(table, before["query_encoder.bert.embeddings.word_embeddings.weight"])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("encoder.layer.0" in n for n in moved) and any("position_embeddings" in n for n in moved)
    with pytest.raises(ValueError, match="no word_embeddings table"):
        freeze_word_embeddings(torch.nn.Linear(2, 2))


def test_dropout_zero_makes_a_training_forward_pass_deterministic():
    from training.loop import set_dropout
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(0)
    model = TwinBERT(TwinConfig(num_layers=1), pretrained=False).train()
    ids = torch.randint(1000, 2000, (4, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert not torch.equal(model.embed(ids, mask), model.embed(ids, mask))  # BERT's own 0.1
        assert set_dropout(model, 0.0) >= 4  # embeddings, attention (read by the attention kernel), outputs
        assert torch.equal(model.embed(ids, mask), model.embed(ids, mask))
    with pytest.raises(ValueError, match="dropout must be in"):
        set_dropout(model, 1.0)


@pytest.mark.parametrize("layers", [1, 2])
def test_students_and_teacher_start_from_the_pretrained_lower_layers(layers):
    """Issue 3, deliverable 4: a student of N layers is MiniLM-L6's embeddings and first N layers as
    pretrained, for both towers; the teacher's encoder is the same code at 6 layers."""
    from training.pretrained import minilm_dir
    from training.teacher import CrossEncoder, CrossEncoderConfig
    from training.twin import TwinBERT, TwinConfig
    pretrained = load_file(str(minilm_dir() / "model.safetensors"))
    model = TwinBERT(TwinConfig(num_layers=layers))
    teacher = CrossEncoder(CrossEncoderConfig(num_layers=6))
    for name, bert in (("query", model.query_encoder.bert), ("keyword", model.keyword_encoder.bert),
                       ("teacher", teacher.encoder.bert)):
        state = bert.state_dict()
        taken = {k for k in pretrained if not k.startswith(("pooler.", "embeddings.position_ids"))  # no pooler is built
                 and (not k.startswith("encoder.layer.") or int(k.split(".")[2]) < len(bert.encoder.layer))}
        assert set(state) <= set(pretrained), name
        assert taken == {k for k in state if k in pretrained}, name
        for k in taken:
            assert torch.equal(state[k], pretrained[k]), f"{name}: {k}"
    assert len(model.query_encoder.bert.encoder.layer) == layers


def test_corpus_vectors_from_length_batches_equal_full_width_ones_and_tie_exactly():
    """training.index.embed_texts (the store's indexing and training.evaluate's corpora) embeds in batches of
    similar length with all-padding columns cut, each distinct text once: the vectors must be the full-width
    ones (to rounding), in the given order, and texts that repeat must get one vector, or ids sharing a title
    would stop tying exactly."""
    from training.index import embed_texts
    from training.pretrained import minilm_dir
    from training.tokenize import WordPiece
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(0)
    model = TwinBERT(TwinConfig(num_layers=1), pretrained=False).eval()
    words = "cordless drill driver kit lithium battery white gloss paint 1/2 in. copper pipe fitting".split()
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(23)]
    texts += [texts[3], texts[17], texts[3]]  # repeats: embedded once (the calls below), so they tie exactly
    tok = WordPiece(minilm_dir() / "tokenizer.json", 32)
    ids, mask = tok(texts)
    assert (mask.sum(1) < 32).sum() > 5 and (mask.sum(1) == 32).any()  # short rows to trim, and full ones
    with torch.inference_mode():
        full = model.embed(torch.from_numpy(ids), torch.from_numpy(mask), "keyword").numpy()
        calls = []

        def embed(i, m):
            calls.append(i.shape)
            return model.embed(i, m, "keyword")
        got = embed_texts(embed, tok, texts, batch_size=4, progress=False)
    assert got.shape == full.shape and np.abs(got - full).max() < 1e-5
    assert len(calls) == 6 and sum(c[0] for c in calls) == 23  # the 23 distinct texts, 4 a batch
    assert min(c[1] for c in calls) < 32  # columns cut
    assert np.array_equal(got[23], got[3]) and np.array_equal(got[25], got[3]) and np.array_equal(got[24], got[17])
    with pytest.raises(ValueError, match="nothing to embed"):
        embed_texts(embed, tok, [], progress=False)


def test_cached_corpus_vectors_are_keyed_by_the_title_length_as_well_as_the_weights(tmp_path):
    """The corpus cache is keyed by the checkpoint's weights: one whose config cuts titles at another length
    (training.distill --keyword-max-len) must not reuse vectors embedded at the first length."""
    import json
    from training.datasets import RetrievalSet
    from training.evaluate import TwinModel
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(0)
    TwinBERT(TwinConfig(num_layers=1), pretrained=False).save(tmp_path / "a")
    rs = RetrievalSet(corpus={"1": " ".join(["cordless drill driver kit"] * 12), "2": "white paint"},
                      queries={"q": "drill"}, qrels={"q": {"1": 1.0}})
    a = TwinModel(tmp_path / "a")
    a.cache_dir = tmp_path / "cache"
    short = a.corpus_vectors(rs)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "keyword_max_len": 48}))
    b = TwinModel(tmp_path / "a")
    b.cache_dir = tmp_path / "cache"
    long = b.corpus_vectors(rs)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert np.allclose(long[1], short[1], atol=1e-5) and not np.allclose(long[0], short[0], atol=1e-3)
