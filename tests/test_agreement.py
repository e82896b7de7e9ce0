"""training.agreement: how far the grades agree with themselves, and the between/within-query view."""
import json

import numpy as np
import pytest

from training import agreement
from training.datasets import LabelledPairs, write_labelled_pairs


def test_repeat_grades_that_agree_score_one_and_a_pair_s_own_disagreement_counts_as_a_tie():
    labels = np.array([3.0, 3.0, 1.0, 1.0])
    rows, groups = np.arange(4), np.array([0, 0, 1, 1])
    models = {"perfect": np.array([0.9, 0.9, 0.1, 0.1]), "constant": np.zeros(4)}
    r = agreement.repeat_agreement(labels, labels >= 2.5, rows, groups, models, resamples=200)
    assert (r["groups"], r["grades"]) == (2, 4)
    assert r["repeat_roc_auc"] == 1.0 and r["same_class"] == 1.0 and r["grade_correlation"] == 1.0
    assert r["models"]["perfect"]["roc_auc"] == 1.0 and r["models"]["perfect"]["minus_repeat"] == 0.0
    assert r["models"]["constant"]["roc_auc"] == 0.5
    assert r["models"]["constant"]["low"] == pytest.approx(-0.5) == r["models"]["constant"]["high"]
    # each pair graded once high and once low: across pairs the other grade ranks backwards (0 of 2), and
    # the two comparisons inside a pair are ties for every score, not losses for the repeat grade
    labels = np.array([3.0, 1.0, 3.0, 1.0])
    r = agreement.repeat_agreement(labels, labels >= 2.5, rows, groups, models, resamples=0)
    assert r["repeat_roc_auc"] == pytest.approx(1 / 4) and r["same_class"] == 0.0
    assert r["models"]["perfect"]["roc_auc"] == 0.5 and "low" not in r["models"]["perfect"]
    # nothing graded twice, or nothing to compare across two pairs: no ROC-AUC, said so
    assert "undefined" in agreement.repeat_agreement(labels, labels >= 2.5, rows[:0], groups[:0], models)["note"]
    assert "undefined" in agreement.repeat_agreement(labels, labels >= 2.5, rows[:2], groups[:2], models)["note"]


def test_a_grade_is_scored_by_the_mean_of_its_pair_s_other_grades_whatever_the_group_size():
    # pair 0 graded 3, 3, 1; pair 1 graded 1, 2.67. Other grades' means: 2, 2, 3 | 2.67, 1. Across pairs
    # every comparison is lost (positives 2, 2 below 2.67; 1 below 3); the 3 inside pairs are ties
    labels = np.array([3.0, 3.0, 1.0, 1.0, 2.67])
    groups = np.array([0, 0, 0, 1, 1])
    r = agreement.repeat_agreement(labels, labels >= 2.5, np.arange(5), groups, {}, resamples=0)
    assert r["repeat_roc_auc"] == pytest.approx(1.5 / 6)


def test_a_resample_keeps_a_group_drawn_twice_one_group():
    y, s, groups = np.array([1, 0, 1, 0]), np.array([1.0, 3.0, 1.0, 3.0]), np.array([0, 0, 1, 1])
    assert agreement.auc_across_groups(y, s, groups) == pytest.approx(1 / 4)
    # group 0 twice: its copies compare only among themselves, so nothing crosses two groups
    assert agreement.auc_across_groups(y, s, groups, draw=np.array([0, 0])) is None
    # group 0 twice and group 1: 4 losses across groups, 5 comparisons inside (2 x 2 copies + 1), of 9
    assert agreement.auc_across_groups(y, s, groups, draw=np.array([0, 0, 1])) == pytest.approx(2.5 / 9)


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
    # each pair's other grade: positives 2.67, 3, 1 against negatives 2.67, 1, 1; the one comparison
    # inside a query (b: 1 against 2.67) is a tie; of the 8 across queries 5 are won and 3 tied
    assert r["pairs_with_other_grades"] == 6
    assert r["other_grades_roc_auc"] == pytest.approx((5 + 3 * 0.5 + 0.5) / 9)
    # unequal query sizes: equal means, so all variance is within; the ANOVA estimate is -1 / (k0 - 1),
    # k0 = (5 - (9 + 4) / 5) / 1 = 2.4 (an equal-size formula would take k = 2.5)
    icc = agreement.query_icc(np.array([3.0, 2.0, 1.0, 1.0, 3.0]), np.array([0, 0, 0, 1, 1]))
    assert icc == pytest.approx(-1 / 1.4)
    m = r["models"]["within"]
    assert m["within_query_roc_auc"] == 1.0
    # query means 9.5, 1.5, 19.5: positives 9.5, 9.5, 1.5 beat only b's negative (1.5: a tie for b's positive)
    assert m["query_mean_roc_auc"] == pytest.approx(2.5 / 9)
    assert m["roc_auc"] == pytest.approx(3 / 9)  # 10, 9 and 2 each beat only the 1


def test_the_command_writes_both_views_for_a_pairs_file_and_refuses_bad_flags(tmp_path, capsys):
    rows = [("cordless drill", "DEWALT 20V Drill", 3.0), ("cordless drill", "dewalt 20v drill", 2.67),
            ("cordless drill", "Garden Hose", 1.0), ("ceiling fan", "Hunter Ceiling Fan", 3.0),
            ("ceiling fan", "Hunter Ceiling Fan", 1.67), ("ceiling fan", "Drill Bits", 1.0),
            ("ceiling fan", "Drill Bits", 1.33)]
    f = tmp_path / "pairs.tsv"
    write_labelled_pairs(LabelledPairs(*map(list, zip(*rows))), f)
    one_class = tmp_path / "one_class.tsv"
    write_labelled_pairs(LabelledPairs(["drill", "drill"], ["DEWALT Drill", "dewalt drill"], [3.0, 2.67]), one_class)
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
                          (["--model", "x=teacher"], "needs a checkpoint"),
                          (["--model", f"x=teacher:{tmp_path / 'none'}"], "no teacher checkpoint"),
                          (["--dataset", f"pairs:{one_class}"], "ROC-AUC is undefined"),
                          (["--dataset", "homedepot", "--dataset", "homedepot:test"], "named twice")):
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
