"""The serving query encoder: padding trimmed without changing the real tokens' states."""

import numpy as np
import pytest
import torch

from serving.encoder import PAD_MULTIPLE, QueryEncoder, trim_padding
from serving.requests import BadRequest


@pytest.mark.parametrize("lengths, width", [([3, 5], 8), ([8], 8), ([9, 2], 16), ([16], 16), ([1], 8), ([0], 8)])
def test_trim_keeps_every_real_token_and_a_multiple_of_8(lengths, width):
    L = 16
    mask = np.zeros((len(lengths), L), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = np.arange(mask.size, dtype=np.int64).reshape(mask.shape)
    t_ids, t_mask = trim_padding(ids, mask)
    assert t_mask.shape == (len(lengths), width) and width % PAD_MULTIPLE == 0
    assert t_mask.sum() == mask.sum()
    np.testing.assert_array_equal(t_ids, ids[:, :width])


def test_trim_never_drops_a_real_token_after_inner_padding():
    mask = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]], dtype=np.int64)
    _, t_mask = trim_padding(np.zeros_like(mask), mask, multiple=4)
    assert t_mask.shape[1] == 12 and t_mask.sum() == 2


@pytest.mark.parametrize("optimize", [True, False])
def test_trimmed_states_equal_the_full_width_ones(encoder_dir, optimize):
    enc = QueryEncoder(encoder_dir, optimize=optimize, precision="fp32")
    plain = torch.jit.load(str(encoder_dir / "query_encoder.pt"))
    queries = ["cordless drill", "ceiling fan with light kit", "hose"]
    full_ids, full_mask = enc.tokenizer(queries)
    ids, mask = enc.tokenize(queries)
    assert mask.shape[1] == 8 < full_mask.shape[1]
    states = enc(ids, mask)
    with torch.inference_mode():
        full = plain(torch.from_numpy(full_ids), torch.from_numpy(full_mask)).numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(states[real], full[:, :mask.shape[1]][real], atol=1e-5)


def test_bad_ids_are_refused(encoder_dir):
    enc = QueryEncoder(encoder_dir)
    ids = np.full((1, 4), enc.vocab_size, dtype=np.int64)
    with pytest.raises(BadRequest, match="token ids"):
        enc.check_ids(ids, np.ones_like(ids))
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        enc.tokenize_request(np.array([[b"\xff\xfe"]], dtype=object))


def test_requests_of_different_widths_share_one_forward_pass(encoder_dir):
    enc = QueryEncoder(encoder_dir)
    short = enc.tokenize(["drill"])
    long = enc.tokenize(["milwaukee m18 fuel brushless cordless hammer drill driver kit with batteries"])
    assert short[1].shape[1] == 8 and long[1].shape[1] == 16
    together = enc.encode_many([short, long, short])
    assert [s.shape[1] for s in together] == [8, 16, 8]
    for states, (ids, mask) in zip(together, [short, long, short]):
        alone = enc(ids, mask)
        real = mask.astype(bool)
        np.testing.assert_allclose(states[real], alone[real], atol=1e-5)


def test_one_request_is_encoded_as_it_is_and_read_only_arrays_are_copied(encoder_dir):
    enc = QueryEncoder(encoder_dir)
    ids, mask = enc.tokenize(["cordless drill"])
    alone = enc(ids, mask)
    ids.flags.writeable = mask.flags.writeable = False  # as arrays handed over by Triton can be
    (states,) = enc.encode_many([(ids, mask)])
    assert states.shape == alone.shape
    np.testing.assert_allclose(states, alone, atol=1e-6)
    padded = enc.encode_many([(ids, mask), enc.tokenize(["milwaukee m18 fuel brushless hammer drill kit"])])
    np.testing.assert_allclose(padded[0][mask.astype(bool)], alone[mask.astype(bool)], atol=1e-5)
