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
