import numpy as np
import pytest

from serving.requests import BadRequest, decode_queries, decode_top_k


def test_decodes_utf8_queries_and_strips():
    assert decode_queries(np.array([[b" drill "], ["caf\u00e9".encode()]], dtype=object)) == ["drill", "caf\u00e9"]


@pytest.mark.parametrize("raw, message", [
    (np.array([[b"   "]], dtype=object), "empty or blank"),
    (np.array([[b"\xff\xfe"]], dtype=object), "not valid UTF-8"),
    (np.zeros((0, 1), dtype=object), "empty"),
    (np.array([[b"a", b"b"]], dtype=object), r"shape \[batch, 1\]"),
])
def test_bad_queries_are_rejected_with_a_reason(raw, message):
    with pytest.raises(BadRequest, match=message):
        decode_queries(raw)


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_top_k_out_of_range(k):
    with pytest.raises(BadRequest, match="between 1 and 1000"):
        decode_top_k(np.array([[k]], dtype=np.int32), 1)


def test_top_k_must_agree_within_a_request():
    with pytest.raises(BadRequest, match="same for every row"):
        decode_top_k(np.array([[3], [4]], dtype=np.int32), 2)
    assert decode_top_k(np.array([[5], [5]], dtype=np.int32), 2) == 5


def test_token_inputs_are_checked_against_the_vocabulary():
    from serving.requests import check_token_inputs
    ids, mask = np.array([[101, 7, 102]]), np.array([[1, 1, 1]])
    check_token_inputs(ids, mask, 30522)
    with pytest.raises(BadRequest, match=r"\[0, 30522\)"):
        check_token_inputs(np.array([[101, 40000, 102]]), mask, 30522)
    with pytest.raises(BadRequest, match="only 0 and 1"):
        check_token_inputs(ids, np.array([[1, 2, 0]]), 30522)
    with pytest.raises(BadRequest, match="must both be"):
        check_token_inputs(ids, np.array([[1, 1]]), 30522)
    with pytest.raises(BadRequest, match="at most 2 tokens"):
        check_token_inputs(ids, mask, 30522, max_length=2)
    with pytest.raises(BadRequest, match="empty batch"):  # a [0, L] request would fail its whole batch
        check_token_inputs(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), 30522)


@pytest.mark.parametrize("shape", [(0, 2), (1, 0), (2,)])
def test_keyword_ids_need_rows_and_ids(shape):
    from serving.requests import decode_keyword_ids
    with pytest.raises(BadRequest, match=r"batch >= 1 and N >= 1"):
        decode_keyword_ids(np.zeros(shape, dtype=object))


def test_queries_the_tokenizer_empties_are_refused():
    """str.strip() keeps NUL, zero-width spaces, BOMs and lone combining accents; the WordPiece tokenizer
    drops them, so such a query would be answered as [CLS] [SEP]."""
    from serving.requests import check_tokenized
    from training.pretrained import minilm_dir
    from training.tokenize import WordPiece
    tokenizer = WordPiece(minilm_dir() / "tokenizer.json", 16)
    for text in ("\x00", "\u200b", "\ufeff", "\u0301", "\ue000 \u200b"):
        query = decode_queries(np.array([[text.encode()]], dtype=object))  # passes the text-level check
        with pytest.raises(BadRequest, match="row 0 is empty or blank: nothing in it is text"):
            check_tokenized(tokenizer(query)[1])
    _, mask = tokenizer(["drill", "\u200b"])
    with pytest.raises(BadRequest, match="row 1"):
        check_tokenized(mask)
    check_tokenized(tokenizer(["drill", "?"])[1])  # punctuation is text


def test_an_all_padding_mask_row_is_refused():
    import torch

    from serving.requests import check_mask_rows, check_token_inputs
    with pytest.raises(BadRequest, match="ATTENTION_MASK row 1 has no real token"):
        check_token_inputs(np.array([[101, 102], [0, 0]]), np.array([[1, 1], [0, 0]]), 30522)
    check_mask_rows(np.array([[1, 0], [0, 1]]))
    with pytest.raises(BadRequest, match="ATTENTION_MASK row 0 has no real token"):  # pool_cross's tensors
        check_mask_rows(torch.tensor([[0, 0], [1, 0]]))
    check_mask_rows(torch.tensor([[1, 0], [0, 1]]))


def test_token_states_too_large_to_pool_are_refused():
    """1e38 is finite, and overflowed in the pooling into NaN scores answered as a success."""
    import torch

    from serving.requests import check_finite
    for values in (np.full((1, 3, 4), 1e38, np.float32), torch.full((1, 3, 4), 1e38), np.array([[np.nan]])):
        with pytest.raises(BadRequest, match="NaN, infinite or out-of-range"):
            check_finite(values, "TOKEN_STATES")
    check_finite(np.full((1, 3, 4), 30.0, np.float32), "TOKEN_STATES")  # encoder outputs are of this size
    check_finite(torch.zeros(0, 4), "KEYWORD_VECTORS")


def test_depth_without_top_k_and_parameters_of_another_ensemble():
    from serving.requests import decode_depth, refuse_parameter
    assert decode_depth(np.array([[30]], dtype=np.int32), 1) == 30
    for depth in (0, 201):
        with pytest.raises(BadRequest, match=f"DEPTH must be between 1 and 200, got {depth}"):
            decode_depth(np.array([[depth]], dtype=np.int32), 1)
    with pytest.raises(BadRequest, match=r"DEPTH must be between TOP_K \(10\) and 200, got 5"):
        decode_depth(np.array([[5]], dtype=np.int32), 1, 10)
    refuse_parameter('{"candidates": 5}', "crossing", "retrieve", "x")
    with pytest.raises(BadRequest, match="parameter 'crossing' does not apply to retrieve; use candidates"):
        refuse_parameter({"crossing": "cos"}, "crossing", "retrieve", "use candidates")


def test_an_unexpected_failure_is_one_line():
    from serving.model_errors import failure_message
    torchscript = RuntimeError("The following operation failed in the TorchScript interpreter.\n"
                               "Traceback of TorchScript (most recent call last):\n  File \"code/x.py\", line 3\n\n"
                               "RuntimeError: shape '[1, 8]' is invalid for input of size 9\n")
    assert failure_message("encoder", torchscript) == \
        "encoder failed: RuntimeError: RuntimeError: shape '[1, 8]' is invalid for input of size 9"
    assert failure_message("store", KeyError()) == "store failed: KeyError: no message"
