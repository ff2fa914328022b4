"""`pard::PardAttention` on ONNX Runtime (CPU), so plugin-flavour graphs are checked without TensorRT.

onnxruntime-extensions runs Python ops only in its own domain `ai.onnx.contrib`, with every node attribute
declared, and only for float32 (float16 aborts the process). So the graph keeps domain `pard` on disk (what
TensorRT parses) and `to_contrib_domain` moves the nodes over just before ONNX Runtime loads it. The op calls the
numpy reference on copies of the caches: ONNX Runtime outputs new tensors, it has no in-place update.
Needs onnx and onnxruntime-extensions, both imported only when a plugin graph is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import DOMAIN, INT_ATTRIBUTES, OP_TYPE, STRING_ATTRIBUTES
from .reference import pard_attention

CONTRIB_DOMAIN = "ai.onnx.contrib"  # the only domain onnxruntime-extensions' Python ops can live in
_EXTERNAL_DATA_DIR = "session.model_external_initializers_file_folder_path"
_registered: list[str] = []  # the extensions library path, once the op is registered


def register_op() -> str:
    """Register the Python op with onnxruntime-extensions once per process; returns the library to load into a
    SessionOptions (register_custom_ops_library)."""
    if not _registered:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

        floats = PyCustomOpDef.dt_float
        attrs = {name: PyCustomOpDef.dt_int64 for name in INT_ATTRIBUTES}
        attrs |= {name: PyCustomOpDef.dt_string for name in STRING_ATTRIBUTES}
        onnx_op(op_type=OP_TYPE, inputs=[floats] * 5 + [PyCustomOpDef.dt_int32], outputs=[floats] * 3, attrs=attrs)(
            _run
        )
        _registered.append(get_library_path())
    return _registered[0]


def _run(q, k_new, v_new, k_cache, v_cache, past_len, **attributes):
    k_cache, v_cache = np.array(k_cache, copy=True), np.array(v_cache, copy=True)  # the inputs are ORT's memory
    try:
        if q.shape[2] != attributes["num_q_heads"] or k_cache.shape[1] != attributes["num_kv_heads"]:
            raise ValueError(
                f"q/k_cache have {q.shape[2]}/{k_cache.shape[1]} heads, the node says "
                f"{attributes['num_q_heads']}/{attributes['num_kv_heads']}"
            )
        out = pard_attention(q, k_new, v_new, k_cache, v_cache, past_len)
    except ValueError as e:
        # An exception escaping a Python op aborts the whole process (onnxruntime-extensions 0.15), so bad input
        # yields NaN (and a message) instead; callers check shapes and capacity before they run the graph.
        print(f"{OP_TYPE}: {e}; returning NaN", file=sys.stderr)
        return np.full(q.shape, np.nan, dtype=q.dtype), k_cache, v_cache
    return out, k_cache, v_cache


def to_contrib_domain(model):
    """A copy of `model` (onnx.ModelProto) whose PardAttention nodes are in onnxruntime-extensions' domain."""
    import onnx

    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    for node in moved.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = CONTRIB_DOMAIN
    kept = [o for o in moved.opset_import if o.domain not in (DOMAIN, CONTRIB_DOMAIN)]
    moved.ClearField("opset_import")
    moved.opset_import.extend(kept + [onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    return moved


def inference_session(path: str | Path, options, providers):
    """An onnxruntime.InferenceSession of the plugin graph at `path` (weights read from beside it, not copied).
    `options` must be fresh: the custom op library is registered into it."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    options.register_custom_ops_library(register_op())
    options.add_session_config_entry(_EXTERNAL_DATA_DIR, str(path.parent.resolve()))
    model = to_contrib_domain(onnx.load(str(path), load_external_data=False))
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
