"""The inplace flavour's attention (contract.py) as hand-written ONNX blocks of standard ops (opset 24).

Per layer, with q [B, Hq, S, D], k_new and v_new [B, Hkv, S, D] and the buffers [B, Hkv, C, D]:
    TensorScatter writes k_new / v_new at rows past_len[b] .. past_len[b]+S-1 of each buffer (in place when the
    runtime binds the input and output to one OrtValue), then the G = Hq/Hkv query heads of each KV head attend
    together, as one [G*S, D] x [D, C] matmul over the whole buffer (K and V are read once per KV head), with the
    rows past each query's position masked. The mask is built once per graph (mask_block) and shared by the layers.
Why not ONNX Runtime's GroupQueryAttention: fused_layer.py. This block is also faster per call at long contexts
(SmolLM2 layer, 5,000 cached rows, one new token: 260 vs 379 us).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto as T
from onnx import helper as h

from ..contract import PAST_LEN
from .arch import ArchSpec
from .stitch import block_model

OPSET = 24  # TensorScatter
SHARED = {"write_at": "attention_write_at", "bias": "attention_bias"}  # names of mask_block's outputs in the graph


def mask_wiring(first_cache: str) -> dict[str, str]:
    """mask_block's interface: S from the first layer's input (mask slots included), C from a cache."""
    return {"hidden": "hidden_states.0", "past_len": PAST_LEN, "cache": first_cache} | SHARED


def mask_block(arch: ArchSpec, dtype: int) -> onnx.ModelProto:
    """write_at int64 [B] (= past_len) and bias [B, 1, G*S, C]: 0 where key row c <= past_len[b] + i, else -inf
    (every query sees at least itself), repeated for the G query heads of a KV head (rows ordered g*S + i)."""
    groups = arch.q_heads // arch.kv_heads
    nodes = [
        h.make_node("Cast", ["io.past_len"], ["io.write_at"], to=T.INT64),
        h.make_node("Shape", ["io.hidden"], ["tokens"], start=1, end=2),
        h.make_node("Shape", ["io.cache"], ["capacity"], start=2, end=3),
        h.make_node("Squeeze", ["tokens"], ["tokens_scalar"]),
        h.make_node("Squeeze", ["capacity"], ["capacity_scalar"]),
        h.make_node("Range", ["zero", "tokens_scalar", "one"], ["query_index"]),  # [S]
        h.make_node("Range", ["zero", "capacity_scalar", "one"], ["key_row"]),  # [C]
        h.make_node("Unsqueeze", ["io.write_at", "axis_1"], ["row_start"]),  # [B, 1]
        h.make_node("Add", ["row_start", "query_index"], ["query_row"]),  # [B, S]
        h.make_node("Unsqueeze", ["query_row", "axis_2"], ["query_row_3d"]),  # [B, S, 1]
        h.make_node("LessOrEqual", ["key_row", "query_row_3d"], ["visible"]),  # [B, S, C]
        h.make_node("Where", ["visible", "open", "closed"], ["bias_3d"]),
        h.make_node("Unsqueeze", ["bias_3d", "axis_1"], ["bias_4d"]),  # [B, 1, S, C]
        h.make_node("Tile", ["bias_4d", "repeats"], ["io.bias"]),  # [B, 1, G*S, C]
    ]
    constants = [
        h.make_tensor("zero", T.INT64, [], [0]),
        h.make_tensor("one", T.INT64, [], [1]),
        h.make_tensor("axis_1", T.INT64, [1], [1]),
        h.make_tensor("axis_2", T.INT64, [1], [2]),
        h.make_tensor("open", dtype, [], [0.0]),
        h.make_tensor("closed", dtype, [], [float("-inf")]),
        h.make_tensor("repeats", T.INT64, [4], [1, 1, groups, 1]),
    ]
    graph = h.make_graph(
        nodes,
        "attention_mask",
        [_value("hidden", dtype), _value("past_len", T.INT32), _value("cache", dtype)],
        [_value("write_at", T.INT64), _value("bias", dtype)],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET)])


def layer_block(arch: ArchSpec, dtype: int) -> onnx.ModelProto:
    """One layer's scatter-and-attend: inputs q, k_new, v_new, k_cache, v_cache, write_at, bias; outputs out
    [B, S, Hq, D] (the layout PluginAttentionOutputs takes), k_cache_out, v_cache_out."""
    a = arch
    softmax_in, softmax_out = ("scores_masked", "probs") if dtype == T.FLOAT else ("scores_float", "probs_float")
    nodes = [
        h.make_node("TensorScatter", ["io.k_cache", "io.k_new", "io.write_at"], ["io.k_cache_out"], axis=2),
        h.make_node("TensorScatter", ["io.v_cache", "io.v_new", "io.write_at"], ["io.v_cache_out"], axis=2),
        h.make_node("Reshape", ["io.q", "grouped_shape"], ["q_grouped"]),  # [B, Hkv, G*S, D]
        h.make_node("Transpose", ["io.k_cache_out"], ["keys_t"], perm=[0, 1, 3, 2]),  # fused into the matmul by ORT
        h.make_node("MatMul", ["q_grouped", "keys_t"], ["scores_raw"]),  # [B, Hkv, G*S, C]
        h.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        h.make_node("Add", ["scores", "io.bias"], ["scores_masked"]),
        *([] if dtype == T.FLOAT else [h.make_node("Cast", ["scores_masked"], ["scores_float"], to=T.FLOAT)]),
        h.make_node("Softmax", [softmax_in], [softmax_out], axis=-1),  # in float32, as the traced layers
        *([] if dtype == T.FLOAT else [h.make_node("Cast", ["probs_float"], ["probs"], to=dtype)]),
        h.make_node("MatMul", ["probs", "io.v_cache_out"], ["attended"]),  # [B, Hkv, G*S, D]
        h.make_node("Reshape", ["attended", "heads_shape"], ["attended_heads"]),  # [B, Hq, S, D]
        h.make_node("Transpose", ["attended_heads"], ["io.out"], perm=[0, 2, 1, 3]),  # [B, S, Hq, D]
    ]
    constants = [
        h.make_tensor("grouped_shape", T.INT64, [4], [0, a.kv_heads, -1, a.head_dim]),
        h.make_tensor("heads_shape", T.INT64, [4], [0, a.q_heads, -1, a.head_dim]),
        h.make_tensor("scale", dtype, [], [a.head_dim**-0.5]),
    ]
    names = ("q", "k_new", "v_new", "k_cache", "v_cache")
    graph = h.make_graph(
        nodes,
        "inplace_attention",
        [*(_value(n, dtype) for n in names), _value("write_at", T.INT64), _value("bias", dtype)],
        [_value(n, dtype) for n in ("out", "k_cache_out", "v_cache_out")],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET)])


def _value(name: str, elem: int) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(f"io.{name}", elem, None)
