"""Export a TwinBERT checkpoint for serving.

Writes, into --out:
  query_encoder.pt        TorchScript: (input_ids, attention_mask) int64 [B, L] -> token states fp32 [B, L, H]
  keyword_encoder.pt      TorchScript: (input_ids, attention_mask) -> pooled keyword vectors fp32 [B, D]
  pool_cross.safetensors  pooling / crossing parameters (kernels.PoolCrossParams)
  pool_cross.json         their config (hidden, dim, crossing)
  tokenizer.json          WordPiece tokenizer; tokenizer_config.json with max lengths
  export.json             checksums of the above and the source checkpoint

Both TorchScript files are checked against eager on shapes other than the traced ones.

    python -m training.export --checkpoint artifacts/model --out artifacts/export
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
from serving.keyword_store import sha256_file
from training.pretrained import minilm_dir
from training.twin import TwinBERT

TOLERANCE = 1e-5


class KeywordEncoder(nn.Module):
    """Encoder + attention pooling: what the offline indexer runs over the corpus."""

    def __init__(self, model: TwinBERT):
        super().__init__()
        self.encoder = model.keyword_encoder
        self.pool = model.pool_cross

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids, attention_mask)
        return pool_cross(states, attention_mask, self.pool.params())[0]


def _example(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    real = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < real[:, None]).long()
    ids[:, 0] = 101
    return ids * mask, mask


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


def export(checkpoint: str | Path, out: str | Path) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
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
        "model_config": json.loads(cfg.to_json()),
        "sha256": {name: sha256_file(tmp / name) for name in files},
    }, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the export appears whole or not at all
    print(f"export: {checkpoint} -> {out} ({', '.join(files)})", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="TwinBERT checkpoint directory")
    ap.add_argument("--out", required=True, help="export directory (replaced atomically)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    export(args.checkpoint, args.out)


if __name__ == "__main__":
    main()
