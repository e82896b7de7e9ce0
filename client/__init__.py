"""gRPC client for the TwinBERT Triton ensembles."""
from client.core import ClientError, Hit, TwinBertClient

__all__ = ["ClientError", "Hit", "TwinBertClient"]
