"""keyword_store's BYTES serialiser writes exactly what the Python backend's own does."""
import importlib.util

import numpy as np
import pytest

from serving import bytes_tensors
from serving.server import _pytriton_root


def _backend_utils():
    path = _pytriton_root() / "backends" / "python" / "triton_python_backend_utils.py"
    spec = importlib.util.spec_from_file_location("backend_utils_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [
    np.array([b"12345", b"", "1/2 in. x 10 ft. \u00b0".encode()], dtype=object),          # ids, texts
    np.array([[b"a", b"bc"], [b"\x00\xff", b"d" * 300]], dtype=object),                    # [B, K], any bytes
    np.array(["drill", "caf\u00e9", 7, 2.5], dtype=object),                                # str() of the rest
    np.array([b"x", b"yy"], dtype=object)[::-1],                                           # not contiguous
    np.array([[b"left", b"right"]], dtype=object).T,                                        # C order, transposed
    np.array([b"ab\x00", b"c"], dtype=np.bytes_),                                          # numpy bytes
]


@pytest.mark.parametrize("tensor", CASES)
def test_same_bytes_as_the_backend(tensor):
    assert bytes_tensors.serialize_byte_tensor(tensor) == _backend_utils().serialize_byte_tensor(tensor)


def test_empty_and_non_bytes_tensors_are_answered_as_the_backend_does():
    backend = _backend_utils()
    for tensor in (np.array([], dtype=object), np.zeros((2, 0), dtype=object), np.array([1.0, 2.0], np.float32)):
        assert bytes_tensors.serialize_byte_tensor(tensor) == backend.serialize_byte_tensor(tensor)


def test_install_replaces_the_module_function():
    backend = _backend_utils()
    bytes_tensors.install(backend)
    assert backend.serialize_byte_tensor is bytes_tensors.serialize_byte_tensor
