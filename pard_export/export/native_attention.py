"""The inplace flavour's attention as one pard.cpu::CachedAttention node per layer (the native kernel, contract.py).

The node takes the fused q/k/v MatMul's output as it is and does what the ONNX-op block and the reshapes, split and
rotary around it do (about 20 nodes per layer): SmolLM2 int4 decodes one token in ~351 nodes instead of ~850. The
library it needs is compiled into the engine directory by the build (plugins/cached_attention/build.py).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto as T
from onnx import helper as h

from plugins.cached_attention import DOMAIN, INPUTS, OP_TYPE, OPSET_VERSION, OUTPUTS

from .arch import ArchSpec
from .fused_layer import K_NORM, Q_NORM
from .stitch import block_model

NORMS = (Q_NORM, K_NORM)  # layer weights the node takes for Qwen3's q/k norms


def layer_block(arch: ArchSpec) -> onnx.ModelProto:
    """In: qkv, cos, sin, k_cache, v_cache, past_len, the q/k norm weights where the model has them, prefill. Out:
    out [B, S, Hq * D], k_cache_out, v_cache_out."""
    names = [*INPUTS[:6], *(NORMS if arch.qk_norm else ("", "")), "prefill"]
    inputs = [f"io.{name}" if name else "" for name in names]
    node = h.make_node(
        OP_TYPE,
        inputs,
        [f"io.{name}" for name in OUTPUTS],
        domain=DOMAIN,
        num_q_heads=arch.q_heads,
        num_kv_heads=arch.kv_heads,
        head_size=arch.head_dim,
        scale=arch.head_dim**-0.5,
        epsilon=arch.rms_eps,
    )
    types = {"past_len": T.INT32, "prefill": T.BOOL}
    graph = h.make_graph(
        [node],
        "native_attention",
        [h.make_tensor_value_info(f"io.{n}", types.get(n, T.FLOAT), None) for n in names if n],
        [h.make_tensor_value_info(f"io.{n}", T.FLOAT, None) for n in OUTPUTS],
    )
    return block_model(graph, [h.make_opsetid(DOMAIN, OPSET_VERSION)])
