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
