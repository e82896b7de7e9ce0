"""Distil the TwinBERT student (cos and res crossings, one shared model) from teacher scores.

Loss: BCE of both crossings' scores against sigmoid(teacher logit), plus in-batch InfoNCE on
teacher-positive pairs (keeps the cosine space good for ANN retrieval); optionally BCE on the human
label (`--label-weight`) and a listwise term over each query's rows (`--group-size`, `--listwise-weight`).
Initialised from a quick contrastive student (`--init`) or from the pretrained lower MiniLM layers.

    python -m training.distill --distill artifacts/distill.tsv --init artifacts/model --out artifacts/twin
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kernels import pool_cross
from training.data import load_pairs, normalize_query, split_pairs, write_split
from training.distill_data import SOURCES, read_rows
from training.loop import add_loop_args, bucketed_batches, finish_distributed, is_main, loop_config, train_loop
from training.metrics import dev_roc_auc
from training.pretrained import minilm_dir
from training.teacher import dev_sample, relevance_target
from training.tokenize import WordPiece, trim_padding
from training.twin import TwinBERT, TwinConfig
from training.cli import (layer_count, nonnegative_float, nonnegative_int, one_line_errors, positive_float,
                          positive_int, source_list)


def twin_pair_scores(model: TwinBERT, queries: list[str], keywords: list[str], batch_size: int = 256
                     ) -> dict[str, np.ndarray]:
    """cos and res scores of (query, keyword) pairs."""
    qtok = WordPiece(minilm_dir() / "tokenizer.json", model.config.query_max_len)
    ktok = WordPiece(minilm_dir() / "tokenizer.json", model.config.keyword_max_len)
    out = {"cos": [], "res": []}
    with torch.inference_mode():
        for s in range(0, len(queries), batch_size):
            qi, qm = map(torch.from_numpy, trim_padding(*qtok(queries[s:s + batch_size])))
            ki, km = map(torch.from_numpy, trim_padding(*ktok(keywords[s:s + batch_size])))
            kv = model.embed(ki, km, "keyword").unsqueeze(1)
            states = model.query_encoder(qi, qm)
            for crossing in ("cos", "res"):
                out[crossing].append(pool_cross(states, qm, model.pool_cross.params(), kv, crossing)[1][:, 0].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def grouped_batches(keys: list[str], batch_size: int, group_size: int, seed: int) -> list[list[int]]:
    """Batches of whole groups: each key's rows cut into groups of at most `group_size`, groups
    shuffled and packed until a batch holds at least `batch_size` rows. Deterministic in `seed`."""
    import random
    rng = random.Random(seed)
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    groups = []
    for idx in by_key.values():
        rng.shuffle(idx)
        groups += [idx[s:s + group_size] for s in range(0, len(idx), group_size)]
    rng.shuffle(groups)
    batches, cur = [], []
    for g in groups:
        cur += g
        if len(cur) >= batch_size:
            batches.append(cur)
            cur = []
    return batches


def listwise_loss(keys: list[str], teacher_logits: torch.Tensor, student_scores: list[torch.Tensor],
                  eps: float = 1e-6) -> torch.Tensor:
    """Mean over groups of rows sharing a key (two rows or more) of the cross-entropy between
    softmax(teacher logits) and log_softmax(student logits), summed over the student's crossings."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    terms = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        p = torch.softmax(teacher_logits[idx], 0)
        for s in student_scores:
            terms.append(-(p * torch.log_softmax(s[idx].clamp(eps, 1 - eps).logit(), 0)).sum())
    return torch.stack(terms).sum() / max(1, len(terms) // len(student_scores)) if terms \
        else teacher_logits.new_zeros(())


class NegativeQueue:
    """The last `size` keyword vectors the contrastive term saw (unit length, no gradient), first in first out,
    each with its row's query key and keyword id: extra negatives for the next batches (cross-batch memory,
    Wang et al. 2020). A vector is at most size / batch steps old; one rank's queue holds its own rows, and a
    resumed run starts with it empty."""

    def __init__(self, size: int):
        self.size = size
        self.vectors: torch.Tensor | None = None
        self.qkeys: list[str] = []
        self.keyword_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.qkeys)

    def push(self, kv: torch.Tensor, qkeys: list[str], keyword_ids: list[str]) -> None:
        kv = kv.detach().float()
        self.vectors = kv if self.vectors is None else torch.cat([self.vectors, kv])[-self.size:]
        self.qkeys = (self.qkeys + list(qkeys))[-self.size:]
        self.keyword_ids = (self.keyword_ids + list(keyword_ids))[-self.size:]


def infonce_loss(qv: torch.Tensor, kv: torch.Tensor, qkeys: list[str], keyword_ids: list[str],
                 pos: torch.Tensor, scale: float, queue: NegativeQueue | None = None) -> torch.Tensor:
    """InfoNCE of each teacher-positive row's query against its own keyword, over the batch's other keywords
    and the queue's (if any). A keyword of the same query (normalised) or with the same id as the row's is
    no negative and is masked out. With under two positives the term is 0 and nothing is computed (one
    positive alone has too few negatives in a small batch to learn from); either way the batch's keyword
    vectors then join the queue."""
    kn = F.normalize(kv, dim=-1)
    loss = kv.new_zeros(())
    if pos.sum() >= 2:
        keys, other_q, other_k = [kn], list(qkeys), list(keyword_ids)
        if queue is not None and len(queue):
            keys.append(queue.vectors)
            other_q += queue.qkeys
            other_k += queue.keyword_ids
        with torch.autocast("cpu", enabled=False):  # logits at scale 40 need more than bf16's 3 digits
            logits = scale * F.normalize(qv, dim=-1) @ torch.cat(keys).T
        same = torch.tensor([[i != j and (qkeys[i] == other_q[j] or keyword_ids[i] == other_k[j])
                              for j in range(len(other_q))] for i in range(len(qkeys))])
        idx = pos.nonzero().squeeze(1)
        loss = F.cross_entropy(logits.masked_fill(same, float("-inf"))[idx], idx)
    if queue is not None:
        queue.push(kn, qkeys, keyword_ids)
    return loss


@one_line_errors("distill")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", required=True, help="TSV from training.distill_data")
    ap.add_argument("--sources", type=source_list(SOURCES), default=",".join(SOURCES),
                    help="comma-separated sources to train on")
    ap.add_argument("--init", help="TwinBERT checkpoint to start from (default: pretrained MiniLM layers)")
    ap.add_argument("--num-layers", type=layer_count, default=None,
                    help="student transformer layers (default 2; with --init, the checkpoint's)")
    ap.add_argument("--proj-dim", type=nonnegative_int, default=0,
                    help="pooled vectors through tanh(W e) to this dim (0 = none); with --init on a checkpoint "
                         "without one, W starts as the identity")
    ap.add_argument("--separate-encoders", action="store_true",
                    help="query and keyword encoders with their own weights (with --init: a shared "
                         "checkpoint's encoder is copied to both sides)")
    # 48 in the pipeline's second pass (training.pipeline, PASS2_KEYWORD_MAX_LEN)
    ap.add_argument("--keyword-max-len", type=positive_int, default=None,
                    help="keyword (title) tokens kept, [CLS] and [SEP] included (default 32; with --init, the "
                         "checkpoint's); the export and keyword store follow the checkpoint's")
    ap.add_argument("--out", default="artifacts/twin")
    ap.add_argument("--contrastive-weight", type=nonnegative_float, default=0.5)
    ap.add_argument("--label-weight", type=nonnegative_float, default=0.0,
                    help="weight of BCE on the human label, where a pair has one (both crossings)")
    # 40, not train_twin's 20: on the whole dev split (same teacher, set and seeds, 2026-12-06) both passes at
    # 40 took cos nDCG@10 from 0.3298 to 0.3363, the second pass alone at 40 to 0.3368 and the first pass
    # alone from 0.3161 to 0.3211, with cos ROC-AUC +0.004-0.006 and, after the second pass, res and
    # recall@100 level; at 60 the second pass gave 0.3307 (docs/experiments.md)
    ap.add_argument("--scale", type=positive_float, default=40.0,
                    help="inverse temperature of the InfoNCE term")
    ap.add_argument("--negative-queue", type=nonnegative_int, default=0,
                    help="keep the last N keyword vectors as extra InfoNCE negatives (0 = the batch's own only)")
    ap.add_argument("--group-size", type=nonnegative_int, default=0,
                    help="batch rows in groups of up to N rows of one query (0: batches by keyword length)")
    ap.add_argument("--listwise-weight", type=nonnegative_float, default=0.0,
                    help="weight of the listwise term: cross-entropy between the softmax of the teacher's "
                         "logits and the student's over each query's rows in a batch (needs --group-size)")
    ap.add_argument("--res-loss", choices=("bce", "logit-mse"), default="bce",
                    help="the res crossing's distillation loss: BCE of its probability against the teacher's, "
                         "or MSE of its logit against the teacher's logit (as the BiLSTM is distilled)")
    ap.add_argument("--head-lr", type=nonnegative_float, default=0.0,
                    help="learning rate of the pooling, projection and crossing parameters (0 = --lr): "
                         "a head added on a trained encoder (--proj-dim with --init) learns faster so")
    ap.add_argument("--head-params", choices=("head", "res"), default="head",
                    help="which parameters --head-lr applies to: the whole head (pooling, projection, crossing; "
                         "pooling and projection move the cos vectors too) or the res crossing's MLP only")
    add_loop_args(ap, epochs=1.0, lr=5e-5, batch_size=64, eval_every=400)
    # no dropout: a pass sees each pair about once, and at equal steps (900, the second pass, dev queries,
    # two seeds) 0 against BERT's 0.1 gave cos nDCG@10 0.302 / 0.304 against 0.293 / 0.291, res ROC-AUC
    # 0.703 / 0.702 against 0.700 / 0.699, in 1.31x fewer minutes (docs/experiments.md)
    ap.set_defaults(dropout=0.0)
    args = ap.parse_args(argv)
    if args.init and args.num_layers is not None:
        ap.error("--num-layers comes from the --init checkpoint; give one or the other")
    if args.listwise_weight and args.group_size < 2:
        ap.error("--listwise-weight needs --group-size of at least 2")
    if is_main():
        print(f"distill: {json.dumps(vars(args))}", flush=True)
    if args.init:
        model = TwinBERT.load(args.init).train()
        model.config.crossing = "res"
        model.config.trained_crossings = ("cos", "res")
        if args.separate_encoders:  # a shared checkpoint's towers part here and train apart
            model.untie()
        if args.proj_dim and args.proj_dim != model.config.proj_dim:
            if model.config.proj_dim:
                ap.error(f"--proj-dim {args.proj_dim}: {args.init} already projects to {model.config.proj_dim} "
                         "dims; leave --proj-dim out to keep its projection")
            model.add_projection(args.proj_dim)
    else:
        model = TwinBERT(TwinConfig(num_layers=args.num_layers or 2, proj_dim=args.proj_dim, crossing="res",
                                    shared_encoders=not args.separate_encoders, trained_crossings=("cos", "res")))
    if args.keyword_max_len is not None:
        positions = model.query_encoder.bert.config.max_position_embeddings
        if not 3 <= args.keyword_max_len <= positions:
            ap.error(f"--keyword-max-len {args.keyword_max_len}: between 3 ([CLS], a token, [SEP]) and "
                     f"{positions} (the encoder's positions)")
        model.config.keyword_max_len = args.keyword_max_len
    rows = read_rows(args.distill, tuple(args.sources.split(",")))
    qtok = WordPiece(minilm_dir() / "tokenizer.json", model.config.query_max_len)
    ktok = WordPiece(minilm_dir() / "tokenizer.json", model.config.keyword_max_len)
    splits = split_pairs(load_pairs(args.data))
    dev = dev_sample(splits["dev"], args.dev_pairs, args.seed)
    lengths = [len(r.keyword) for r in rows]

    def make_batches(epoch):
        if args.group_size:
            return grouped_batches([r.query for r in rows], args.batch_size, args.group_size, args.seed * 1000 + epoch)
        return bucketed_batches(lengths, args.batch_size, args.seed * 1000 + epoch)

    queue = NegativeQueue(args.negative_queue) if args.negative_queue else None

    def loss_fn(net, batch):
        b = [rows[i] for i in batch]
        qi, qm = map(torch.from_numpy, trim_padding(*qtok([r.query for r in b])))
        ki, km = map(torch.from_numpy, trim_padding(*ktok([r.keyword for r in b])))
        teacher_logit = torch.tensor([r.teacher_logit for r in b])
        target = torch.sigmoid(teacher_logit)
        qv, kv, s_cos, s_res = net(qi, qm, ki, km)  # through DDP's wrapper under torchrun: gradients synced
        eps = 1e-6
        loss = F.binary_cross_entropy(s_cos.clamp(eps, 1 - eps), target)
        if args.res_loss == "logit-mse":  # / 8: BCE's gradient near p = 0.5, p(1 - p)(z - z_t), without its flat tails
            loss = loss + F.mse_loss(torch.logit(s_res, eps), teacher_logit) / 8
        else:
            loss = loss + F.binary_cross_entropy(s_res.clamp(eps, 1 - eps), target)
        labelled = [i for i, r in enumerate(b) if r.label is not None] if args.label_weight else []
        if labelled:
            y = torch.tensor([relevance_target(b[i].label) for i in labelled])
            loss = loss + args.label_weight * (F.binary_cross_entropy(s_cos[labelled].clamp(eps, 1 - eps), y) +
                                               F.binary_cross_entropy(s_res[labelled].clamp(eps, 1 - eps), y))
        if args.listwise_weight:
            loss = loss + args.listwise_weight * listwise_loss([r.query for r in b], teacher_logit,
                                                               [s_cos, s_res])
        if args.contrastive_weight:
            loss = loss + args.contrastive_weight * infonce_loss(
                qv, kv, [normalize_query(r.query) for r in b], [r.keyword_id for r in b], target >= 0.5,
                args.scale, queue)
        return loss

    def evaluate(m):
        s = twin_pair_scores(m, [p.query for p in dev], [p.keyword for p in dev])
        return float(np.mean([dev_roc_auc(s[c], dev) for c in ("cos", "res")]))

    head_prefix = {"head": "pool_cross.", "res": "pool_cross.res_"}[args.head_params]
    cfg = dataclasses.replace(loop_config(args), head_lr=args.head_lr, head_prefix=head_prefix)
    if is_main():  # before training (write_split says why)
        write_split(splits, Path(args.out) / "split.json")
    state = train_loop(model, cfg, make_batches, loss_fn, evaluate, lambda m: m.save(args.out), desc="distill twin")
    if is_main():
        (Path(args.out) / "train_summary.json").write_text(json.dumps({**state, "sources": args.sources,
                                                                       "pairs": len(rows)}, indent=2) + "\n")
        print(f"distill: {state['step']} steps in {state['train_minutes']} min on {len(rows)} pairs, best dev "
              f"ROC-AUC (mean of cos, res) {state['best']:.4f} -> {args.out}", flush=True)

    finish_distributed()

if __name__ == "__main__":
    main()
