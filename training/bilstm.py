"""BiLSTM student (the BertBiLSTM recipe): the teacher's WordPiece embeddings (frozen), a small
projection, a BiLSTM over [CLS] query [SEP] keyword [SEP], mean+max pooling and an MLP; distilled
on teacher logits (MSE) plus the human label where there is one (BCE).

Interaction (default; `--no-interaction` for the plain model): each query token's BiLSTM state
attends over the keyword's tokens and each keyword token's over the query's (ESIM-style alignment:
[h, a, h - a, h * a] -> a small layer, pooled), and two exact-match features from the frozen
embeddings (each query word's best cosine with a keyword word, mean and minimum over the query).
Matching words across the pair is what relevance turns on, and a BiLSTM reading the pair as one
sequence has to carry it through the recurrence.

    python -m training.bilstm --distill artifacts/distill.tsv --teacher artifacts/teacher --out artifacts/bilstm
"""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from training.artifacts import load_weights, read_config, read_tensors
from training.data import load_pairs, split_pairs, write_split
from training.distill_data import SOURCES, read_rows
from training.loop import add_loop_args, bucketed_batches, finish_distributed, is_main, loop_config, train_loop
from training.metrics import dev_roc_auc
from training.pretrained import minilm_dir
from training.teacher import CrossEncoder, dev_sample, relevance_target
from training.tokenize import PairTokenizer
from training.cli import nonnegative_float, one_line_errors, pair_length, positive_int, source_list


CLS_ID, SEP_ID = 101, 102  # MiniLM's (BERT uncased) WordPiece vocabulary


def pair_segments(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [B, L] masks of the query's and the keyword's word pieces in [CLS] q [SEP] k [SEP]
    (split at the first [SEP]; special tokens and padding in neither)."""
    sep = ids == SEP_ID
    seg = sep.long().cumsum(1) - sep.long()
    words = mask.bool() & ~sep & (ids != CLS_ID)
    return words & (seg == 0), words & (seg == 1)


def exact_match(e: torch.Tensor, qm: torch.Tensor, km: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query word piece's best cosine with a keyword word piece (embeddings e [B, L, D]), as the
    mean and the minimum over the query: [B, 1] each; 1.0 where every query piece is in the keyword."""
    return exact_match_unit(F.normalize(e, dim=-1), qm, km)


@torch.jit.script
def query_span(qm: torch.Tensor) -> int:
    """How many leading positions can hold a query piece in some row: one past the last query piece of the
    batch, at least 1. The query comes first in [CLS] q [SEP] k [SEP], so the query-keyword products need
    only these rows. Scripted, so a traced caller keeps it data-dependent rather than the example's."""
    pos = torch.arange(1, qm.shape[1] + 1, device=qm.device)
    return max(1, int((qm.long() * pos).max()))


@torch.jit.script
def exact_match_unit(en: torch.Tensor, qm: torch.Tensor, km: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exact_match of embeddings already of unit length; only the query's rows of the products are
    formed (query_span)."""
    n = query_span(qm)
    best = (en[:, :n] @ en.transpose(1, 2)).masked_fill(~km[:, None, :], -1.0).amax(-1)
    q = qm[:, :n]
    qf = q.to(en.dtype)
    mean = (best * qf).sum(1) / qf.sum(1).clamp_min(1.0)
    return mean[:, None], best.masked_fill(~q, 1.0).amin(1)[:, None]


@torch.jit.script
def aligned_states(h: torch.Tensor, qm: torch.Tensor, km: torch.Tensor) -> torch.Tensor:
    """The student's alignment of BiLSTM states h [B, L, D] (each query piece attends over the keyword's
    pieces, every other position over the query's) from the products of the first query_span positions
    with all, [B, n, L], rather than all with all: the other rows' scores are the transpose of these, and
    a masked score (-1e4) adds exactly 0 to a softmax that has an unmasked one. A row with no query piece
    at all attends, as in the student, evenly over all L positions."""
    n = query_span(qm)
    hq = h[:, :n]
    s = hq @ h.transpose(1, 2) / h.shape[-1] ** 0.5
    to_k = torch.softmax(s.masked_fill(~km[:, None, :], -1e4), -1) @ h
    to_q = torch.softmax(s.transpose(1, 2).masked_fill(~qm[:, None, :n], -1e4), -1) @ hq
    empty = ~qm.any(1)
    if bool(empty.any()):
        to_q = torch.where(empty[:, None, None], h.mean(1, keepdim=True).expand_as(to_q), to_q)
    to_k = torch.cat([to_k, to_q[:, n:]], 1)
    return torch.where(qm[:, :, None], to_k, to_q)


def _direction(lstm: nn.LSTM, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """One direction of `lstm` (its weights with `suffix`) run left to right over x."""
    w = [getattr(lstm, f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h0 = x.new_zeros((1, x.shape[0], lstm.hidden_size))
    return torch.lstm(x, (h0, h0), w, True, 1, 0.0, lstm.training, False, True)[0]


def packed_bilstm(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one-layer BiLSTM `lstm` as over packed sequences: the forward direction reads x as is
    (trailing padding comes after every real token), the backward one each row's real tokens reversed
    in place, its states then put back in order (the reversal is its own inverse)."""
    length = mask.sum(1, keepdim=True)
    pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    rev = torch.where(pos < length, length - 1 - pos, pos)
    backward = _direction(lstm, x.gather(1, rev.unsqueeze(-1).expand_as(x)), "_reverse")
    backward = backward.gather(1, rev.unsqueeze(-1).expand_as(backward))
    return torch.cat([_direction(lstm, x, ""), backward], -1)


def masked_mean_max(h: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
    """Masked mean and max over the sequence; m is [B, L, 1]."""
    return [(h * m).sum(1) / m.sum(1).clamp_min(1.0), h.masked_fill(m == 0, -1e4).amax(1)]


@torch.inference_mode()
def score_pairs(model: nn.Module, tok: PairTokenizer, queries: list[str], keywords: list[str],
                batch_size: int) -> np.ndarray:
    """Logits of (query, keyword) pairs, `batch_size` pairs per forward pass: float32 [N]."""
    out = []
    for s in range(0, len(queries), batch_size):
        ids, mask = tok(queries[s:s + batch_size], keywords[s:s + batch_size])
        out.append(model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class BiLSTMConfig:
    vocab_size: int = 30522
    embed_dim: int = 384
    # 64-d projection and 32 units per direction (were 128 and 64): on the EPYC host the forward pass took
    # 1.8-2.0x less time a pair in batches of 64 and 1.8-1.9x less a re-rank request (oneDNN's LSTM calls
    # 2.8x less time); 40 or 48 units gave 1.13-1.18x. Same teacher and set, several seeds: test ROC-AUC
    # 0.739 against 0.741 (97.7% against 97.9% of the teacher), re-ranked nDCG@10 0.344 against 0.342
    # (docs/experiments.md, 2026-12-07)
    proj_dim: int = 64
    hidden: int = 32
    # word pieces of [CLS] query [SEP] keyword [SEP]; longer pairs lose pieces from the longer side (the
    # title). A batch's LSTM runs as many steps as its longest pair, and batches of 64 dev pairs reach
    # 47 pieces at the median under a cap of 48, where the median pair has 25. At 40 (4% of dev pairs cut,
    # against 0.8% at 48): 1.12-1.16x faster a pair in batches of 64 and 1.06x a re-rank request, test
    # ROC-AUC 0.738 against 0.741, re-ranked nDCG@10 -0.003 [-0.012, +0.007] (docs/experiments.md,
    # 2026-12-07); 36 cost the re-ranking 0.006-0.009.
    max_length: int = 40
    # cross-attention between the query's and the keyword's BiLSTM states (ESIM-style alignment and
    # composition) plus exact-match features from the embeddings; False = the plain BiLSTM
    interaction: bool = False
    # each LSTM direction reads only the row's real tokens, so a pair's score does not depend on how
    # far its batch is padded; False (checkpoints from before) = the backward direction also reads the
    # batch's trailing padding
    packed: bool = False


class BiLSTMStudent(nn.Module):
    def __init__(self, config: BiLSTMConfig, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        if embeddings is not None:
            self.embed.weight.data.copy_(embeddings)
        self.embed.weight.requires_grad_(False)  # the teacher's embeddings, frozen
        self.proj = nn.Linear(config.embed_dim, config.proj_dim)
        self.lstm = nn.LSTM(config.proj_dim, config.hidden, batch_first=True, bidirectional=True)
        features = 4 * config.hidden
        if config.interaction:
            self.compose = nn.Linear(8 * config.hidden, config.hidden)
            features += 2 * config.hidden + 2
        self.head = nn.Sequential(nn.Linear(features, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.embed(input_ids)
        x = torch.tanh(self.proj(e))
        h = self._packed_lstm(x, attention_mask) if self.config.packed else self.lstm(x)[0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        feats = masked_mean_max(h, m)
        if self.config.interaction:
            feats += self._interact(input_ids, attention_mask, e, h)
        return self.head(torch.cat(feats, -1)).squeeze(-1)

    def _packed_lstm(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return packed_bilstm(self.lstm, x, mask)

    def _interact(self, ids, mask, e, h) -> list[torch.Tensor]:
        qm, km = pair_segments(ids, mask)
        # each query token attends over the keyword's tokens and each keyword token over the query's
        a = h @ h.transpose(1, 2) / h.shape[-1] ** 0.5
        to_k = torch.softmax(a.masked_fill(~km[:, None, :], -1e4), -1) @ h
        to_q = torch.softmax(a.masked_fill(~qm[:, None, :], -1e4), -1) @ h
        aligned = torch.where(qm[..., None], to_k, to_q)
        g = torch.relu(self.compose(torch.cat([h, aligned, h - aligned, h * aligned], -1)))
        words = (qm | km).unsqueeze(-1).to(h.dtype)
        return masked_mean_max(g, words) + list(exact_match(e, qm, km))

    def inference(self, precision: str = "fp32") -> "BiLSTMScorer":
        """A snapshot of this model in its inference form (BiLSTMScorer): the same logits, less work;
        precision 'bf16' runs its LSTM in bf16 (BiLSTMScorer)."""
        return BiLSTMScorer(self, precision).eval()

    def tokenizer(self) -> PairTokenizer:
        """Built once per model: parsing tokenizer.json costs milliseconds per call otherwise."""
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = PairTokenizer(minilm_dir() / "tokenizer.json", self.config.max_length)
        return self._tokenizer

    def score(self, queries: list[str], keywords: list[str], batch_size: int = 256) -> np.ndarray:
        return score_pairs(self, self.tokenizer(), queries, keywords, batch_size)

    def save(self, out_dir) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, ckpt) -> "BiLSTMStudent":
        ckpt = Path(ckpt)
        if not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"{ckpt}: no BiLSTM checkpoint (config.json); run training.bilstm")
        model = cls(read_config(BiLSTMConfig, ckpt / "config.json"))
        load_weights(model, read_tensors(ckpt / "model.safetensors"), ckpt / "model.safetensors")
        return model.eval()


class BiLSTMScorer(nn.Module):
    """The inference form of a trained BiLSTMStudent (`student.inference()`): the same logits to float
    rounding (tested within 1e-5) for less work per pair. The re-ranker export traces it and
    training.evaluate scores and times it.

    - The embeddings are frozen and the projection reads one token at a time, so tanh(proj(E)) is
      computed once over the vocabulary: one [V, proj_dim] table lookup replaces the embedding lookup
      and a [B * L, embed_dim] x [embed_dim, proj_dim] product per batch.
    - The exact-match features read rows of E normalised once, not normalised per token.
    - The alignment and the exact match form only the query's rows of their [L, L] products
      (aligned_states, exact_match_unit): [B, n, L] with n one past the batch's last query piece, about
      a quarter of L on Home Depot pairs; each softmax runs over the rows it needs, not two over all.
    - The composition layer W [h, a, h - a, h * a] runs as (W1 + W3) h + (W2 - W3) a + W4 (h * a),
      without concatenating a [B, L, 8 * hidden] tensor.

    It copies what it needs: a snapshot, unchanged by later training of the student.

    precision 'bf16' stores the projected table and the LSTM's weights in bf16, so the recurrence (about
    half the forward pass) runs as oneDNN's bf16 LSTM; its states go on in fp32. That pays only on bf16
    matrix hardware (AMX-BF16 tiles here: the forward pass took 0.209 against 0.273 ms a pair, batches
    of 64, two threads, at 64 units; at 32 units AVX512-BF16 gained only 1.04-1.08x). On the 7345 Home
    Depot dev pairs its logits stayed within 0.0071 of fp32's (mean 0.0009) and ROC-AUC was the same to five
    decimals."""

    PRECISIONS = ("fp32", "bf16")

    def __init__(self, student: BiLSTMStudent, precision: str = "fp32"):
        super().__init__()
        if precision not in self.PRECISIONS:
            raise ValueError(f"BiLSTM inference precision must be one of {', '.join(self.PRECISIONS)}, "
                             f"got {precision!r}")
        c = self.config = student.config
        self.precision = precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        with torch.no_grad():
            e = student.embed.weight
            self.register_buffer("projected", torch.tanh(student.proj(e)).to(dtype).contiguous())
            if c.interaction:
                self.register_buffer("unit", F.normalize(e, dim=-1).contiguous())
                w_h, w_a, w_d, w_p = student.compose.weight.split(2 * c.hidden, dim=1)
                self.register_buffer("w_state", (w_h + w_d).t().contiguous())
                self.register_buffer("w_aligned", (w_a - w_d).t().contiguous())
                self.register_buffer("w_product", w_p.t().contiguous())
                self.register_buffer("b_compose", student.compose.bias.detach().clone())
        self.lstm = copy.deepcopy(student.lstm).to(dtype)
        self.head = copy.deepcopy(student.head)
        self._tokenizer = student.tokenizer()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = F.embedding(input_ids, self.projected)
        h = (packed_bilstm(self.lstm, x, attention_mask) if self.config.packed else self.lstm(x)[0]).float()
        feats = masked_mean_max(h, attention_mask.unsqueeze(-1).to(h.dtype))
        if self.config.interaction:
            qm, km = pair_segments(input_ids, attention_mask)
            aligned = aligned_states(h, qm, km)
            g = torch.relu(h @ self.w_state + self.b_compose + aligned @ self.w_aligned
                           + (h * aligned) @ self.w_product)
            feats += masked_mean_max(g, (qm | km).unsqueeze(-1).to(h.dtype))
            feats += list(exact_match_unit(F.embedding(input_ids, self.unit), qm, km))
        return self.head(torch.cat(feats, -1)).squeeze(-1)

    def score(self, queries: list[str], keywords: list[str], batch_size: int = 256) -> np.ndarray:
        return score_pairs(self, self._tokenizer, queries, keywords, batch_size)


@one_line_errors("bilstm")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", required=True, help="TSV from training.distill_data")
    ap.add_argument("--sources", type=source_list(SOURCES), default=",".join(SOURCES),
                    help="comma-separated sources to train on")
    ap.add_argument("--teacher", required=True, help="teacher checkpoint (its embeddings are reused)")
    ap.add_argument("--out", default="artifacts/bilstm")
    ap.add_argument("--label-weight", type=nonnegative_float, default=0.5)
    ap.add_argument("--proj-dim", type=positive_int, default=BiLSTMConfig.proj_dim, help="embedding projection width")
    ap.add_argument("--hidden", type=positive_int, default=BiLSTMConfig.hidden, help="LSTM units per direction")
    ap.add_argument("--max-length", type=pair_length, default=BiLSTMConfig.max_length,
                    help="word pieces of [CLS] query [SEP] keyword [SEP] read, truncated longest-first")
    ap.add_argument("--no-interaction", dest="interaction", action="store_false",
                    help="the plain BiLSTM: no cross-attention between query and keyword states and no "
                         "exact-match features (test ROC-AUC 0.680 against 0.740 with them)")
    add_loop_args(ap, epochs=2.0, lr=2e-3, batch_size=64, eval_every=500)
    args = ap.parse_args(argv)
    if args.freeze_word_embeddings:
        ap.error("--freeze-word-embeddings: the BiLSTM's embeddings (the teacher's) are always frozen")
    if is_main():
        print(f"bilstm: {json.dumps(vars(args))}", flush=True)
    rows = read_rows(args.distill, tuple(args.sources.split(",")))
    teacher = CrossEncoder.load(args.teacher)
    emb = teacher.encoder.bert.embeddings.word_embeddings.weight.detach().clone()
    model = BiLSTMStudent(BiLSTMConfig(vocab_size=emb.shape[0], embed_dim=emb.shape[1], proj_dim=args.proj_dim,
                                       hidden=args.hidden, max_length=args.max_length, interaction=args.interaction,
                                       packed=True), emb)
    del teacher
    tok = model.tokenizer()
    splits = split_pairs(load_pairs(args.data))
    dev = dev_sample(splits["dev"], args.dev_pairs, args.seed)
    lengths = [len(r.query) + len(r.keyword) for r in rows]

    def loss_fn(net, batch):
        b = [rows[i] for i in batch]
        ids, mask = tok([r.query for r in b], [r.keyword for r in b])
        logits = net(torch.from_numpy(ids), torch.from_numpy(mask))
        loss = F.mse_loss(logits, torch.tensor([r.teacher_logit for r in b]))
        has = torch.tensor([r.label is not None for r in b])
        if args.label_weight and has.any():
            y = torch.tensor([relevance_target(r.label) if r.label is not None else 0.0 for r in b])
            loss = loss + args.label_weight * F.binary_cross_entropy_with_logits(logits[has], y[has])
        return loss

    def evaluate(m):
        s = m.score([p.query for p in dev], [p.keyword for p in dev])
        return dev_roc_auc(s, dev)

    if is_main():  # before training (write_split says why)
        write_split(splits, Path(args.out) / "split.json")
    state = train_loop(model, loop_config(args), lambda e: bucketed_batches(lengths, args.batch_size, args.seed * 1000 + e),
                       loss_fn, evaluate, lambda m: m.save(args.out), desc="bilstm")
    if is_main():
        (Path(args.out) / "train_summary.json").write_text(json.dumps({**state, "sources": args.sources}, indent=2) + "\n")
        print(f"bilstm: {state['step']} steps in {state['train_minutes']} min, best dev ROC-AUC "
              f"{state['best']:.4f} -> {args.out}", flush=True)

    finish_distributed()

if __name__ == "__main__":
    main()
