"""Teacher: a cross-encoder (query and keyword concatenated) fine-tuned from pretrained MiniLM-L6.

Mean-pooled final states -> linear -> logit; BCE on (relevance - 1) / 2, plus sampled random
titles as negatives (target 0) so the teacher also scores unjudged pairs sensibly; dev ROC-AUC
early stopping. `--soft-targets SET` trains a second-generation ("born-again") teacher on a set the first
one scored (training.distill_data), its probability mixed with the human label where a row has one.

    python -m training.teacher --out artifacts/teacher [--epochs 1] [--max-minutes 30]
    python -m training.teacher --out artifacts/teacher2 --soft-targets artifacts/distill.tsv
    torchrun --nproc_per_node 2 -m training.teacher --out artifacts/teacher
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from training.artifacts import load_weights, read_config, read_tensors
from training.data import DataError, keyword_corpus, load_pairs, normalize_query, split_pairs, write_split
from training.loop import add_loop_args, bucketed_batches, finish_distributed, is_main, loop_config, train_loop
from training.metrics import dev_roc_auc
from training.precision import autocast
from training.pretrained import minilm_dir
from training.tokenize import PairTokenizer
from training.twin import Encoder
from training.cli import fraction, layer_count, one_line_errors, positive_int
from training.textfiles import need_file


@dataclass
class CrossEncoderConfig:
    num_layers: int = 6
    max_length: int = 48


class CrossEncoder(nn.Module):
    def __init__(self, config: CrossEncoderConfig, pretrained: bool = True):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.num_layers, pretrained)
        self.head = nn.Linear(self.encoder.hidden, 1)
        self.precision: str | None = None  # score()'s autocast (training.precision); None: the caller's

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)

    def tokenizer(self) -> PairTokenizer:
        """Built once per model: parsing tokenizer.json costs milliseconds per call otherwise."""
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = PairTokenizer(minilm_dir() / "tokenizer.json", self.config.max_length)
        return self._tokenizer

    @torch.inference_mode()
    def score(self, queries: list[str], keywords: list[str], batch_size: int = 128,
              progress: bool = False) -> np.ndarray:
        """Logits for pairs, batched by length (less padding)."""
        tok = self.tokenizer()
        order = np.argsort([len(q) + len(k) for q, k in zip(queries, keywords)], kind="stable")
        out = np.empty(len(queries), dtype=np.float32)
        was_training = self.training
        self.eval()
        with autocast(self.precision) if self.precision else contextlib.nullcontext():
            for s in tqdm(range(0, len(order), batch_size), desc="teacher scoring", unit="batch",
                          disable=not progress):
                sel = order[s:s + batch_size]
                ids, mask = tok([queries[i] for i in sel], [keywords[i] for i in sel])
                out[sel] = self(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        self.train(was_training)
        return out

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, ckpt: str | Path) -> "CrossEncoder":
        ckpt = Path(ckpt)
        if not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"{ckpt}: no teacher checkpoint (config.json); run training.teacher")
        model = cls(read_config(CrossEncoderConfig, ckpt / "config.json"), pretrained=False)
        load_weights(model, read_tensors(ckpt / "model.safetensors"), ckpt / "model.safetensors")
        return model.eval()


def relevance_target(relevance: float) -> float:
    return (relevance - 1.0) / 2.0


def dev_sample(pairs, n: int, seed: int = 0):
    rng = random.Random(seed)
    return rng.sample(pairs, min(n, len(pairs)))


def soft_target_pairs(path, splits: dict, label_mix: float) -> list[tuple[str, str, float]]:
    """(query, keyword, target) from a teacher-scored distillation set: the scoring teacher's probability,
    mixed with (relevance - 1) / 2 at `label_mix` where the row has a human label. A row whose query is a
    dev or test query is refused: the teacher would see held-out queries."""
    from training.distill_data import read_rows  # distill_data imports this module

    held_out = {normalize_query(p.query) for name in ("dev", "test") for p in splits[name]}
    out = []
    for r in read_rows(need_file(path)):
        if normalize_query(r.query) in held_out:
            raise DataError(f"{path}: query {r.query!r} is a held-out (dev/test) query; a teacher trained on it "
                            "would be scored on queries it has seen")
        p = 0.5 * (1.0 + math.tanh(r.teacher_logit / 2))  # the sigmoid, without exp's overflow at large |logit|
        out.append((r.query, r.keyword,
                    p if r.label is None else label_mix * relevance_target(r.label) + (1 - label_mix) * p))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


@one_line_errors("teacher")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/teacher")
    ap.add_argument("--max-length", type=positive_int, default=48)
    ap.add_argument("--num-layers", type=layer_count, default=6, help="transformer layers taken from MiniLM-L6")
    ap.add_argument("--random-negatives", type=fraction, default=0.2,
                    help="random-title pairs added, as a fraction of the labelled pairs (0-1)")
    ap.add_argument("--soft-targets", metavar="TSV",
                    help="self-distillation ('born-again'): train on a teacher-scored set from "
                         "training.distill_data instead of the judged pairs and random titles; a row's target is "
                         "the scoring teacher's probability, mixed with the human label where it has one")
    ap.add_argument("--label-mix", type=fraction, default=None,
                    help="with --soft-targets: the human label's weight in a labelled row's target (default 0.5)")
    add_loop_args(ap, epochs=1.0, lr=5e-5, batch_size=32, eval_every=500)
    args = ap.parse_args(argv)
    if args.label_mix is not None and not args.soft_targets:
        ap.error("--label-mix needs --soft-targets")
    loop = loop_config(args)
    if is_main():
        print(f"teacher: {json.dumps(vars(args))}", flush=True)
    all_pairs = load_pairs(args.data)
    splits = split_pairs(all_pairs)
    if args.soft_targets:
        train = soft_target_pairs(args.soft_targets, splits, 0.5 if args.label_mix is None else args.label_mix)
    else:
        titles = list(keyword_corpus(all_pairs).values())
        train = [(p.query, p.keyword, relevance_target(p.relevance)) for p in splits["train"]]
        rng = random.Random(args.seed)
        train += [(p.query, rng.choice(titles), 0.0)
                  for p in rng.sample(splits["train"], int(args.random_negatives * len(splits["train"])))]
    dev = dev_sample(splits["dev"], args.dev_pairs, args.seed)
    model = CrossEncoder(CrossEncoderConfig(num_layers=args.num_layers, max_length=args.max_length))
    model.precision = loop.precision  # dev scoring as the distillation set will score
    tok = model.tokenizer()

    lengths = [len(q) + len(k) for q, k, _ in train]

    def make_batches(epoch: int):
        return bucketed_batches(lengths, args.batch_size, args.seed * 1000 + epoch)

    def loss_fn(net, batch):
        ids, mask = tok([train[i][0] for i in batch], [train[i][1] for i in batch])
        target = torch.tensor([train[i][2] for i in batch])
        return F.binary_cross_entropy_with_logits(net(torch.from_numpy(ids), torch.from_numpy(mask)), target)

    def evaluate(m):
        scores = m.score([p.query for p in dev], [p.keyword for p in dev])
        return dev_roc_auc(scores, dev)

    if is_main():  # before training (write_split says why)
        write_split(splits, Path(args.out) / "split.json")
    state = train_loop(model, loop, make_batches, loss_fn, evaluate, lambda m: m.save(args.out), desc="teacher")
    if is_main():
        (Path(args.out) / "train_summary.json").write_text(json.dumps(state, indent=2) + "\n")
        print(f"teacher: {state['step']} steps in {state['train_minutes']} min, best dev ROC-AUC "
              f"{state['best']:.4f}, saved to {args.out}", flush=True)

    finish_distributed()

if __name__ == "__main__":
    main()
