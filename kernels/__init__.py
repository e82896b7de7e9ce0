"""Attention pooling + crossing: the one implementation of TwinBERT's post-encoder maths.

Importing this package never touches CUDA (CPU-only CI imports it).
"""
from kernels.pool_cross import (
    CROSSINGS,
    PoolCrossParams,
    pool_cross,
    pool_cross_ref,
)

__all__ = ["CROSSINGS", "PoolCrossParams", "pool_cross", "pool_cross_ref"]
