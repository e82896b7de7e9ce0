"""training.agreement: how far the grades agree with themselves, and the between/within-query view."""
import json

import numpy as np
import pytest

from training import agreement
from training.datasets import LabelledPairs, write_labelled_pairs


def test_repeat_grades_that_agree_score_one_and_those_that_disagree_zero():
    labels = np.array([3.0, 3.0, 1.0, 1.0])
    groups = [np.array([0, 1]), np.array([2, 3])]
    models = {"perfect": np.array([0.9, 0.9, 0.1, 0.1]), "constant": np.zeros(4)}
    r = agreement.repeat_agreement(labels, labels >= 2.5, groups, models, resamples=200)
    assert (r["groups"], r["grades"], r["ordered_pairs"]) == (2, 4, 4)
    assert r["repeat_roc_auc"] == 1.0 and r["same_class"] == 1.0
    assert r["models"]["perfect"]["roc_auc"] == 1.0 and r["models"]["perfect"]["minus_repeat"] == 0.0
    assert r["models"]["constant"]["roc_auc"] == 0.5
    assert r["models"]["constant"]["low"] <= -0.5 <= r["models"]["constant"]["high"]
    # each (query, keyword) graded once high and once low: a repeat grade predicts the opposite class
    labels = np.array([3.0, 1.0, 3.0, 1.0])
    r = agreement.repeat_agreement(labels, labels >= 2.5, groups, models, resamples=0)
    assert r["repeat_roc_auc"] == 0.0 and r["same_class"] == 0.0
    assert r["models"]["perfect"]["roc_auc"] == 0.5 and "low" not in r["models"]["perfect"]
    # nothing graded twice, or only one class among the repeated grades: no ROC-AUC, said so
    assert "undefined" in agreement.repeat_agreement(labels, labels >= 2.5, [], models)["note"]
    labels = np.array([3.0, 3.0, 1.0, 3.0])
    assert "undefined" in agreement.repeat_agreement(labels, labels >= 2.5, groups[:1], models)["note"]


def test_repeat_groups_join_case_and_spacing_variants_only():
    pairs = LabelledPairs(["Drill  bit", "drill bit", "drill bit", "drill"],
                          ["DEWALT Bit Set", "dewalt bit  set", "DEWALT Bit Sets", "DEWALT Bit Set"], [3, 1, 2, 2])
    assert [list(g) for g in agreement.repeat_groups(pairs)] == [[0, 1]]


def test_query_levels_split_ranking_into_between_and_within_queries():
    labels = np.array([3.0, 2.67, 1.0, 2.67, 1.0, 1.0])
    queries = ["a", "a", "b", "b", "c", "c"]
    # ranks every pair of a query right, but query c (all negative) above query a (all positive)
    within = np.array([10.0, 9.0, 1.0, 2.0, 20.0, 19.0])
    r = agreement.query_levels(labels, labels >= 2.5, queries, {"within": within})
    assert (r["pairs"], r["queries"], r["queries_with_both_classes"]) == (6, 3, 1)
    # one-way ANOVA by hand: 3 queries of 2 grades, query means 2.835, 1.835, 1.0
    msb = 2 * np.sum((np.array([2.835, 1.835, 1.0]) - labels.mean()) ** 2) / 2
    msw = (2 * 0.165 ** 2 + 2 * 0.835 ** 2) / 3
    assert r["query_icc"] == pytest.approx((msb - msw) / (msb + msw))
    # each pair's other grade: positives 2.67, 3, 1 against negatives 2.67, 1, 1 (ties count half)
    assert r["pairs_with_other_grades"] == 6
    assert r["other_grades_roc_auc"] == pytest.approx((2.5 + 3 + 1) / 9)
    m = r["models"]["within"]
    assert m["within_query_roc_auc"] == 1.0 and m["query_mean_roc_auc"] < 0.5


def test_the_command_writes_both_views_for_a_pairs_file_and_refuses_bad_flags(tmp_path, capsys):
    rows = [("cordless drill", "DEWALT 20V Drill", 3.0), ("cordless drill", "dewalt 20v drill", 2.67),
            ("cordless drill", "Garden Hose", 1.0), ("ceiling fan", "Hunter Ceiling Fan", 3.0),
            ("ceiling fan", "Hunter Ceiling Fan", 1.67), ("ceiling fan", "Drill Bits", 1.0),
            ("ceiling fan", "Drill Bits", 1.33)]
    f = tmp_path / "pairs.tsv"
    write_labelled_pairs(LabelledPairs(*map(list, zip(*rows))), f)
    agreement.main(["--dataset", f"pairs:{f}", "--model", "BM25=bm25", "--out", str(tmp_path / "ag"),
                    "--bootstrap", "50"])
    report = json.loads((tmp_path / "ag.json").read_text())
    d = report["datasets"][f"pairs:{f}"]
    assert (d["repeated"]["groups"], d["repeated"]["grades"]) == (3, 6)
    assert set(d["repeated"]["models"]) == {"BM25"} and set(d["queries"]["models"]) == {"BM25"}
    assert d["queries"]["queries"] == 2
    md = (tmp_path / "ag.md").read_text()
    assert "## Repeated judgements" in md and "| BM25 |" in md
    for argv, message in ((["--model", "x=bm25", "--model", "x=minilm"], "distinct"),
                          (["--dataset", f"pairs:{f}", "--dataset", f"pairs:{f}"], "named twice"),
                          (["--model", "x=teacher"], "needs a checkpoint")):
        with pytest.raises(SystemExit, match=message):
            agreement.main((["--dataset", f"pairs:{f}"] if "--dataset" not in argv else []) + argv
                           + ["--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad.json").exists()


def test_on_the_home_depot_split_the_pooled_view_holds_dev_and_test(home_depot_csv, tmp_path):
    report = agreement.agreement(list(agreement.DEFAULT_DATASETS), [], tmp_path / "ag",
                                 data=str(home_depot_csv.parent), resamples=0)
    dev, test, both = (report["datasets"][k] for k in ("homedepot:dev", "homedepot:test",
                                                       "homedepot:dev + homedepot:test"))
    assert dev["split"]["name"] == "dev" and test["split"]["name"] == "test"
    assert dev["repeated"]["groups"] > 20 and test["repeated"]["groups"] > 20
    assert both["repeated"]["groups"] == dev["repeated"]["groups"] + test["repeated"]["groups"]
    assert both["queries"]["pairs"] == dev["queries"]["pairs"] + test["queries"]["pairs"]
    for d in (dev, test, both):
        assert 0.5 < d["repeated"]["repeat_roc_auc"] < 0.9   # the grades agree with themselves, far from fully
        assert 0.2 < d["queries"]["query_icc"] < 0.8
