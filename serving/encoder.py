"""The query side of serving, shared by the `keyword_store` and `query_encoder` Triton models and the
in-process pipeline:
WordPiece tokenisation, padding trimmed to the batch's real length, the TorchScript encoder.

Queries are short (Home Depot: median 6 WordPiece tokens with [CLS]/[SEP], 84% at most 8) while the
tokenizer pads to `query_max_len` (16), and the encoder's cost grows with the padded width. Trailing
columns that are padding in every row are dropped, keeping a multiple of PAD_MULTIPLE columns so that
batches of similar queries still share one shape downstream. Padding gets zero attention and zero
pooling weight, so the real tokens' states are unchanged (to float rounding).

The TorchScript file is loaded with `torch.jit.optimize_for_inference` (oneDNN-prepacked weights):
1.3-1.7x faster for one query and about even at batches of 16 on this CPU (measured with 1 and 2
threads; results equal to the plain file within 2e-6). On hosts with bf16 matrix hardware (AMX-BF16
or AVX512-BF16) `QueryEncoder` runs serving.fast_bert's re-assembly of the same weights with bf16
matrix products instead (for one query 1.5-1.8x faster again on the AMX host, 2x on the EPYC host; the
`precision` argument, the models' `encoder_precision` parameter). The file
itself stays plain TorchScript, loadable by Triton's PyTorch backend.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from serving import fast_bert
from serving.requests import check_token_inputs, check_tokenized, decode_queries
from training.artifacts import int_field, load_torchscript, read_json_object, verify_checksums
from training.precision import PRECISIONS, resolve_serving
from training.tokenize import WordPiece, trim_padding as _trim_padding

PAD_MULTIPLE = 8


def trim_padding(ids: np.ndarray, mask: np.ndarray, multiple: int = PAD_MULTIPLE) -> tuple[np.ndarray, np.ndarray]:
    """`training.tokenize.trim_padding` at serving's multiple of columns."""
    return _trim_padding(ids, mask, multiple)


def optimized(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A frozen, oneDNN-optimised copy of `module` (left unchanged); `module` itself when the
    optimisation does not apply (it still runs, just slower)."""
    try:
        return torch.jit.optimize_for_inference(module)
    except Exception:
        return module


ENCODER_PRECISIONS = (*PRECISIONS, "torchscript")


def encoder_forward(plain: torch.jit.ScriptModule, shape: dict | None, precision: str, vocab: int, max_len: int,
                    where: str) -> tuple[torch.nn.Module, str]:
    """(module, path): the forward pass serving runs for the exported encoder `plain` at `precision`
    (ENCODER_PRECISIONS; QueryEncoder's docstring), `shape` being export.json's "encoder" object (None
    when the export predates it). The file is oneDNN-optimised only when it is what runs; a fast path
    that cannot be built or disagrees with the file falls back to it with a warning naming `where`."""
    if precision not in ENCODER_PRECISIONS:
        raise ValueError(f"encoder precision must be one of {', '.join(ENCODER_PRECISIONS)}; got {precision!r}")
    if precision == "torchscript":
        return optimized(plain), "torchscript"
    resolved = resolve_serving(precision)
    if precision == "auto" and resolved == "fp32":
        return optimized(plain), "torchscript (auto: no bf16 matrix hardware on this CPU)"
    if shape is None:
        why = ("export.json predates the encoder shape (export format 3); `make build` re-exports and "
               "re-indexes (the store names the export it was built from)")
    else:
        fast, why = fast_bert.build(plain, fast_bert.BertShape.from_json(shape), resolved, vocab, max_len)
        if fast is not None:
            return fast, why
    warnings.warn(f"{where}: {why}; serving the TorchScript file (optimised)", stacklevel=3)
    return optimized(plain), f"torchscript ({why})"


def query_tokenizer(version_dir: str | Path, more: tuple[str, ...] = ()) -> WordPiece:
    """The query tokenizer of an export (or a served version holding its files and export.json), after
    checking tokenizer.json, tokenizer_config.json and the files in `more` against export.json's
    checksums: a corrupt file is refused by name instead of encoding queries into other vectors."""
    version_dir = Path(version_dir)
    verify_checksums(version_dir, "export.json", ["tokenizer.json", "tokenizer_config.json", *more], required=False)
    config = version_dir / "tokenizer_config.json"
    return WordPiece(version_dir / "tokenizer.json", int_field(read_json_object(config), "query_max_len", config, 1))


class QueryEncoder:
    """`version_dir` holds query_encoder.pt, tokenizer.json, tokenizer_config.json and export.json.

    `precision` picks the forward pass: `fp32` or `bf16` run serving.fast_bert's re-assembled FastBert,
    checked against the file when it loads; `torchscript` runs the file through
    torch.jit.optimize_for_inference; `auto` is `bf16` where the CPU has AMX-BF16 or AVX512-BF16 (measured
    on both) and `torchscript` elsewhere (FastBert in fp32 measured no faster than the optimised file). Exports that
    predate the encoder shape in export.json (format 3) and a fast path that fails its check run the
    optimised file too. `self.path` says which runs, and why when it fell back."""

    def __init__(self, version_dir: str | Path, optimize: bool = True, precision: str = "auto"):
        version_dir = Path(version_dir)
        self.tokenizer = query_tokenizer(version_dir, ("query_encoder.pt",))
        plain = load_torchscript(version_dir / "query_encoder.pt").eval()
        self.vocab_size = int(plain.bert.embeddings.word_embeddings.weight.shape[0])  # gone once frozen
        self.max_length = int(plain.bert.embeddings.position_embeddings.weight.shape[0])
        if not optimize:
            self.encoder, self.path = plain, "torchscript (not optimised)"
            return
        made = version_dir / "export.json"
        shape = read_json_object(made).get("encoder") if made.is_file() else None
        self.encoder, self.path = encoder_forward(plain, shape, precision, self.vocab_size,
                                                  self.tokenizer.max_length, str(version_dir))

    def tokenize(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return trim_padding(*self.tokenizer(queries))

    def tokenize_request(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """QUERY tensor [B, 1] of bytes -> trimmed (ids, mask); BadRequest for blank or non-UTF-8."""
        ids, mask = self.tokenize(decode_queries(raw))
        check_tokenized(mask)
        return ids, mask

    def check_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Client-sent INPUT_IDS + ATTENTION_MASK -> validated, trimmed (ids, mask)."""
        check_token_inputs(ids, mask, self.vocab_size, self.max_length)
        return trim_padding(ids, mask)

    @torch.inference_mode()
    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token states [B, L, H] fp32. Read-only arrays (Triton can hand them over) are copied first:
        torch.from_numpy wants writeable ones."""
        if not (ids.flags.writeable and mask.flags.writeable):
            ids, mask = np.array(ids), np.array(mask)
        return self.encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    def encode_many(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Several requests' (ids, mask) in one forward pass: rows padded to the widest (the padding is
        masked out, so real tokens' states do not change), states cut back to each request's width.
        One request goes through as it is: one 8-token query in-process took 1.27-1.31 ms that way
        against 1.43-1.50 through np.pad and np.concatenate, as every request went before (ad-hoc probe,
        medians of 1,000, 2026-12-06; in the served stub the difference stayed within the run-to-run
        spread)."""
        if len(parts) == 1:
            return [self(*parts[0])]
        width = max(ids.shape[1] for ids, _ in parts)
        rows = sum(len(ids) for ids, _ in parts)
        all_ids = np.zeros((rows, width), parts[0][0].dtype)  # the requests' dtypes, as np.concatenate kept them
        all_mask = np.zeros((rows, width), parts[0][1].dtype)
        start = 0
        for ids, mask in parts:
            all_ids[start:start + len(ids), :ids.shape[1]] = ids
            all_mask[start:start + len(ids), :ids.shape[1]] = mask
            start += len(ids)
        states = self(all_ids, all_mask)
        out, start = [], 0
        for ids, _ in parts:
            out.append(states[start:start + len(ids), :ids.shape[1]])
            start += len(ids)
        return out
