"""Benchmark the BiLSTM student's forms on real pairs: the training module (BiLSTMStudent) against
its inference form (BiLSTMScorer, what training.evaluate scores and the re-ranker export traces), in
fp32 and with its LSTM in bf16 (`bilstm-bf16` in training.evaluate; pays on bf16 matrix hardware only).

Two settings, each timed in interleaved blocks (the order of the forms reverses every round):
- `per_pair`: issue 3's measure, held-out dev pairs in batches of 64, two threads, tokenising
  included (ms per pair);
- `rerank`: the served re-ranker's request, one query's 30 candidates in one batch, one thread
  (ms per request; candidates are titles of the corpus).
Tokenising alone is timed beside them, as the forms tokenise (`tokenize_only`: ASCII text through
training.tokenize's word-piece path, its per-word cache warm after the first round) and through
`tokenizers` alone (`tokenize_tokenizers`, what every form used before that path). The largest logit
difference of each inference form from the student on the same pairs is reported. `--compare LABEL=DIR`
(repeatable) times other checkpoints' inference forms in the same blocks, each with its own tokenizer (so a
checkpoint trained with another `--max-length` reads its own truncation): an A/B of checkpoints on one
host's same hour.

    python -m benchmarks.bench_bilstm --checkpoint artifacts/bilstm [--out reports]   # make bench-bilstm
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from training.cli import one_line_errors, positive_int
from training.data import load_pairs, split_pairs
from training.precision import BF16_FLAGS, cpu_flags
from training.pretrained import minilm_dir
from training.tokenize import PairTokenizer


def _percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def interleaved(fns: dict, batches: list, rounds: int, per: int) -> dict[str, list[float]]:
    """fns {name: f(queries, keywords)} each called on every batch, rounds times, the order of the
    names reversed every other round; samples in ms divided by `per`."""
    names = list(fns)
    for fn in fns.values():  # first calls build lazily held state
        fn(*batches[0])
    samples = {n: [] for n in names}
    for r in range(rounds):
        for q, k in batches:
            for n in (names if r % 2 == 0 else names[::-1]):
                t = time.perf_counter()
                fns[n](q, k)
                samples[n].append((time.perf_counter() - t) * 1000 / per)
    return samples


def summarize(samples: dict[str, list[float]], baseline: str, unit: str) -> dict:
    out = {n: {f"median_{unit}": round(statistics.median(s), 4), f"p99_{unit}": round(_percentile(s, 0.99), 4),
               "calls": len(s)} for n, s in samples.items()}
    base = statistics.median(samples[baseline])
    for n, s in samples.items():
        out[n]["speedup_vs_" + baseline] = round(base / statistics.median(s), 3)
    return out


@one_line_errors("bench_bilstm")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="artifacts/bilstm", help="BiLSTM checkpoint (training.bilstm)")
    ap.add_argument("--data", default=None, help="Home Depot data folder (default: $TWINBERT_DATA)")
    ap.add_argument("--batches", type=positive_int, default=10, help="batches of 64 dev pairs")
    ap.add_argument("--rounds", type=positive_int, default=20, help="passes over the batches per setting")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                    help="another BiLSTM checkpoint whose inference form is timed in the same blocks (repeatable)")
    ap.add_argument("--out", default="reports")
    args = ap.parse_args(argv)
    compare = {}  # form name -> checkpoint
    for spec in args.compare:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            ap.error(f"--compare takes LABEL=DIR, got {spec!r}")
        if f"inference {label}" in compare:
            ap.error(f"--compare: label {label!r} given twice")
        compare[f"inference {label}"] = Path(path)
    from training.bilstm import BiLSTMStudent
    student = BiLSTMStudent.load(args.checkpoint)
    others = {name: BiLSTMStudent.load(path).inference() for name, path in compare.items()}
    scorer, scorer_bf16 = student.inference(), student.inference("bf16")
    tok = student.tokenizer()
    plain_tok = PairTokenizer(minilm_dir() / "tokenizer.json", student.config.max_length, ascii_fast_path=False)
    splits = split_pairs(load_pairs(args.data))
    rng = random.Random(0)
    dev = rng.sample(splits["dev"], 64 * args.batches)
    pairs = [([p.query for p in dev[i:i + 64]], [p.keyword for p in dev[i:i + 64]]) for i in range(0, len(dev), 64)]
    titles = sorted({p.keyword for p in splits["train"]})
    queries = sorted({p.query for p in splits["dev"]})
    requests = [([q] * 30, rng.sample(titles, 30)) for q in rng.sample(queries, args.batches)]
    diff, diff_bf16 = (max(float(np.abs(student.score(q, k, 64) - s.score(q, k, 64)).max()) for q, k in pairs + requests)
                       for s in (scorer, scorer_bf16))

    forms = {"student": lambda q, k: student.score(q, k, batch_size=64),
             "inference": lambda q, k: scorer.score(q, k, batch_size=64),
             "inference_bf16": lambda q, k: scorer_bf16.score(q, k, batch_size=64),
             **{name: functools.partial(s.score, batch_size=64) for name, s in others.items()},
             "tokenize_only": lambda q, k: tok(q, k),
             "tokenize_tokenizers": lambda q, k: plain_tok(q, k)}
    result = {"checkpoint": str(Path(args.checkpoint).resolve()), "config": json.loads(
        (Path(args.checkpoint) / "config.json").read_text()), "host": platform.node(),
        "torch": torch.__version__, "bf16_matmul_hardware": sorted(BF16_FLAGS & cpu_flags()),
        "compare": {name: {"checkpoint": str(path.resolve()), "max_length": others[name].config.max_length}
                    for name, path in compare.items()},
        "max_abs_logit_diff": diff, "max_abs_logit_diff_bf16": diff_bf16}
    torch.set_num_threads(2)
    result["per_pair"] = {"threads": 2, "batch": 64, **summarize(
        interleaved(forms, pairs, args.rounds, 64), "student", "ms_per_pair")}
    torch.set_num_threads(1)
    result["rerank"] = {"threads": 1, "candidates": 30, **summarize(
        interleaved(forms, requests, args.rounds, 1), "student", "ms")}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_bilstm.json").write_text(json.dumps(result, indent=2) + "\n")
    hardware = ", ".join(result["bf16_matmul_hardware"]) or "none (bf16 will not pay)"
    lines = ["# BiLSTM student: training module vs inference form", "",
             f"Checkpoint `{args.checkpoint}`; largest logit difference from the student on the timed pairs: "
             f"{diff:.2e} (`inference`, fp32), {diff_bf16:.2e} (`inference_bf16`, its LSTM in bf16). "
             f"bf16 matrix hardware: {hardware}. Interleaved blocks, {args.rounds} rounds over {args.batches} "
             "batches; tokenising included in every form but the `tokenize_*` rows (`tokenize_only`: as the forms do, "
             "ASCII text by the word-piece path with its per-word cache; `tokenize_tokenizers`: `tokenizers` alone).", "",
             "| setting | form | median | p99 | speedup vs student |", "|---|---|---|---|---|"]
    for setting, unit in (("per_pair", "ms_per_pair"), ("rerank", "ms")):
        label = ("64 dev pairs a batch, 2 threads (ms per pair)" if setting == "per_pair"
                 else "one query's 30 candidates, 1 thread (ms per request)")
        for form in forms:
            r = result[setting][form]
            lines.append(f"| {label} | {form} | {r['median_' + unit]} | {r['p99_' + unit]} | "
                         f"{r['speedup_vs_student']} |")
    (out / "bench_bilstm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
