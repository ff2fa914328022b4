"""The inplace flavour's attention (contract.py) as hand-written ONNX blocks of standard ops (opset 24).

Per layer, with q [B, Hq, S, D], k_new and v_new [B, Hkv, S, D] and the buffers [B, Hkv, C, D]:
    TensorScatter writes k_new / v_new at rows past_len[b] .. past_len[b]+S-1 of each buffer (in place when the
    runtime binds the input and output to one OrtValue), then the G*S query rows of each KV head attend over the
    whole buffer, the rows past each query's position masked. How they multiply follows the prefill input:
    - prefill (prompt chunks): as one [G*S, D] x [D, C] product per KV head, fast for hundreds of rows;
    - otherwise as G*S products [1, D] x [D, C], one per query row. ONNX Runtime's CPU GEMM packs a matrix it
      multiplies by several rows (a copy of the whole cache per call) but reads it directly for one row: for a few
      rows this is faster (SmolLM2, 30 layers, one token over 5,120 rows: 12.9 vs 21.2 ms; four tokens 26.3 vs
      28.7 ms), and a row's result cannot depend on the other rows of the call, which keeps decode, verify and
      batches exact for PARD. Prompt chunks would be 1.6-1.8x slower this way (512 tokens).
    The mask and the query layout are built once per graph (mask_block) and shared by the layers.
Why not ONNX Runtime's GroupQueryAttention: fused_layer.py.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto as T
from onnx import helper as h

from ..contract import PAST_LEN, PREFILL
from .arch import ArchSpec
from .stitch import block_model

OPSET = 24  # TensorScatter
# names of mask_block's outputs in the graph
SHARED = {
    "write_at": "attention_write_at",
    "bias": "attention_bias",
    "query_shape": "attention_query_shape",
    "scale": "attention_scale",
}


def mask_wiring(first_cache: str) -> dict[str, str]:
    """mask_block's interface: S from the first layer's input (mask slots included), C from a cache."""
    return {"hidden": "hidden_states.0", "past_len": PAST_LEN, "prefill": PREFILL, "cache": first_cache} | SHARED


def mask_block(arch: ArchSpec, dtype: int) -> onnx.ModelProto:
    """write_at int64 [B] (= past_len); query_shape int64 [5] = [0, Hkv, G*S / M, M, D], which lays out each KV
    head's G*S query rows (ordered g*S + i) as products of M rows (M = G*S for a prefill call, else 1); and bias
    [B, 1, G*S / M, M, C]: 0 where key row c <= past_len[b] + i, else -inf (every query sees at least itself); and
    scale, the softmax scale 1/sqrt(D) as a computed scalar. As a constant, ONNX Runtime would fold it into the
    matmul (MatMulScaleFusion), and a scaled product no longer takes the one-row path that reads the cache in place
    (SmolLM2, 5,120 rows: 20.5 instead of 13.9 ms for 30 layers)."""
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
        h.make_node("Tile", ["bias_4d", "repeats"], ["bias_rows"]),  # [B, 1, G*S, C]
        h.make_node("Mul", ["tokens", "groups"], ["query_rows"]),  # [1]: G*S
        h.make_node("Where", ["io.prefill", "query_rows", "one_1d"], ["rows_per_product"]),
        h.make_node("Concat", ["keep", "kv_heads", "rest", "rows_per_product", "head_dim"], ["io.query_shape"], axis=0),
        h.make_node("Concat", ["keep", "one_1d", "rest", "rows_per_product", "capacity"], ["bias_shape"], axis=0),
        h.make_node("Reshape", ["bias_rows", "bias_shape"], ["io.bias"]),
        h.make_node("Where", ["io.prefill", "scale", "scale"], ["io.scale"]),  # depends on an input: never folded
    ]
    constants = [
        h.make_tensor("zero", T.INT64, [], [0]),
        h.make_tensor("one", T.INT64, [], [1]),
        h.make_tensor("axis_1", T.INT64, [1], [1]),
        h.make_tensor("axis_2", T.INT64, [1], [2]),
        h.make_tensor("open", dtype, [], [0.0]),
        h.make_tensor("closed", dtype, [], [float("-inf")]),
        h.make_tensor("repeats", T.INT64, [4], [1, 1, groups, 1]),
        h.make_tensor("groups", T.INT64, [1], [groups]),
        h.make_tensor("one_1d", T.INT64, [1], [1]),
        h.make_tensor("keep", T.INT64, [1], [0]),
        h.make_tensor("rest", T.INT64, [1], [-1]),
        h.make_tensor("kv_heads", T.INT64, [1], [arch.kv_heads]),
        h.make_tensor("head_dim", T.INT64, [1], [arch.head_dim]),
        h.make_tensor("scale", dtype, [], [arch.head_dim**-0.5]),
    ]
    graph = h.make_graph(
        nodes,
        "attention_mask",
        [_value("hidden", dtype), _value("past_len", T.INT32), _value("prefill", T.BOOL), _value("cache", dtype)],
        [_value("write_at", T.INT64), _value("bias", dtype), _value("query_shape", T.INT64), _value("scale", dtype)],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET)])


def layer_block(arch: ArchSpec, dtype: int) -> onnx.ModelProto:
    """One layer's scatter-and-attend: inputs q, k_new, v_new, k_cache, v_cache and mask_block's outputs; outputs out
    [B, S, Hq, D] (the layout PluginAttentionOutputs takes), k_cache_out, v_cache_out."""
    a = arch
    softmax_in, softmax_out = ("scores_masked", "probs") if dtype == T.FLOAT else ("scores_float", "probs_float")
    nodes = [
        h.make_node("TensorScatter", ["io.k_cache", "io.k_new", "io.write_at"], ["io.k_cache_out"], axis=2),
        h.make_node("TensorScatter", ["io.v_cache", "io.v_new", "io.write_at"], ["io.v_cache_out"], axis=2),
        h.make_node("Reshape", ["io.q", "io.query_shape"], ["q_grouped"]),  # [B, Hkv, G*S/M, M, D]
        h.make_node("Mul", ["q_grouped", "io.scale"], ["q_scaled"]),
        h.make_node("Unsqueeze", ["io.k_cache_out", "axis_2"], ["keys"]),  # [B, Hkv, 1, C, D]: shared by the products
        h.make_node("Unsqueeze", ["io.v_cache_out", "axis_2"], ["values"]),
        h.make_node("Transpose", ["keys"], ["keys_t"], perm=[0, 1, 2, 4, 3]),  # fused into the matmul by ORT
        h.make_node("MatMul", ["q_scaled", "keys_t"], ["scores"]),  # [B, Hkv, G*S/M, M, C]
        h.make_node("Add", ["scores", "io.bias"], ["scores_masked"]),
        *([] if dtype == T.FLOAT else [h.make_node("Cast", ["scores_masked"], ["scores_float"], to=T.FLOAT)]),
        h.make_node("Softmax", [softmax_in], [softmax_out], axis=-1),  # in float32, as the traced layers
        *([] if dtype == T.FLOAT else [h.make_node("Cast", ["probs_float"], ["probs"], to=dtype)]),
        h.make_node("MatMul", ["probs", "values"], ["attended"]),  # [B, Hkv, G*S/M, M, D]
        h.make_node("Reshape", ["attended", "heads_shape"], ["attended_heads"]),  # [B, Hq, S, D]
        h.make_node("Transpose", ["attended_heads"], ["io.out"], perm=[0, 2, 1, 3]),  # [B, S, Hq, D]
    ]
    constants = [
        h.make_tensor("axis_2", T.INT64, [1], [2]),
        h.make_tensor("heads_shape", T.INT64, [4], [0, a.q_heads, -1, a.head_dim]),
    ]
    names = ("q", "k_new", "v_new", "k_cache", "v_cache")
    graph = h.make_graph(
        nodes,
        "inplace_attention",
        [
            *(_value(n, dtype) for n in names),
            _value("write_at", T.INT64),
            _value("bias", dtype),
            _value("query_shape", T.INT64),
            _value("scale", dtype),
        ],
        [_value(n, dtype) for n in ("out", "k_cache_out", "v_cache_out")],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET)])


def _value(name: str, elem: int) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(f"io.{name}", elem, None)
