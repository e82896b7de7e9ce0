"""A faster BYTES serialiser for Python-backend models that answer with many strings.

The Python backend's stub turns every BYTES output (a numpy object array) into Triton's wire format
(each element: 4-byte little-endian length, then its bytes) by calling
`triton_python_backend_utils.serialize_byte_tensor`, which walks the array with `np.nditer` and one
`struct.pack` per element. `keyword_store` answers each `retrieve` with 100 ids and 100 texts, and
that walk took about 50 us of the 130-150 us its respond stage spent building output tensors.
`serialize_byte_tensor` below writes the same bytes from one `tolist()` and a join; `install` puts it
in place of the backend's in the stub process that calls it (the stub looks the function up on the
module when it serialises, so the replacement applies to every BYTES output of that process). Measured
(`python -m client.suite bench`'s stage counters, three alternated servers each, 2026-12-06):
keyword_store's respond stage 142-147 us per `retrieve` top-100 with the backend's function,
92-97 us with this one.
"""
from __future__ import annotations

import struct

import numpy as np

_LENGTH = struct.Struct("<I").pack


def serialize_byte_tensor(tensor: np.ndarray):
    """The backend's `serialize_byte_tensor`, same bytes out: () for an empty array, None for a
    non-BYTES dtype; elements in C order, bytes kept as they are and anything else as UTF-8 of str()."""
    if tensor.size == 0:
        return ()
    if tensor.dtype != np.object_ and tensor.dtype.type != np.bytes_:
        return None
    parts = []
    for item in tensor.ravel().tolist():  # ravel reads in C order, whatever the strides
        if type(item) is not bytes:
            item = str(item).encode("utf-8")
        parts.append(_LENGTH(len(item)))
        parts.append(item)
    return b"".join(parts)


def install(pb_utils) -> None:
    """Serialise this stub process's BYTES outputs with `serialize_byte_tensor` above."""
    pb_utils.serialize_byte_tensor = serialize_byte_tensor
