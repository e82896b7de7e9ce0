"""Error responses of the Python-backend models (imported inside Triton's stub, where
triton_python_backend_utils exists; `failure_message` is plain Python and tested in-process).

A request's bad input is INVALID_ARGUMENT with the validator's message. Anything unexpected is
INTERNAL with a one-line message (a TorchScript error carries its whole interpreter traceback, whose
last line is the cause), while the server log gets the full traceback for the operator.
"""
from __future__ import annotations

import traceback


def failure_message(what: str, e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{what} failed: {type(e).__name__}: {lines[-1] if lines else 'no message'}"


def invalid(e: BaseException | str):
    import triton_python_backend_utils as pb_utils
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))


def internal(what: str, e: BaseException):
    import triton_python_backend_utils as pb_utils
    pb_utils.Logger.log_error(f"{what} failed:\n{''.join(traceback.format_exception(e))}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(failure_message(what, e),
                                                                 pb_utils.TritonError.INTERNAL))
