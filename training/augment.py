"""Query perturbations (BertBiLSTM-style augmentation) and negative sampling for distillation."""
from __future__ import annotations

import random

import numpy as np

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def token_dropout(query: str, rng: random.Random) -> str:
    words = query.split()
    if len(words) < 2:
        return query
    del words[rng.randrange(len(words))]
    return " ".join(words)


def token_swap(query: str, rng: random.Random) -> str:
    words = query.split()
    if len(words) < 2:
        return query
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def misspell(query: str, rng: random.Random) -> str:
    words = query.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return query
    i = rng.choice(candidates)
    w = list(words[i])
    j = rng.randrange(1, len(w) - 1)
    op = rng.randrange(4)
    if op == 0:
        del w[j]                                   # deletion
    elif op == 1:
        w.insert(j, rng.choice(_LETTERS))          # insertion
    elif op == 2:
        w[j], w[j + 1] = w[j + 1], w[j]            # transposition
    else:
        w[j] = rng.choice(_LETTERS)                # substitution
    words[i] = "".join(w)
    return " ".join(words)


PERTURBATIONS = {"dropout": token_dropout, "swap": token_swap, "misspell": misspell}

_SPAN_LENGTHS = (1, 2, 2, 3, 3, 3, 4)  # words; most judged queries are 2-4 words long
_FILLER = {"x", "in", "in.", "ft", "ft.", "with", "and", "for", "of", "the", "a", "to", "or", "-", "&", "&amp;"}


def _title_words(title: str) -> list[str]:
    """A title's words, lowercased, punctuation stripped from their ends."""
    return [w.strip(",;:()\"'").lower() for w in title.split()]


def _can_end(word: str) -> bool:
    """Whether a synthetic query may end on `word`: a word of letters (the product type, usually), not a filler."""
    return len(word) >= 3 and word.isalpha() and word not in _FILLER


def title_query(title: str, rng: random.Random) -> str:
    """A query-like span of a keyword: up to 4 consecutive words of it that end on a word (the
    product type usually comes last), lowercased, filler words stripped from the ends
    ("DEWALT 20-Volt MAX Cordless Drill/Driver Kit" -> "cordless drill/driver kit"); "" if none."""
    words = _title_words(title)
    ends = [i for i, w in enumerate(words) if _can_end(w)]
    if not ends:
        return ""
    end = rng.choice(ends)
    span = words[max(0, end + 1 - rng.choice(_SPAN_LENGTHS)):end + 1]
    while span and (span[0] in _FILLER or not span[0]):
        span = span[1:]
    return " ".join(span)


_MIXED_LENGTHS = (2, 2, 3, 3, 3, 4, 4, 5)  # words, units not counted
_MIXED_DROP = _FILLER - {"in.", "ft", "ft."}  # fillers, less the units a number keeps
_UNITS = {"in.", "ft.", "lb.", "gal.", "oz.", "cu.", "sq.", "qt.", "mm", "cm", "w", "v", "amp", "watt", "volt"}


def mixed_title_query(title: str, rng: random.Random) -> str:
    """A query-like ordered subset of 2-5 of a keyword's words, as judged queries mix a brand, sizes and a
    product type: it ends on a word of letters after the first, the first word (usually the brand) is in
    with probability 0.4 (always when nothing else is), a picked number keeps the unit after it, and
    fillers (`with`, `x`, ...) are dropped, lowercased ("RIDGID 10 in. Portable Tile Saw with Laser" ->
    "ridgid 10 in. portable"); "" if no word can end it."""
    words = [w for w in _title_words(title) if w and w not in _MIXED_DROP]
    ends = [i for i, w in enumerate(words) if i >= 1 and _can_end(w)]
    if not ends:
        return ""
    end = rng.choice(ends)
    length = rng.choice(_MIXED_LENGTHS)
    before = [i for i in range(1, end) if words[i] not in _UNITS]
    pick = set(rng.sample(before, min(length - 2, len(before))))
    if rng.random() < 0.4 or not pick:
        pick.add(0)
    pick |= {i + 1 for i in pick if words[i][:1].isdigit() and i + 1 < end and words[i + 1] in _UNITS}
    kept = [words[i] for i in sorted(pick) if words[i] not in _UNITS or (i and words[i - 1][:1].isdigit())]
    return " ".join(kept + [words[end]])


TITLE_QUERIES = {"span": title_query, "mixed": mixed_title_query}  # training.distill_data --synthetic-style


def perturb(query: str, rng: random.Random) -> tuple[str, str]:
    """A perturbed copy of the query and the perturbation's name (the query itself if none applies)."""
    names = list(PERTURBATIONS)
    rng.shuffle(names)
    for name in names:
        out = PERTURBATIONS[name](query, rng)
        if out != query:
            return out, name
    return query, "none"


class BM25Index:
    """bm25s over a keyword corpus: top-k ids per query and scores of given pairs."""

    def __init__(self, ids: list[str], texts: list[str]):
        import bm25s
        self._bm25s = bm25s
        self.ids = ids
        self.position = {k: i for i, k in enumerate(ids)}
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def _tokens(self, queries: list[str]):
        return self._bm25s.tokenize(queries, stopwords="en", show_progress=False)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top k (k capped at the corpus size) as positions in `ids` and their scores."""
        docs, scores = self.retriever.retrieve(self._tokens(queries), k=min(k, len(self.ids)), show_progress=False,
                                               n_threads=1)
        return np.asarray(docs, dtype=np.int64), np.asarray(scores)

    def top_k(self, queries: list[str], k: int) -> list[list[str]]:
        docs, _ = self.search(queries, k)
        return [[self.ids[int(d)] for d in row] for row in docs]

    def scores(self, query: str) -> np.ndarray:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not tokens:  # a query of stopwords only matches nothing
            return np.zeros(len(self.ids), dtype=np.float32)
        return self.retriever.get_scores(tokens)
