"""gRPC client for the TwinBERT Triton ensembles."""
from client.core import AsyncTwinBertClient, ClientError, ClientOptions, Hit, InvalidRequest, RetryPolicy, TwinBertClient

__all__ = ["AsyncTwinBertClient", "ClientError", "ClientOptions", "Hit", "InvalidRequest", "RetryPolicy", "TwinBertClient"]
