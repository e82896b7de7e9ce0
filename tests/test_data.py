import re

import pytest

from training.data import (DataError, keyword_corpus, load_pairs, normalize_query, repair_text, split_manifest,
                           split_of, split_pairs)

HEADER = '"id","product_uid","product_title","search_term","relevance"\n'


def write_csv(path, rows):
    text = HEADER + "".join(f'{i},{uid},"{title}","{query}",{rel}\n' for i, (uid, title, query, rel) in enumerate(rows))
    path.write_bytes(text.encode("latin-1"))


def test_loads_latin1_and_repairs_broken_degree_signs(tmp_path):
    write_csv(tmp_path / "train.csv", [
        (100001, "Defiant 180å¡ White Outdoor Motion Sensor", "motion light", 3),
        (100002, "Superstrut 90è_ 4-Hole Angle Bracket", "angle bracket", 2.33),
        (100003, "Café  Chair", "chair", 1),
    ])
    pairs = load_pairs(tmp_path)
    assert [p.keyword for p in pairs] == ["Defiant 180° White Outdoor Motion Sensor",
                                          "Superstrut 90° 4-Hole Angle Bracket", "Café Chair"]
    assert pairs[1].relevance == pytest.approx(2.33)
    assert pairs[0].keyword_id == "100001"


def test_keyword_corpus_keeps_one_title_per_product(tmp_path):
    write_csv(tmp_path / "train.csv", [(1, "Drill", "drill", 3), (1, "Drill", "cordless drill", 2), (2, "Fan", "fan", 3)])
    assert keyword_corpus(load_pairs(tmp_path)) == {"1": "Drill", "2": "Fan"}


def test_missing_data_names_the_path_and_the_variable(tmp_path):
    with pytest.raises(DataError, match="TWINBERT_DATA"):
        load_pairs(tmp_path / "nowhere")


def test_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing columns"):
        load_pairs(tmp_path)


@pytest.mark.parametrize("relevance", ["nan", "inf", "1e400", "", "high"])
def test_a_relevance_that_is_not_a_finite_number_is_refused_by_line(tmp_path, relevance):
    write_csv(tmp_path / "train.csv", [(1, "Drill", "drill", 3), (2, "Fan", "fan", relevance)])
    with pytest.raises(DataError, match=f"train.csv:3: bad relevance '{relevance}'"):
        load_pairs(tmp_path)


def test_repair_text_collapses_whitespace_and_maps_mojibake():
    assert repair_text("  MenÛªs   Shaver ") == "Men's Shaver"


def test_repair_text_decodes_html_references_and_the_mojibake_after_c1_bytes():
    assert repair_text("Baker&#39;s Rack, Black &amp; Decker 2&quot; x 4&#x27;") == "Baker's Rack, Black & Decker 2\" x 4'"
    assert repair_text("Wall Texture,&amp;nbsp; Knockdown") == "Wall Texture, Knockdown"  # escaped twice in train.csv
    assert repair_text("Trinity 3\x89Û\x90Tier Cart, Connect\x89ã¢ Deadbolt, Lighting \x89ÛÒ Area, \x95ÈÀ0.5") == \
        "Trinity 3-Tier Cart, Connect™ Deadbolt, Lighting - Area, ±0.5"
    # only references with their semicolon, and no code point that is not a character
    assert repair_text("black&notched b&d &#0; &#55296; &#150; &bogus;") == "black&notched b&d &#0; &#55296; &#150; &bogus;"
    assert repair_text("2\x963 Men\x92s") == "2\x963 Men\x92s"  # a C1 byte outside the mojibake is not guessed at


def test_split_is_deterministic_and_by_normalised_query():
    assert split_of("Cordless  Drill") == split_of("cordless drill") == split_of("cordless drill")
    assert normalize_query("  A  b ") == "a b"


def test_split_keeps_every_query_in_one_split_with_expected_fractions():
    from training.data import Pair
    pairs = [Pair(f"query {i % 3000}", str(i), f"title {i}", 2.0) for i in range(9000)]
    splits = split_pairs(pairs)
    seen = {}
    for name, rows in splits.items():
        for p in rows:
            assert seen.setdefault(p.query, name) == name
    n_queries = {name: len({p.query for p in rows}) for name, rows in splits.items()}
    assert 0.07 < n_queries["test"] / 3000 < 0.13
    assert 0.07 < n_queries["dev"] / 3000 < 0.13
    assert sum(len(r) for r in splits.values()) == 9000


def test_real_data_split_when_available(home_depot_csv):
    pairs = load_pairs()
    assert len(pairs) == 74067
    assert len(keyword_corpus(pairs)) == 54667
    assert not any("å¡" in p.keyword or "è_" in p.keyword for p in pairs)
    assert not any(re.search(r"&(#\d+|amp|quot|nbsp);|[\x80-\x9f]", p.keyword + p.query) for p in pairs)
    assert len({p.keyword for p in pairs}) == 53489  # decoding references merged no two titles
    splits = split_pairs(pairs)
    queries = {n: {normalize_query(p.query) for p in rows} for n, rows in splits.items()}
    assert not (queries["train"] & queries["test"]) and not (queries["dev"] & queries["test"])
    assert not (queries["train"] & queries["dev"])
    # the held-out queries every report is measured on: a change to the split would move these
    manifest = split_manifest(splits)
    assert manifest["seed"] == 13
    assert {n: (m["pairs"], m["queries"], m["queries_sha256"][:16]) for n, m in manifest["splits"].items()} == {
        "train": (58994, 9426, "c4393a23f019fcde"), "dev": (7345, 1174, "960f0b6a269efca6"),
        "test": (7728, 1193, "5cb4a9236352d56d")}
