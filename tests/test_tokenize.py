import numpy as np

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
