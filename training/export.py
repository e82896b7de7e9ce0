"""Export a TwinBERT checkpoint for serving.

Writes, into --out:
  query_encoder.pt        TorchScript: (input_ids, attention_mask) int64 [B, L] -> token states fp32 [B, L, H]
  keyword_encoder.pt      TorchScript: (input_ids, attention_mask) -> pooled keyword vectors fp32 [B, D]
  pool_cross.safetensors  pooling / crossing parameters (kernels.PoolCrossParams)
  pool_cross.json         their config (hidden, dim, crossing)
  tokenizer.json          WordPiece tokenizer; tokenizer_config.json with max lengths
  export.json             checksums of the above and the source checkpoint

Both TorchScript files are checked against eager on shapes other than the traced ones.

With --reranker, a BiLSTM student checkpoint is exported too, into its own directory (the keyword
store names the twin export it was built from, so the twin export stays untouched):
  reranker.pt             TorchScript: ([CLS] query [SEP] keyword [SEP] ids, mask) int64 [B, L] -> logits fp32 [B]
  reranker_bf16.pt        the same with its LSTM in bf16 (what serving runs on bf16 hosts; logits fp32)
  reranker.json           max_length, source checkpoint and checksums
  tokenizer.json          the pair tokenizer's WordPiece vocabulary

    python -m training.export --checkpoint artifacts/model --out artifacts/export
    python -m training.export --reranker artifacts/bilstm --reranker-out artifacts/export_reranker
"""
from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kernels import pool_cross
from serving.rerank import RERANKER_TRACES
from training.artifacts import check_output_apart, replace_dir, sha256_file
from training.pretrained import minilm_dir
from training.twin import TwinBERT
from training.cli import one_line_errors, positive_int

TOLERANCE = 1e-5


class KeywordEncoder(nn.Module):
    """Encoder + attention pooling: what the offline indexer runs over the corpus."""

    def __init__(self, model: TwinBERT):
        super().__init__()
        self.encoder = model.keyword_encoder
        self.pool = model.pool_cross

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids, attention_mask)
        # the reference maths, plain aten ops: traced through the CPU path the file would call the C++
        # extension's op and load nowhere it is not built (the pooling is a sliver of the encode time)
        return pool_cross(states, attention_mask, self.pool.params(), backend="ref")[0]


def _example(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    real = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < real[:, None]).long()
    ids[:, 0] = 101
    return ids * mask, mask


def encoder_shape(encoder) -> dict:
    """export.json's "encoder" object: what serving.fast_bert needs beyond the weights of a
    training.twin.Encoder (serving.fast_bert.BertShape.from_json reads it)."""
    cfg = encoder.bert.config
    return {"heads": cfg.num_attention_heads, "layer_norm_eps": cfg.layer_norm_eps, "hidden_act": cfg.hidden_act}


def trace_checked(module: nn.Module, vocab: int, max_len: int) -> torch.jit.ScriptModule:
    """Trace, then require eager == TorchScript within TOLERANCE on untraced shapes."""
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks become trace-time constants; the check below proves the trace generalises.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, _example(2, max_len, vocab, 0), check_trace=False)
        for batch, length in ((1, max_len), (5, 3), (3, max_len), (7, 1)):
            args = _example(batch, length, vocab, batch * 100 + length)
            diff = (traced(*args) - module(*args)).abs().max().item()
            if not diff <= TOLERANCE:
                raise RuntimeError(f"TorchScript differs from eager by {diff:.3g} at B={batch}, L={length}")
    return traced


def _pair_example(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] query [SEP] keyword [SEP] rows of random ids, padded to `length` (at least 3)."""
    from training.bilstm import CLS_ID, SEP_ID
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for r in range(batch):
        real = int(torch.randint(3, length + 1, (1,), generator=g)) if r else length  # one row fills L
        q = int(torch.randint(0, real - 2, (1,), generator=g))
        row = [CLS_ID] + torch.randint(1000, vocab, (q,), generator=g).tolist() + [SEP_ID] + \
            torch.randint(1000, vocab, (real - q - 3,), generator=g).tolist() + [SEP_ID]
        ids[r, :real] = torch.tensor(row)
        mask[r, :real] = 1
    return ids, mask


def trace_reranker(model: nn.Module, vocab: int, max_len: int, reference: nn.Module | None = None,
                   tolerance: float = TOLERANCE) -> torch.jit.ScriptModule:
    """Trace the BiLSTM on pair-shaped input, then require TorchScript == `reference` (the model
    itself by default; the trained student when `model` is its inference form) within `tolerance` on
    untraced batch sizes and lengths (the query/keyword split moves with each row's [SEP])."""
    model = model.eval()
    reference = model if reference is None else reference.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, _pair_example(4, max_len, vocab, 0), check_trace=False)
        for batch, length in ((1, max_len), (5, 3), (3, 17), (64, max_len), (7, 4)):
            args = _pair_example(batch, length, vocab, batch * 100 + length)
            diff = (traced(*args) - reference(*args)).abs().max().item()
            if not diff <= tolerance:
                raise RuntimeError(f"reranker TorchScript differs from eager by {diff:.3g} at B={batch}, L={length}")
    return traced


# bump when the re-ranker export changes, so serving.build exports again
# 2: the file traces the student's inference form (training.bilstm.BiLSTMScorer), checked against the student
# 3: reranker_bf16.pt beside it, the inference form with its LSTM in bf16
# 4: the inference form forms only the query's rows of its alignment and exact-match products
RERANKER_FORMAT = 4
# how far the bf16 trace may stray from the fp32 student, in logits, on the check's random pairs; on the
# 7345 Home Depot dev pairs the bf16 form stayed within 0.0071 of fp32 (mean 0.0009), ROC-AUC unchanged
BF16_TOLERANCE = 0.05


def reranker_export_key(checkpoint: str | Path) -> dict:
    """What a re-ranker export was made from: its weights, its config and the export format.
    serving.build reuses an export only when all three match."""
    checkpoint = Path(checkpoint)
    return {"format": RERANKER_FORMAT, "checkpoint_sha256": sha256_file(checkpoint / "model.safetensors"),
            "config_sha256": sha256_file(checkpoint / "config.json")}


def export_reranker(checkpoint: str | Path, out: str | Path) -> Path:
    """Export a BiLSTM student (training.bilstm) as the TorchScript re-ranker; `out` is replaced whole."""
    from training.bilstm import BiLSTMStudent
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / "config.json").is_file() or not (checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint}: no BiLSTM checkpoint (config.json + model.safetensors); "
                                "run training.bilstm")
    check_output_apart(out, "--reranker-out", checkpoint=checkpoint)
    model = BiLSTMStudent.load(checkpoint)
    if not model.config.packed:
        warnings.warn(f"{checkpoint}: a BiLSTM trained before packed directions; its scores move with the "
                      "padding of the other candidates in a request (retrain with training.bilstm)", stacklevel=2)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for precision, name in RERANKER_TRACES.items():
        trace_reranker(model.inference(precision), model.config.vocab_size, model.config.max_length, reference=model,
                       tolerance=TOLERANCE if precision == "fp32" else BF16_TOLERANCE).save(str(tmp / name))
    shutil.copyfile(minilm_dir() / "tokenizer.json", tmp / "tokenizer.json")
    files = (*RERANKER_TRACES.values(), "tokenizer.json")
    (tmp / "reranker.json").write_text(json.dumps({
        "max_length": model.config.max_length,
        "checkpoint": str(checkpoint.resolve()),
        **reranker_export_key(checkpoint),
        "model_config": json.loads((checkpoint / "config.json").read_text()),
        "sha256": {name: sha256_file(tmp / name) for name in files},
    }, indent=2) + "\n")
    replace_dir(tmp, out)
    print(f"export: {checkpoint} -> {out} ({', '.join(files)}, reranker.json)", flush=True)
    return out


# 2: the keyword encoder traces the reference pooling (no C++ op in the file)
# 3: export.json names the encoder's head count, layer-norm epsilon and activation (serving.fast_bert
#    needs them); the keyword store names its export by export.json's checksum, so `make build` re-indexes
EXPORT_FORMAT = 3


def export(checkpoint: str | Path, out: str | Path) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_apart(out, "--out", checkpoint=checkpoint)
    model = TwinBERT.load(checkpoint)
    cfg = model.config
    vocab = model.query_encoder.bert.config.vocab_size
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trace_checked(model.query_encoder, vocab, cfg.query_max_len).save(str(tmp / "query_encoder.pt"))
    trace_checked(KeywordEncoder(model), vocab, cfg.keyword_max_len).save(str(tmp / "keyword_encoder.pt"))
    params = model.pool_cross.params()
    save_file({k: v.detach().float().contiguous() for k, v in params.state_dict().items()},
              str(tmp / "pool_cross.safetensors"))
    (tmp / "pool_cross.json").write_text(json.dumps(
        {"hidden": params.hidden, "dim": params.dim, "crossing": cfg.crossing,
         "trained_crossings": list(cfg.trained_crossings)}, indent=2) + "\n")
    shutil.copyfile(minilm_dir() / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps(
        {"query_max_len": cfg.query_max_len, "keyword_max_len": cfg.keyword_max_len}, indent=2) + "\n")
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / "export.json").write_text(json.dumps({
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": sha256_file(checkpoint / "model.safetensors"),
        "format": EXPORT_FORMAT,
        "model_config": json.loads(cfg.to_json()),
        "encoder": encoder_shape(model.query_encoder),
        "sha256": {name: sha256_file(tmp / name) for name in files},
    }, indent=2) + "\n")
    replace_dir(tmp, out)
    print(f"export: {checkpoint} -> {out} ({', '.join(files)})", flush=True)
    return out


@one_line_errors("export")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="TwinBERT checkpoint directory")
    ap.add_argument("--out", help="export directory for the TwinBERT files (written aside, then swapped in by rename)")
    ap.add_argument("--reranker", help="BiLSTM student checkpoint (training.bilstm) to export as the re-ranker")
    ap.add_argument("--reranker-out", help="export directory for the re-ranker (written aside, then swapped in by rename)")
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args(argv)
    if bool(args.checkpoint) != bool(args.out) or bool(args.reranker) != bool(args.reranker_out):
        ap.error("give --checkpoint with --out, and --reranker with --reranker-out")
    if not args.checkpoint and not args.reranker:
        ap.error("nothing to export: give --checkpoint/--out and/or --reranker/--reranker-out")
    try:  # an output replaced whole must not be, or hold, another input or output
        if args.out:
            check_output_apart(args.out, "--out", checkpoint=args.checkpoint, reranker_out=args.reranker_out,
                               reranker=args.reranker)
        if args.reranker_out:
            check_output_apart(args.reranker_out, "--reranker-out", reranker=args.reranker, out=args.out,
                               checkpoint=args.checkpoint)
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        export(args.checkpoint, args.out)
    if args.reranker:
        export_reranker(args.reranker, args.reranker_out)


if __name__ == "__main__":
    main()
