import numpy as np
import pytest

from training.pretrained import minilm_dir
from training.tokenize import WordPiece


def test_fixed_length_ids_and_mask():
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    ids, mask = tok(["cordless drill", "a " * 100])
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int64
    assert ids[0, 0] == 101 and mask[0].sum() == 5  # [CLS] cord ##less drill [SEP]
    assert ids[0, 4] == 102 and (ids[0, 5:] == 0).all()
    assert mask[1].all() and ids[1, -1] == 102  # truncated, still ends with [SEP]


def test_uncased_wordpiece():
    tok = WordPiece(minilm_dir() / "tokenizer.json", 8)
    assert (tok(["Cordless DRILL"])[0] == tok(["cordless drill"])[0]).all()


def test_huge_input_is_cut_and_empty_batch_is_empty():
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    ids, _ = tok(["x" * 1_000_000])
    assert ids.shape == (1, 16)
    assert tok([])[0].shape == (0, 16)


def test_trimmed_padding_keeps_every_real_token_and_the_pooled_vectors():
    import torch
    from training.tokenize import trim_padding
    from training.twin import TwinBERT, TwinConfig
    tok = WordPiece(minilm_dir() / "tokenizer.json", 32)
    ids, mask = tok(["cordless drill", "milwaukee m18 fuel hammer drill kit"])
    tids, tmask = trim_padding(ids, mask)
    width = int(mask.sum(1).max())
    assert width < 32 and tids.shape == tmask.shape == (2, width)
    assert (tids == ids[:, :width]).all() and tmask.sum() == mask.sum()  # only padding went
    assert trim_padding(*tok([]))[0].shape == (0, 1)
    one, one_mask = trim_padding(np.zeros((2, 8), np.int64), np.zeros((2, 8), np.int64))
    assert one.shape == one_mask.shape == (2, 1)  # never zero columns
    torch.manual_seed(0)
    model = TwinBERT(TwinConfig(num_layers=2), pretrained=True).eval()
    with torch.no_grad():
        full = model.embed(torch.from_numpy(ids), torch.from_numpy(mask), "keyword")
        cut = model.embed(torch.from_numpy(tids), torch.from_numpy(tmask), "keyword")
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_fast_batch_encoding_gives_the_ids_and_masks_of_the_full_one():
    """The tokenizers call encode_batch_fast (no character offsets): the same ids and masks as encode_batch."""
    from training.tokenize import PairTokenizer, WordPiece
    from training.data import repair_text
    tokenizer_json = minilm_dir() / "tokenizer.json"
    texts = ["cordless drill", "", "   ", "Hampton Bay 52 in. Ceiling Fan with Light Kit " * 30, "caf\u00e9 90\u00b0 elbow",
             repair_text("1/2 in. x 90\u00e5\u00a1 elbow"), "\u4e2d\u6587 \U0001F600 naïve", "3/4 in. x 50 ft."]
    words = WordPiece(tokenizer_json, 16)
    full = words._tok.encode_batch(texts)
    ids, mask = words(texts)
    assert ids.tolist() == [e.ids for e in full] and mask.tolist() == [e.attention_mask for e in full]
    pairs = PairTokenizer(tokenizer_json, 48)
    full = pairs._tok.encode_batch(list(zip(texts, reversed(texts))))
    ids, mask = pairs(texts, list(reversed(texts)))
    assert ids.tolist() == [e.ids for e in full] and mask.tolist() == [e.attention_mask for e in full]




def test_ascii_fast_path_gives_the_ids_and_masks_of_tokenizers_on_fuzzed_and_edge_text():
    """The ASCII word-piece path (Python, a cache per word) against `tokenizers` alone: random ASCII text
    with punctuation, digits, long words, whitespace and control characters, literal special tokens,
    non-ASCII text (which takes `tokenizers`), in batches that mix them; single texts and pairs."""
    import random
    from training.tokenize import PairTokenizer, WordPiece
    tokenizer_json = minilm_dir() / "tokenizer.json"
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 3 + " " * 40 + \
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + "\t\n\r\x0b\x0c\x00\x7f\x1f"
    words = ["cordless", "drill", "DEWALT", "20-Volt", "1/2", "in.", "x", "90\u00b0", "caf\u00e9", "[CLS]", "[sep]",
             "[PAD]", "[MASK]", "##less", "unaffable", "w" * 101, "q" * 100, "\u4e2d\u6587", "naïve", "3/4in"]
    texts = ["", " ", "\t\n", "a", "[UNK]", "drill [SEP] bit", "ab\x0bcd", "x" * 2000]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(500)]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    for max_len in (16, 32):
        fast = WordPiece(tokenizer_json, max_len)
        ref = WordPiece(tokenizer_json, max_len, ascii_fast_path=False)
        assert fast._ascii is not None and ref._ascii is None  # this file's pipeline is the one it reproduces
        for s in range(0, len(texts), 64):
            got, want = fast(texts[s:s + 64]), ref(texts[s:s + 64])
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist(), texts[s:s + 64]
    pairs = PairTokenizer(tokenizer_json, 48)
    ref = PairTokenizer(tokenizer_json, 48, ascii_fast_path=False)
    rng.shuffle(texts)
    for s in range(0, len(texts) - 64, 64):
        q, k = texts[s:s + 64], texts[s + 64:s + 128]
        got, want = pairs(q, k), ref(q, k)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    assert pairs([], [])[0].size == 0


def test_pair_truncation_is_tokenizers_longest_first_for_every_pair_of_lengths():
    from training.tokenize import PairTokenizer, truncate_longest_first
    pairs = PairTokenizer(minilm_dir() / "tokenizer.json", 48)
    for n1 in range(0, 71):
        for n2 in range(0, 71):
            want = pairs._tok.encode(" ".join(["a"] * n1), " ".join(["b"] * n2)).ids
            a, b = truncate_longest_first([1037] * n1, [1038] * n2, 45)
            assert [101, *a, 102, *b, 102] == want, (n1, n2)


def test_ascii_word_cache_is_bounded():
    from training.tokenize import AsciiWordPieces, WordPiece
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    pieces = tok._ascii
    pieces.CACHE_WORDS = 10  # on the instance: the class's bound stays
    first = pieces(" ".join(f"word{i}" for i in range(50)))
    assert len(pieces._cache) == 10 and AsciiWordPieces.CACHE_WORDS == 100_000
    assert pieces(" ".join(f"word{i}" for i in range(50))) == first  # uncached words are split again


def test_ascii_word_cache_skips_words_too_long_to_be_anything_but_unk():
    tok = WordPiece(minilm_dir() / "tokenizer.json", 16)
    pieces = tok._ascii
    assert pieces("a" * 1000) == [pieces.unk] and "a" * 1000 not in pieces._cache  # a client fills no cache
    assert pieces("drill") and "drill" in pieces._cache


def test_special_token_names_typed_in_text_are_text():
    """'[PAD]' in a query is the three pieces '[', 'pad', ']', not the padding token: matched as special
    tokens it came out as [CLS] [PAD] [SEP], a blank query answered as an arbitrary one."""
    from serving.requests import check_tokenized
    from training.tokenize import PairTokenizer
    for fast in (True, False):
        tok = WordPiece(minilm_dir() / "tokenizer.json", 16, ascii_fast_path=fast)
        ids, mask = tok(["[PAD]", "[SEP] [CLS]", "caf\u00e9 [pad]"])
        assert ids[0, :5].tolist() == [101, 1031, 11687, 1033, 102] and mask[0].sum() == 5
        assert ids[1, :9].tolist() == [101, 1031, 19802, 1033, 1031, 18856, 2015, 1033, 102]
        assert ids[2, 2:5].tolist() == [1031, 11687, 1033]
        check_tokenized(mask)  # text, answered
    pair = PairTokenizer(minilm_dir() / "tokenizer.json", 16)(["[sep]"], ["fan"])[0][0].tolist()
    assert pair == [101, 1031, 19802, 1033, 102, 5470, 102]  # the pair's own markers are still special


def test_ascii_fast_path_is_off_for_a_tokenizer_whose_pipeline_it_does_not_reproduce(tmp_path):
    import json
    from training.tokenize import PairTokenizer, WordPiece
    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False  # a cased vocabulary: the path lower-cases, so it stands aside
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    cased = WordPiece(tmp_path / "tokenizer.json", 16)
    assert cased._ascii is None and PairTokenizer(tmp_path / "tokenizer.json", 48)._ascii is None
    assert cased(["Drill"])[0].tolist() == WordPiece(tmp_path / "tokenizer.json", 16, ascii_fast_path=False)(["Drill"])[0].tolist()
    spec["normalizer"]["lowercase"] = True
    spec["post_processor"]["single"] = spec["post_processor"]["single"][1:]  # no [CLS] in front
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert WordPiece(tmp_path / "tokenizer.json", 16)._ascii is None
    assert WordPiece(minilm_dir() / "tokenizer.json", 16)._ascii is not None
    with pytest.raises(ValueError, match="max_length of a pair must be at least 3"):
        PairTokenizer(minilm_dir() / "tokenizer.json", 2)
