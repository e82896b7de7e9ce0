"""argparse types for the command lines: a count, rate or weight outside its range is refused at the
prompt ("argument --batch-size: must be a positive integer, got '0'"), not minutes later deep inside a
run, and NaN or infinity never passes for a number."""
from __future__ import annotations

import argparse
import functools
import math


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _checked(parse, ok, wanted: str):
    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    return check


positive_int = _checked(_int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _checked(_int, lambda v: v >= 0, "0 or a positive integer")
positive_float = _checked(_float, lambda v: v > 0, "a positive number")
nonnegative_float = _checked(_float, lambda v: v >= 0, "0 or a positive number")
finite_float = _checked(_float, lambda v: True, "a finite number")
fraction = _checked(_float, lambda v: 0 <= v <= 1, "between 0 and 1")
dropout_rate = _checked(_float, lambda v: 0 <= v < 1, "at least 0 and below 1")
port = _checked(_int, lambda v: 1 <= v <= 65535, "a port between 1 and 65535")
pair_length = _checked(_int, lambda v: v >= 3, "3 or more, as a pair needs at least 3 pieces ([CLS] and two [SEP])")


def _comma_list(item, what: str):
    """An argparse type: comma-separated `item`s, at least one, none empty ('1,,2' is refused)."""
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or any(not t for t in items):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {what}, got {text!r}")
        return [item(t) for t in items]
    return parse


int_list = _comma_list(positive_int, "positive integers")      # '1,2,4' -> [1, 2, 4]
float_list = _comma_list(positive_float, "positive numbers")    # '50,100' -> [50.0, 100.0]


def layer_count(text: str) -> int:
    """Transformer layers to take from the pretrained model: 1 up to as many as it has."""
    from training.pretrained import pretrained_layers
    value = positive_int(text)
    if value > pretrained_layers():
        raise argparse.ArgumentTypeError(f"the pretrained model has {pretrained_layers()} layers to start from, "
                                         f"got {text!r}")
    return value


def source_list(known: tuple[str, ...]):
    """An argparse type: comma-separated names, each one of `known` (a typo would otherwise drop a
    source from the training set without a word)."""
    def parse(text: str) -> str:
        names = [t.strip() for t in text.split(",")]
        unknown = [n for n in names if n not in known]
        if unknown or not text.strip():
            raise argparse.ArgumentTypeError(f"unknown source(s) {unknown or [text]}; choose from {list(known)}")
        return ",".join(names)
    return parse


def one_line_errors(prog: str):
    """Decorates a command's main(): a missing data directory or a corrupt artifact (DataError,
    ArtifactError; their messages name the path), a file that cannot be read or written (OSError, which
    names it) or input that is not UTF-8 ends the command with one line, not a traceback."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except Exception as e:  # noqa: BLE001 - re-raised unless it is one of the two
                from training.artifacts import ArtifactError
                from training.data import DataError
                if isinstance(e, (ArtifactError, DataError, OSError)):
                    raise SystemExit(f"{prog}: {e}") from None
                if isinstance(e, UnicodeDecodeError):
                    raise SystemExit(f"{prog}: an input file is not valid UTF-8 ({e})") from None
                raise
        return run
    return wrap
