"""Where TensorRT is optional: one import helper for the builder and the runtime, and one message when it is absent.

`tensorrt` is imported only inside the functions that need it, never at module import: this machine's CI has no
TensorRT (the PyPI `tensorrt` packages need NVIDIA's own index and a GPU host)."""

from __future__ import annotations

import importlib

from .errors import BackendUnavailableError

TENSORRT_MISSING = (
    "TensorRT is not installed; install tensorrt on an NVIDIA GPU host (pip install tensorrt) or use the onnxruntime "
    "backend"
)


def tensorrt_available() -> bool:
    try:
        require_tensorrt()
    except BackendUnavailableError:
        return False
    return True


def require_tensorrt():
    """The `tensorrt` module, or BackendUnavailableError with TENSORRT_MISSING (also when it is a broken stub)."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as e:  # the PyPI stubs raise ImportError for a missing libnvinfer / libnvonnxparser
        raise BackendUnavailableError(TENSORRT_MISSING) from e
