"""Compile cached_attention.cc into a shared library ONNX Runtime loads (SessionOptions.register_custom_ops_library).

The headers: ONNX Runtime's wheels ship none, so they come from elsewhere (the Makefile unpacks Debian's
libonnxruntime-dev into the virtualenv's include/onnxruntime). find_headers looks, in order, at $PARD_ORT_INCLUDE,
<sys.prefix>/include/onnxruntime, /usr/local/include/onnxruntime and /usr/include/onnxruntime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import SOURCE

HEADER = "onnxruntime_cxx_api.h"
INCLUDE_ENV = "PARD_ORT_INCLUDE"
COMPILER_ENV = "CXX"
# -O3 vectorizes the kernel's loops; the hot function has x86-64-v4/v3/baseline clones chosen at load time, so the
# library runs on any x86-64 CPU, not only the one that compiled it.
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden")


class CompileError(RuntimeError):
    """The library cannot be compiled here; the message says what is missing and how to get it."""


def find_headers() -> Path | None:
    """The folder holding ONNX Runtime's onnxruntime_cxx_api.h, or None."""
    candidates = [os.environ.get(INCLUDE_ENV)] if os.environ.get(INCLUDE_ENV) else []
    candidates += [Path(sys.prefix) / "include" / "onnxruntime", "/usr/local/include/onnxruntime"]
    candidates += ["/usr/include/onnxruntime"]
    return next((Path(c) for c in candidates if (Path(c) / HEADER).is_file()), None)


def find_compiler() -> str | None:
    return shutil.which(os.environ.get(COMPILER_ENV, "g++"))


def missing() -> str | None:
    """Why compile_library would fail here (a sentence naming the fix), or None when it can run."""
    if find_compiler() is None:
        return f"no C++ compiler ({os.environ.get(COMPILER_ENV, 'g++')}; install g++ or set {COMPILER_ENV})"
    if find_headers() is None:
        return (
            f"ONNX Runtime's C++ API headers ({HEADER}) are not installed; run `make install`, which unpacks them "
            f"into the virtualenv, or set {INCLUDE_ENV} to the folder holding them"
        )
    return None


def compile_library(destination: Path) -> Path:
    """Compile the op into `destination` (a file path); returns it. Raises CompileError."""
    reason = missing()
    if reason:
        raise CompileError(reason)
    command = [find_compiler(), *FLAGS, f"-I{find_headers()}", str(SOURCE), "-o", str(destination)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
        raise CompileError(f"compiling {SOURCE.name} failed: {first}")
    return destination
