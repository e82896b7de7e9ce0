"""Decoding and validation of request tensors, shared by the Triton models (unit-tested here)."""
from __future__ import annotations

import hashlib

import numpy as np

import json

from kernels import CROSSINGS
from training.tokenize import MAX_CHARS
from serving.keyword_store import MAX_TOP_K

MAX_CANDIDATES = 1000  # K' for res re-scoring
MAX_KEYWORDS = 1000    # keyword ids per relevance request
MAX_DEPTH = 200        # retrieve_rerank: candidates the re-ranker may read (about 0.15 ms each on 2 cores)


class BadRequest(ValueError):
    """The request is malformed; the message goes back to the client as INVALID_ARGUMENT."""


def decode_queries(raw: np.ndarray) -> list[str]:
    """QUERY [B, 1] (bytes objects) -> B stripped strings; blank or non-UTF-8 is a BadRequest."""
    flat = raw.reshape(-1)
    if flat.size == 0:
        raise BadRequest("QUERY is empty: send one string per batch row")
    if raw.ndim != 2 or raw.shape[1] != 1:
        raise BadRequest(f"QUERY must have shape [batch, 1], got {list(raw.shape)}")
    out = []
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRequest(f"QUERY row {i} is not valid UTF-8 (byte {e.start})") from None
        text = str(item).strip()
        if not text:
            raise BadRequest(f"QUERY row {i} is empty or blank")
        out.append(text)
    return out


def query_digest(query: bytes | str) -> int:
    """QUERY_DIGEST of one query as sent: its 8-byte BLAKE2b (`blake2b(data, digest_size=8)`, which differs
    from the first 8 bytes of the 64-byte digest), a little-endian int64.
    Every answer of retrieve, relevance and retrieve_rerank carries its query's, and the client checks
    it: tritonserver 2.51's Python backend can hand a request the answer of another one after a stub
    stalled (the README's known issue), and an answer with another query's digest is refused, not
    served. client.core computes the same (kept equal by a test)."""
    data = query if isinstance(query, bytes) else str(query).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def query_digests(raw: np.ndarray) -> np.ndarray:
    """QUERY [B, 1] -> QUERY_DIGEST [B, 1] int64."""
    return np.array([[query_digest(q)] for q in raw.reshape(-1)], dtype=np.int64)


def check_tokenized(mask: np.ndarray) -> None:
    """After tokenising QUERY: a row of nothing but [CLS] and [SEP] held no text the tokenizer keeps
    (control, format, private-use or lone combining characters, which str.strip() leaves in place) and
    would be answered as an arbitrary query."""
    empty = np.flatnonzero(mask.sum(axis=1) <= 2)
    if empty.size:
        raise BadRequest(f"QUERY row {int(empty[0])} is empty or blank: nothing in it is text the tokenizer keeps "
                         f"(only control, format or combining characters in its first {MAX_CHARS} characters, "
                         "which are all that is read)")


def _one_per_request(raw: np.ndarray, rows: int, name: str) -> int:
    """A [B, 1] int tensor that must hold one value per QUERY row, the same in every row."""
    flat = raw.reshape(-1)
    if flat.size != rows:
        raise BadRequest(f"{name} must have one value per QUERY row ({rows}), got {flat.size}")
    values = {int(v) for v in flat}
    if len(values) != 1:
        raise BadRequest(f"{name} must be the same for every row of one request, got {sorted(values)}")
    return values.pop()


def decode_top_k(raw: np.ndarray, rows: int) -> int:
    """TOP_K [B, 1] int -> one k for the request, within 1..MAX_TOP_K."""
    k = _one_per_request(raw, rows, "TOP_K")
    if not 1 <= k <= MAX_TOP_K:
        raise BadRequest(f"TOP_K must be between 1 and {MAX_TOP_K}, got {k}")
    return k


def decode_depth(raw: np.ndarray, rows: int, k: int | None = None, limit: int = MAX_DEPTH) -> int:
    """DEPTH [B, 1] int (retrieve_rerank: cosine candidates the re-ranker reads) -> one depth for the
    request, within TOP_K..limit (1..limit where TOP_K is not at hand: keyword_store, which searches
    DEPTH deep before the re-ranker sees TOP_K)."""
    depth = _one_per_request(raw, rows, "DEPTH")
    if not (k or 1) <= depth <= limit:
        raise BadRequest(f"DEPTH must be between {'1' if k is None else f'TOP_K ({k})'} and {limit}, got {depth}")
    return depth


def decode_texts(raw: np.ndarray, name: str) -> np.ndarray:
    """A [B, N] BYTES tensor -> the same object array, after checking that every element is UTF-8."""
    if raw.ndim != 2:
        raise BadRequest(f"{name} must be [batch, N], got {list(raw.shape)}")
    for r, row in enumerate(raw):
        for item in row:
            if isinstance(item, bytes):
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(f"{name} row {r} holds an element that is not valid UTF-8") from None
    return raw


def check_token_inputs(ids: np.ndarray, mask: np.ndarray, vocab_size: int, max_length: int | None = None) -> None:
    """INPUT_IDS / ATTENTION_MASK [B, L] int64: same shape, 1 <= L <= max_length (the encoder's
    position embeddings), ids within the vocabulary, mask 0/1."""
    if ids.shape != mask.shape or ids.ndim != 2:
        raise BadRequest(f"INPUT_IDS {list(ids.shape)} and ATTENTION_MASK {list(mask.shape)} must both be [batch, length]")
    if ids.shape[0] == 0:
        raise BadRequest("INPUT_IDS is an empty batch (0 rows)")
    if ids.shape[1] == 0:
        raise BadRequest("INPUT_IDS has length 0")
    if max_length is not None and ids.shape[1] > max_length:
        raise BadRequest(f"INPUT_IDS has length {ids.shape[1]}; the encoder takes at most {max_length} tokens")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise BadRequest(f"INPUT_IDS must be token ids in [0, {vocab_size}), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise BadRequest("ATTENTION_MASK must hold only 0 and 1")
    check_mask_rows(mask)


def check_mask_rows(mask) -> None:
    """Every row needs a real token: an all-padding row has nothing to encode or pool, and its answer
    would be arbitrary. `mask`: numpy, or a torch tensor on any device."""
    if mask is None or mask.ndim != 2:
        return  # the shape checks name that
    if hasattr(mask, "bool"):  # torch: one flag back from the device, not the tensor
        if bool(mask.bool().any(dim=1).all()):
            return
        mask = mask.cpu().numpy()
    empty = np.flatnonzero(~np.asarray(mask).astype(bool).any(axis=1))
    if empty.size:
        raise BadRequest(f"ATTENTION_MASK row {int(empty[0])} has no real token (all 0)")


# Token states and pooled vectors are layer-normalised outputs (|x| < 20 or so); a client's 1e38 passed
# the finiteness check and overflowed in the pooling into NaN scores answered as a success.
MAX_ABS_VALUE = 1e4


def check_finite(values, name: str) -> None:
    """Client-sent floats (numpy or torch): NaN, infinity, or values large enough to overflow in the
    pooling would come back as NaN scores, or rank arbitrarily in the search, instead of as an error."""
    # one pass: a NaN makes the maximum NaN (numpy and torch propagate it), which fails the comparison
    # as infinity does
    if hasattr(values, "numel"):
        ok = values.numel() == 0 or bool(values.abs().max() <= MAX_ABS_VALUE)
    else:
        ok = values.size == 0 or bool(np.abs(values).max() <= MAX_ABS_VALUE)
    if not ok:
        raise BadRequest(f"{name} holds NaN, infinite or out-of-range values (|x| > {MAX_ABS_VALUE:g}; encoder "
                         "outputs are layer-normalised)")


def _parameters(raw: str | dict | None) -> dict:
    if not raw:
        return {}
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def decode_candidates(parameters: str | dict | None, k: int, default: int) -> int:
    """Request parameter `candidates` (K'): 0 = no re-scoring, else TOP_K..MAX_CANDIDATES."""
    value = _parameters(parameters).get("candidates", max(default, k) if default else 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"parameter 'candidates' must be an integer, got {value!r}")
    if value != 0 and not k <= value <= MAX_CANDIDATES:
        raise BadRequest(f"parameter 'candidates' must be 0 or between TOP_K ({k}) and {MAX_CANDIDATES}, got {value}")
    return value


def refuse_candidates(parameters: str | dict | None) -> None:
    """retrieve_rerank re-orders the cosine top DEPTH: a non-zero `candidates` (res re-scoring, which
    Triton passes on to every model of the ensemble) would change what it reads, so it is refused."""
    value = _parameters(parameters).get("candidates", 0)
    if value != 0:
        raise BadRequest(f"parameter 'candidates' ({value!r}) does not apply to retrieve_rerank, which re-orders "
                         "the cosine top DEPTH; use retrieve for res re-scoring")


def refuse_parameter(parameters: str | dict | None, name: str, model: str, use: str) -> None:
    """A request parameter of another ensemble would otherwise be ignored without a word."""
    if name in _parameters(parameters):
        raise BadRequest(f"parameter '{name}' does not apply to {model}; {use}")


def decode_crossing(parameters: str | dict | None, default: str = "res") -> str:
    crossing = _parameters(parameters).get("crossing", default)
    if crossing not in CROSSINGS:
        raise BadRequest(f"parameter 'crossing' must be one of {list(CROSSINGS)}, got {crossing!r}")
    return crossing


def decode_keyword_ids(raw: np.ndarray) -> list[list[str]]:
    """KEYWORD_IDS [B, N] bytes -> B lists of N ids (1 <= N <= MAX_KEYWORDS)."""
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
        raise BadRequest(f"KEYWORD_IDS must be [batch, N] with batch >= 1 and N >= 1, got {list(raw.shape)}")
    if raw.shape[1] > MAX_KEYWORDS:
        raise BadRequest(f"at most {MAX_KEYWORDS} keyword ids per query, got {raw.shape[1]}")
    rows = []
    for r, row in enumerate(raw):
        ids = []
        for item in row:
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(f"KEYWORD_IDS row {r} holds an id that is not valid UTF-8") from None
            ids.append(str(item))
        rows.append(ids)
    return rows


def serving_defaults(pool_cross_config: dict, configured_candidates: int = 0) -> tuple[int, str]:
    """(default K', default crossing) for an exported model: an untrained res head would only
    scramble the cosine ranking, so re-scoring (K' = `configured_candidates`, keyword_store's
    "default_candidates") and res are defaults only when res was trained."""
    res_trained = "res" in pool_cross_config.get("trained_crossings", ["cos"])
    return (configured_candidates if res_trained else 0), ("res" if res_trained else "cos")
