"""WordPiece tokenization shared by training, export and the serving tokenizer model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Longer input than this is cut before WordPiece: it bounds the work a 10,000-char query costs.
MAX_CHARS = 1024

# Text that `tokenizers` handles: both tokenizers call `encode_batch_fast`, the same ids and masks as
# `encode_batch` without the character offsets nothing here reads (tested), about 15% less time per
# batch of 64 pairs than `encode_batch`.

# BertPreTokenizer's words of lower-cased ASCII text: runs of letters and digits, and each ASCII
# punctuation character (33-47, 58-64, 91-96, 123-126) alone; whitespace separates.
_ASCII_WORD = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
# Control characters BertNormalizer deletes (joining what they separate): such text takes `tokenizers`.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class AsciiWordPieces:
    """Word pieces of ASCII text, in Python with a cache per word: the ids the `tokenizer.json`
    pipeline gives such text (BertNormalizer with lower-casing, BertPreTokenizer, WordPiece), without
    special tokens, truncation or padding; None for any other text, and for every text when the file's
    pipeline is another (`self.enabled`).

    Product titles and queries repeat their words, so after the first few batches nearly every word is
    a dictionary lookup. Tested equal to `tokenizers` on every query and title of the Home Depot data
    (65,090 ASCII texts; the other 192 go to `tokenizers`) and on edge cases; 64 real pairs took 1.4-1.7
    ms with a warm cache against 5.9-7.0 through `encode_batch_fast` (ad-hoc probe, 2026-12-03)."""

    CACHE_WORDS = 100_000  # words remembered; beyond, new words are split each time (bounded memory)

    def __init__(self, spec: dict):
        """`spec`: the parsed `tokenizer.json`."""
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        self.vocab: dict[str, int] = model.get("vocab") or {}
        self.unk = self.vocab.get(model.get("unk_token", "[UNK]"))
        self.max_word = int(model.get("max_input_chars_per_word", 100))
        self.cls, self.sep = self.vocab.get("[CLS]"), self.vocab.get("[SEP]")
        # the callers put [CLS] and [SEP] around the pieces and pad with 0, as this post-processor does
        post = spec.get("post_processor") or {}
        templates = [[f"{kind}:{item.get('id')}" for t in post.get(n) or [] for kind, item in t.items()]
                     for n in ("single", "pair")]
        self.enabled = (norm.get("type") == "BertNormalizer" and norm.get("lowercase") is True
                        and norm.get("clean_text") is True and pre.get("type") == "BertPreTokenizer"
                        and model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
                        and None not in (self.unk, self.cls, self.sep) and self.vocab.get("[PAD]") == 0
                        and templates == [["SpecialToken:[CLS]", "Sequence:A", "SpecialToken:[SEP]"],
                                          ["SpecialToken:[CLS]", "Sequence:A", "SpecialToken:[SEP]",
                                           "Sequence:B", "SpecialToken:[SEP]"]])
        # an added token's name in the text ("[PAD]") is plain text here, as in `tokenizers` once _load
        # has set its `encode_special_tokens` (the only way the two are built)
        self._cache: dict[str, list[int]] = {}

    def _split(self, word: str) -> list[int]:
        """WordPiece's greedy longest-match-first split of one word ([UNK] if a piece is missing)."""
        if len(word) > self.max_word:
            return [self.unk]
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while start < end:
                piece = self.vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                if piece is not None:
                    out.append(piece)
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return out

    def __call__(self, text: str) -> list[int] | None:
        if not self.enabled or not text.isascii() or _ASCII_CONTROL.search(text):
            return None
        out, cache = [], self._cache
        for word in _ASCII_WORD.findall(text.lower()):
            ids = cache.get(word)
            if ids is None:
                ids = self._split(word)
                if len(cache) < self.CACHE_WORDS and len(word) <= self.max_word:  # a longer one is [UNK]: no
                    cache[word] = ids                                               # entry of up to 1,024 chars
            out += ids
        return out


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """A pair cut to `budget` pieces as `tokenizers`' longest_first truncation cuts it (tested on every
    pair of lengths up to 70): a short side up to half the budget is kept whole and the other side
    gets the rest; two long sides get half each, the odd piece to the longer (to the second on a tie)."""
    la, lb = len(a), len(b)
    if la + lb <= budget:
        return a, b
    swap = la > lb
    n1, n2 = (lb, la) if swap else (la, lb)
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if swap:
        n1, n2 = n2, n1
    return a[:n1], b[:n2]


def _padded(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids right-padded with the pad id 0 to `width`: (ids, mask) int64 [len(rows), width]."""
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64).reshape(len(rows), width)
    return ids, (np.arange(width) < np.array([len(r) for r in rows])[:, None]).astype(np.int64)


class WordPiece:
    """Fast BERT tokenizer with fixed-length padding, from a `tokenizer.json` file. ASCII text takes
    AsciiWordPieces (the same ids, tested), other text `tokenizers`; `ascii_fast_path=False` sends
    every text to `tokenizers`."""

    def __init__(self, tokenizer_json: str | Path, max_length: int, ascii_fast_path: bool = True):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.path = Path(tokenizer_json)
        self.max_length = max_length
        self._tok, self._ascii = _load(self.path, ascii_fast_path)
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(length=max_length, pad_id=self._tok.token_to_id("[PAD]") or 0)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (input_ids, attention_mask), both int64 [N, max_length]."""
        if not texts:
            return (np.zeros((0, self.max_length), np.int64),) * 2
        texts = [t[:MAX_CHARS] for t in texts]
        pieces = [self._ascii(t) for t in texts] if self._ascii else [None] * len(texts)
        if all(p is None for p in pieces):
            return _arrays(self._tok.encode_batch_fast(texts))
        cls, sep, keep = self._ascii.cls, self._ascii.sep, self.max_length - 2
        rows = [None if p is None else [cls, *p[:keep], sep] for p in pieces]
        _fill_from_tokenizer(self._tok, rows, texts)
        return _padded(rows, self.max_length)


def trim_padding(ids: np.ndarray, mask: np.ndarray, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Drop trailing columns that are padding in every row, keeping a multiple of `multiple` columns
    (never fewer than one column, never more than given).

    Attention and pooling give padding zero weight, so the real tokens' states do not change (to float
    rounding). Training cuts its batches this way (titles from 32 columns to about 26, queries from 16 to
    about 13, about 1.1x faster TwinBERT steps); serving keeps a multiple of 8 (`serving.encoder`)."""
    real = np.flatnonzero(mask.any(axis=0))
    width = int(real[-1]) + 1 if real.size else 1
    width = min(mask.shape[1], -(-width // multiple) * multiple)
    return ids[:, :width], mask[:, :width]


class PairTokenizer:
    """[CLS] query [SEP] keyword [SEP], truncated longest-first, padded to the batch's longest; a pair of
    ASCII texts takes AsciiWordPieces and truncate_longest_first, any other `tokenizers` (the same ids,
    tested), as WordPiece."""

    def __init__(self, tokenizer_json: str | Path, max_length: int, ascii_fast_path: bool = True):
        if max_length < 3:
            raise ValueError(f"max_length of a pair must be at least 3 ([CLS] and two [SEP]), got {max_length}")
        self.max_length = max_length
        self._tok, self._ascii = _load(Path(tokenizer_json), ascii_fast_path)
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        self._tok.enable_padding(pad_id=self._tok.token_to_id("[PAD]") or 0)

    def __call__(self, queries: list[str], keywords: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(q[:MAX_CHARS], k[:MAX_CHARS]) for q, k in zip(queries, keywords)]
        if not self._ascii:
            return _arrays(self._tok.encode_batch_fast(pairs))
        cls, sep, budget = self._ascii.cls, self._ascii.sep, self.max_length - 3
        rows = []
        for q, k in pairs:
            a, b = self._ascii(q), self._ascii(k)
            if a is None or b is None:
                rows.append(None)
            else:
                a, b = truncate_longest_first(a, b, budget)
                rows.append([cls, *a, sep, *b, sep])
        _fill_from_tokenizer(self._tok, rows, pairs)
        return _padded(rows, max(map(len, rows), default=0))


def _arrays(encodings) -> tuple[np.ndarray, np.ndarray]:
    """`tokenizers` encodings (padded alike) as (input_ids, attention_mask), both int64."""
    return (np.asarray([e.ids for e in encodings], dtype=np.int64),
            np.asarray([e.attention_mask for e in encodings], dtype=np.int64))


def _load(path: Path, ascii_fast_path: bool) -> tuple[Tokenizer, AsciiWordPieces | None]:
    """The `tokenizers` pipeline of a tokenizer.json, and its ASCII fast path when asked for and the
    file's pipeline is the one it reproduces (else None: every text goes to `tokenizers`). The file is
    read once for both."""
    text = path.read_text(encoding="utf-8")
    pieces = AsciiWordPieces(json.loads(text)) if ascii_fast_path else None
    tokenizer = Tokenizer.from_str(text)
    # "[PAD]" or "[SEP] [CLS]" typed in a query (or a title) is text, not markup: matched as special
    # tokens, "[PAD]" came out as [CLS] [PAD] [SEP], a blank query answered as an arbitrary one. No
    # query or title of the Home Depot data holds one, so the data's ids do not change.
    tokenizer.encode_special_tokens = True
    return tokenizer, (pieces if pieces is not None and pieces.enabled else None)


def _fill_from_tokenizer(tokenizer: Tokenizer, rows: list, inputs: list) -> None:
    """Rows left None (text the fast path does not take) from `tokenizers`, their padding dropped."""
    todo = [i for i, r in enumerate(rows) if r is None]
    if todo:
        for i, e in zip(todo, tokenizer.encode_batch_fast([inputs[i] for i in todo])):
            rows[i] = [t for t, m in zip(e.ids, e.attention_mask) if m]
