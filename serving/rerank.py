"""Third retrieval stage: the BiLSTM student re-orders a query's cosine candidates.

TwinBERT's cosine top-K' is cheap and recalls well, but orders its top 10 worse than a cross model
does; the BiLSTM student reads each (query, candidate) pair jointly (it is distilled from the
teacher) and re-orders the candidates. Used by the `reranker` Triton model and by the in-process
pipeline the benchmarks compare with: one implementation of the stage.

Scores are sigmoid(BiLSTM logit): the student regresses the teacher's logit, so they read as the
teacher's relevance probability. Pairs are tokenised as in training ([CLS] query [SEP] keyword
[SEP], longest-first truncation) and a request's candidates run as one batch, padded to its longest
pair, as `training.evaluate` scores them.

`precision` picks the export's trace: fp32 (`reranker.pt`), or bf16 (`reranker_bf16.pt`, its LSTM in
bf16: logits within 0.0071 of fp32's on the Home Depot dev pairs, the same test ROC-AUC; on an AMX
host a served `retrieve_rerank` request took 1.13x less time, interleaved with fp32). `auto` (the
`reranker` model's `precision` parameter as shipped) is bf16 where the CPU has AMX-BF16 or AVX512-BF16,
as for the query encoder (training.precision.resolve_serving).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.artifacts import ArtifactError, int_field, load_torchscript, verify_checksums
from training.precision import resolve_serving
from training.tokenize import PairTokenizer

# the re-ranker export's TorchScript file for each precision (training.export writes both)
RERANKER_TRACES = {"fp32": "reranker.pt", "bf16": "reranker_bf16.pt"}


class Reranker:
    def __init__(self, export_dir: str | Path, precision: str = "fp32"):
        d = Path(export_dir)
        self.precision = resolve_serving(precision)
        trace = RERANKER_TRACES[self.precision]
        for name in (trace, "reranker.json", "tokenizer.json"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: re-ranker export has no {name}; run "
                                        "`python -m training.export --reranker CKPT --reranker-out DIR`")
        self.config = verify_checksums(d, "reranker.json", [trace, "tokenizer.json"])
        max_len = int_field(self.config, "max_length", d / "reranker.json", 1)
        trained = (self.config.get("model_config") or {}).get("max_length", max_len)
        if max_len != trained:
            raise ArtifactError(f"{d / 'reranker.json'}: max_length {max_len!r} is not the positive int the "
                                f"model was trained with ({trained!r})")
        self.model = load_torchscript(d / trace).eval()
        self.tokenizer = PairTokenizer(d / "tokenizer.json", max_len)

    @torch.inference_mode()
    def scores(self, query: str, keywords: list[str]) -> np.ndarray:
        """sigmoid(logit) of each (query, keyword) pair, in one batch: float32 [N]."""
        if not keywords:
            return np.zeros(0, np.float32)
        ids, mask = self.tokenizer([query] * len(keywords), keywords)
        logits = self.model(torch.from_numpy(ids), torch.from_numpy(mask))
        return torch.sigmoid(logits).numpy().astype(np.float32, copy=False)

    def rerank(self, query: str, ids: np.ndarray, texts: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query's candidates (ids, texts: bytes objects [N]) -> the top min(k, N) by the
        re-ranker's score, as (ids, texts, scores). Ties keep the candidates' order."""
        keywords = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
        s = self.scores(query, keywords)
        order = np.argsort(-s, kind="stable")[:k]
        return ids[order], texts[order], s[order]
