"""The ONNX Runtime adapter: one InferenceSession per graph, created once per Session."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import PLUGIN, GraphSpec
from ..errors import EngineError

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in _PREFERRED_PROVIDERS if p in available]


class OrtGraph:
    def __init__(self, path: Path, spec: GraphSpec, *, threads: int | None = None, providers: Sequence[str] | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Draft and target alternate: a session's threads must stop spinning when its run returns, or they fight
        # the other session's threads for the cores (2 cores: PARD 19.4 -> 32.3 tok/s, ar unchanged).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = _inference_session(path, spec, options, list(providers or default_providers()))
        except ImportError as e:
            raise EngineError(
                f"{path} holds PardAttention nodes, which ONNX Runtime runs through onnxruntime-extensions ({e}); "
                "pip install onnx onnxruntime-extensions"
            ) from e
        except Exception as e:  # onnxruntime's exceptions share no base class
            raise EngineError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}; rebuild the engine") from e
        _check_io(path, self.session, spec)
        self.output_names = [o.name for o in self.session.get_outputs()]
        past = next(i for i in self.session.get_inputs() if i.name in spec.past_names)
        if past.type not in _NUMPY_DTYPES:
            raise EngineError(f"{path}: KV cache type {past.type} is not supported by the onnxruntime runtime on this host")
        self.kv_dtype = _NUMPY_DTYPES[past.type]
        self.busy_s = 0.0  # time inside onnxruntime, for measuring the runtime's own overhead

    def run(self, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Outputs by name; those in `skip` are left out (ONNX Runtime then skips the nodes only they need)."""
        names = [n for n in self.output_names if n not in skip] if skip else self.output_names
        start = time.perf_counter()
        outputs = self.session.run(names, feeds)
        self.busy_s += time.perf_counter() - start
        return dict(zip(names, outputs))


def _inference_session(path: Path, spec: GraphSpec, options: ort.SessionOptions, providers: list[str]):
    if spec.attention == PLUGIN:  # the op and the graph pass need onnx and onnxruntime-extensions: plugin engines only
        from plugins.pard_attention.onnxruntime_op import inference_session

        return inference_session(path, options, providers)
    return ort.InferenceSession(str(path), options, providers=providers)


def _check_io(path: Path, session: ort.InferenceSession, spec: GraphSpec) -> None:
    found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    expected = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if found != expected:
        raise EngineError(f"{path} does not have the inputs/outputs its manifest declares; rebuild the engine")
