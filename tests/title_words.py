"""Helpers the synthetic-query tests share (tests/test_training.py, tests/test_training_commands.py)."""


def title_words(title: str) -> list[str]:
    """A title's words as a synthetic query takes them: lowercased, punctuation stripped from their ends."""
    return [w.strip(",;:()\"'").lower() for w in title.split()]


def in_order(words: list[str], within: list[str]) -> bool:
    """Whether `words` appear in `within` in the same order (not necessarily side by side)."""
    it = iter(within)
    return all(w in it for w in words)
