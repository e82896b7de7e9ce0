"""Synchronous gRPC client over `tritonclient.grpc` for the `retrieve` ensemble."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

DEFAULT_URL = f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}"


class ClientError(RuntimeError):
    """A request failed; carries the server's status and message."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    keyword_id: str
    keyword: str

    def to_dict(self) -> dict:
        return asdict(self)


class TwinBertClient:
    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 10.0, model: str = "retrieve"):
        self.url, self.timeout_s, self.model = url, timeout_s, model
        self._client = grpcclient.InferenceServerClient(url=url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "TwinBertClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def retrieve(self, query: str, k: int = 10) -> list[Hit]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        if not queries:
            return []
        q = grpcclient.InferInput("QUERY", [len(queries), 1], "BYTES")
        q.set_data_from_numpy(np.array([[s.encode("utf-8")] for s in queries], dtype=object))
        top_k = grpcclient.InferInput("TOP_K", [len(queries), 1], "INT32")
        top_k.set_data_from_numpy(np.full((len(queries), 1), k, dtype=np.int32))
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("KEYWORD_IDS", "KEYWORD_TEXTS", "SCORES")]
        try:
            result = self._client.infer(self.model, [q, top_k], outputs=outputs, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise ClientError(e.message(), e.status()) from None
        ids, texts, scores = (result.as_numpy(n) for n in ("KEYWORD_IDS", "KEYWORD_TEXTS", "SCORES"))
        return [[Hit(r + 1, float(scores[row, r]), ids[row, r].decode(), texts[row, r].decode())
                 for r in range(ids.shape[1])] for row in range(len(queries))]
