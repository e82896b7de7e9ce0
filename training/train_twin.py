"""Train a TwinBERT student contrastively on judged pairs (the quick profile used by the demo).

In-batch negatives (InfoNCE over cosine), relevant pairs (relevance >= 2.5) of the train split
only. The full teacher distillation is `training.distill`; this is the few-minute real model.

    python -m training.train_twin --out artifacts/model --minutes 4
    torchrun --nproc_per_node 2 -m training.train_twin --out artifacts/model --minutes 4

Under torchrun each process takes its own batch of every step and the gradients are averaged over the
processes (gloo), so a step's update comes from world x --batch-size pairs; the in-batch negatives stay
those of each process's own batch, and the learning rate is not scaled. Rank 0 writes the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from training.data import POSITIVE_THRESHOLD, DataError, load_pairs, normalize_query, split_pairs, write_split
from training.loop import broadcast_flag, dist_info, finish_distributed, is_main
from training.precision import add_precision_arg, autocast, resolve
from training.pretrained import minilm_dir
from training.tokenize import WordPiece, trim_padding
from training.twin import TwinBERT, TwinConfig
from training.cli import layer_count, nonnegative_int, one_line_errors, positive_float, positive_int


@dataclass
class TrainConfig:
    data: str | None = None
    out: str = "artifacts/model"
    minutes: float = 4.0
    max_steps: int = 0            # 0 = until time or epochs run out
    epochs: int = 3
    batch_size: int = 64
    lr: float = 5e-5
    scale: float = 20.0           # inverse temperature on cosine
    num_layers: int = 2
    proj_dim: int = 0
    threads: int = 2
    seed: int = 0
    precision: str | None = None  # fp32 | bf16 | auto (training.precision)


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=d.data, help="Home Depot directory (default: $TWINBERT_DATA)")
    ap.add_argument("--out", default=d.out, help="checkpoint directory")
    ap.add_argument("--minutes", type=positive_float, default=d.minutes, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=nonnegative_int, default=d.max_steps, help="0 = no step limit")
    ap.add_argument("--epochs", type=positive_int, default=d.epochs)
    ap.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    ap.add_argument("--lr", type=positive_float, default=d.lr)
    ap.add_argument("--scale", type=positive_float, default=d.scale)
    ap.add_argument("--num-layers", type=layer_count, default=d.num_layers)
    ap.add_argument("--proj-dim", type=nonnegative_int, default=d.proj_dim)
    ap.add_argument("--threads", type=positive_int, default=d.threads)
    ap.add_argument("--seed", type=int, default=d.seed)
    add_precision_arg(ap)
    return TrainConfig(**{k.replace("-", "_"): v for k, v in vars(ap.parse_args(argv)).items()})


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, same: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE; `same[i, j]` marks off-diagonal pairs that are not negatives."""
    logits = scale * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(q.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train(cfg: TrainConfig) -> Path:
    rank, world = dist_info()
    if is_main():
        print(f"train_twin: {json.dumps(asdict(cfg))}" + (f", {world} processes" if world > 1 else ""), flush=True)
    torch.manual_seed(cfg.seed)  # the same on every rank: the same initial weights and batch order
    random.seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads // world))
    splits = split_pairs(load_pairs(cfg.data))
    out = Path(cfg.out)
    if is_main():
        write_split(splits, out / "split.json")
    positives = [p for p in splits["train"] if p.relevance >= POSITIVE_THRESHOLD]
    model_cfg = TwinConfig(num_layers=cfg.num_layers, proj_dim=cfg.proj_dim)
    model = TwinBERT(model_cfg).train()
    if world > 1:  # rank 0's initial weights everywhere; then each rank its own dropout masks
        for p in model.state_dict().values():
            dist.broadcast(p, 0)
        torch.manual_seed(cfg.seed + rank)
    qtok = WordPiece(minilm_dir() / "tokenizer.json", model_cfg.query_max_len)
    ktok = WordPiece(minilm_dir() / "tokenizer.json", model_cfg.keyword_max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, fused=True)
    precision = resolve(cfg.precision)
    steps_per_epoch = len(positives) // (cfg.batch_size * world)
    if steps_per_epoch == 0:  # else a model would be saved untrained, with a nan loss
        raise DataError(f"train_twin: {len(positives)} positive pairs, fewer than one batch of {cfg.batch_size}"
                        + (f" for each of {world} processes" if world > 1 else ""))
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    deadline = time.monotonic() + cfg.minutes * 60

    def out_of_time() -> bool:  # rank 0's clock decides, so every rank runs the same steps
        return broadcast_flag(time.monotonic() >= deadline)

    step, losses, stop = 0, [], False
    bar = tqdm(total=total, desc="train twin", unit="step", disable=not is_main())
    while not stop:
        random.shuffle(positives)  # Python's generator, seeded alike on every rank: one order for all
        for i in range(steps_per_epoch):
            if step >= total or out_of_time():
                stop = True
                break
            first = (i * world + rank) * cfg.batch_size  # this rank's batch of the step
            batch = positives[first:first + cfg.batch_size]
            qids, qmask = map(torch.from_numpy, trim_padding(*qtok([p.query for p in batch])))
            kids, kmask = map(torch.from_numpy, trim_padding(*ktok([p.keyword for p in batch])))
            qkey = [normalize_query(p.query) for p in batch]
            kkey = [p.keyword_id for p in batch]
            same = torch.tensor([[i != j and (qkey[i] == qkey[j] or kkey[i] == kkey[j])
                                  for j in range(len(batch))] for i in range(len(batch))])
            with autocast(precision):  # the encoders (pooled vectors come out fp32); the loss below in fp32
                q, k = model.embed(qids, qmask, "query"), model.embed(kids, kmask, "keyword")
            loss = contrastive_loss(q, k, same, cfg.scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                average_gradients(model, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    model.eval()
    if is_main():
        model.save(out)
        (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "world_size": world}, indent=2) + "\n")
        print(f"train_twin: {step} steps ({precision}), {step * cfg.batch_size * world} pairs, final loss "
              f"{np.mean(losses[-50:]):.4f}, saved to {out}", flush=True)
    return out


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """The mean of every rank's gradients, in one all-reduce of them flattened together. (Not
    DistributedDataParallel: its hooks sync only through the wrapper's forward, and the loss here runs
    the model's `embed` twice.)"""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@one_line_errors("train_twin")
def main(argv=None) -> None:
    try:
        train(parse_args(argv))
    finally:
        finish_distributed()


if __name__ == "__main__":
    main()
