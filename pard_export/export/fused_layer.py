"""The inplace flavour's decoder layer around its attention block (inplace_attention.py), hand-written with fused ops.

Traced layers cost ~70 ONNX Runtime nodes each (RMSNorm as Pow/ReduceMean/Sqrt/Div, rotary as Slice/Neg/Concat/Mul,
a Reshape pair around every Gemm); at one token per call the per-node cost outweighs the int4 matmuls. These blocks
compute the same function in 15 nodes (19 with Qwen3's qk-norm), the attention block adds 9 (the native kernel,
contract.py: the blocks stop at the q/k/v MatMul and start at the Wo MatMul, the node between does the rest):

    before attention: SkipSimplifiedLayerNormalization (com.microsoft: the previous layer's residual add + RMSNorm;
                      the first layer has a plain RMSNormalization) -> MatMul over [Wq; Wk; Wv]^T (+ bias) -> Reshape
                      to heads -> [RMSNormalization of q and k, Qwen3] -> Transpose to [B, H, S, D] -> Split
                      -> RotaryEmbedding (q, k)
    after attention:  MatMul Wo^T -> SkipSimplifiedLayerNormalization -> MatMul Wgate^T, MatMul Wup^T
                      -> SiLU(gate) * up -> MatMul Wdown^T

A layer hands the next its residual stream and its MLP output apart (residual_out, delta_out), so their sum is the
next layer's first node; the last layer adds them (hidden_out) for the head. The weights are stored transposed
([in, out], fused_weights), the layout MatMul prepacks and the int4 quantizer (MatMulNBits) takes, q, k and v as one.

GroupQueryAttention (com.microsoft) would replace the attention block and the reshapes with one node (SmolLM2 int4:
~190 instead of ~150 tok/s), but its one-token path sums probabilities x V in another order than its multi-token
path: decode and verify logits then differ in the last bits, which int8 activations (MatMulNBits accuracy level 4)
magnify into different greedy tokens (pard == ar on 1 of 4 SmolLM2 prompts), and it refuses batches of multi-token
calls. The matmuls here run every call with G*S >= 2 query rows per KV head, so a token's numbers do not depend on
how many come with it (pard == ar exactly, in batches too).
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
import torch
from onnx import TensorProto as T
from onnx import helper as h

from .arch import ArchSpec
from .lazy_weights import LazyWeights
from .stitch import block_model

OPSET = 23  # RMSNormalization, RotaryEmbedding
MS_DOMAIN = "com.microsoft"  # SkipSimplifiedLayerNormalization
QKV, QKV_BIAS = "self_attn.qkv_proj.weight_t", "self_attn.qkv_proj.bias"
O_PROJ, GATE, UP, DOWN = (
    f"{n}.weight_t" for n in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
)
INPUT_NORM, POST_NORM = "input_layernorm.weight", "post_attention_layernorm.weight"
Q_NORM, K_NORM = "self_attn.q_norm.weight", "self_attn.k_norm.weight"
AFTER_WEIGHTS = (O_PROJ, POST_NORM, GATE, UP, DOWN)
_FUSED_FROM = {
    QKV: ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    **{fused: (fused.removesuffix("_t"),) for fused in (O_PROJ, GATE, UP, DOWN)},
}
_QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")


def before_weights(arch: ArchSpec, has_bias: bool, split_heads: bool = True) -> tuple[str, ...]:
    """The before-attention block's weight inputs (layer-relative names), in order. Without split_heads the q/k
    norms are the native attention node's (native_attention.py)."""
    norms = (Q_NORM, K_NORM) if arch.qk_norm and split_heads else ()
    return (INPUT_NORM, QKV, *([QKV_BIAS] if has_bias else ()), *norms)


def has_qkv_bias(layer_params: tuple[str, ...]) -> bool:
    return _QKV_BIASES[0] in layer_params


def fused_weights(weights: Mapping[str, torch.Tensor], layers: int, has_bias: bool) -> LazyWeights:
    """`weights` (transformers' names) with each layer's linear weights replaced by the transposed (q/k/v: fused)
    ones, each made from `weights` when it is read (one at a time, as they are written)."""
    out = LazyWeights.over(weights)
    for j in range(layers):
        prefix = f"model.layers.{j}."
        for fused, parts in _FUSED_FROM.items():
            names = [prefix + p for p in parts]
            out.replace(names, prefix + fused, _concatenated(weights, names, transpose=True))
        if has_bias:
            names = [prefix + b for b in _QKV_BIASES]
            out.replace(names, prefix + QKV_BIAS, _concatenated(weights, names, transpose=False))
    return out


def _concatenated(weights: Mapping[str, torch.Tensor], names: list[str], transpose: bool):
    def make() -> torch.Tensor:
        joined = torch.cat([weights[name] for name in names])
        return joined.t().contiguous() if transpose else joined

    return make


def before_attention_block(
    arch: ArchSpec, dtype: int, has_bias: bool, first: bool, split_heads: bool = True
) -> onnx.ModelProto:
    """In: hidden [B, S, Hd] (first layer) or residual and delta (the previous layer's outputs), cos and sin
    [B, S, D/2]. Out: q [B, Hq, S, D], k and v [B, Hkv, S, D], stream (the residual stream entering the layer).
    Without split_heads (the native attention node does the rest): in, no cos and sin; out, qkv [B, S, (Hq+2Hkv)*D]
    and stream."""
    a = arch
    if first:
        inputs = ["hidden"]
        nodes = [
            _rms_norm("io.hidden", "io." + INPUT_NORM, "normed", a.rms_eps),
            h.make_node("Identity", ["io.hidden"], ["io.stream"]),
        ]
    else:
        inputs = ["residual", "delta"]
        nodes = [_skip_rms_norm("io.delta", "io.residual", "io." + INPUT_NORM, "normed", "io.stream", a.rms_eps)]
    qkv = "qkv" if split_heads else "io.qkv"
    nodes += [
        h.make_node("MatMul", ["normed", "io." + QKV], ["qkv_raw" if has_bias else qkv]),
        *([h.make_node("Add", ["qkv_raw", "io." + QKV_BIAS], [qkv])] if has_bias else []),
    ]
    if not split_heads:
        graph = h.make_graph(
            nodes,
            "before_attention",
            [_value(n, dtype) for n in (*inputs, *before_weights(a, has_bias, split_heads))],
            [_value(n, dtype) for n in ("qkv", "stream")],
        )
        return block_model(graph, [h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)])
    nodes += [
        h.make_node("Reshape", ["qkv", "per_head"], ["qkv_heads"]),  # [B, S, Hq + 2 Hkv, D]
        *(_split_normed(a) if a.qk_norm else _split(a)),
        h.make_node("RotaryEmbedding", ["q_unrotated", "io.cos", "io.sin"], ["io.q"]),
        h.make_node("RotaryEmbedding", ["k_unrotated", "io.cos", "io.sin"], ["io.k"]),
    ]
    heads = [a.q_heads, a.kv_heads, a.kv_heads]
    constants = [
        h.make_tensor("per_head", T.INT64, [4], [0, 0, sum(heads), a.head_dim]),
        h.make_tensor("head_split", T.INT64, [3], heads),
    ]
    graph = h.make_graph(
        nodes,
        "before_attention",
        [_value(n, dtype) for n in (*inputs, "cos", "sin", *before_weights(a, has_bias))],
        [_value(n, dtype) for n in ("q", "k", "v", "stream")],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)])


def after_attention_block(arch: ArchSpec, dtype: int, last: bool, flat: bool = False) -> onnx.ModelProto:
    """In: stream [B, S, Hd] (before_attention's), attended [B, S, Hq, D] ([B, S, Hq * D] when flat). Out:
    hidden_out (last layer) or residual_out and delta_out."""
    a = arch
    attended = "io.attended" if flat else "attended_flat"
    nodes = [
        *([] if flat else [h.make_node("Reshape", ["io.attended", "flat_shape"], ["attended_flat"])]),
        h.make_node("MatMul", [attended, "io." + O_PROJ], ["projected"]),
        _skip_rms_norm(
            "projected", "io.stream", "io." + POST_NORM, "normed", "residual" if last else "io.residual_out", a.rms_eps
        ),
        h.make_node("MatMul", ["normed", "io." + GATE], ["gate"]),
        h.make_node("MatMul", ["normed", "io." + UP], ["up"]),
        h.make_node("Sigmoid", ["gate"], ["gate_sigmoid"]),
        h.make_node("Mul", ["gate", "gate_sigmoid"], ["gate_silu"]),
        h.make_node("Mul", ["gate_silu", "up"], ["mlp_in"]),
        h.make_node("MatMul", ["mlp_in", "io." + DOWN], ["mlp_out" if last else "io.delta_out"]),
        *([h.make_node("Add", ["residual", "mlp_out"], ["io.hidden_out"])] if last else []),
    ]
    constants = [] if flat else [h.make_tensor("flat_shape", T.INT64, [3], [0, 0, a.q_heads * a.head_dim])]
    outputs = ["hidden_out"] if last else ["residual_out", "delta_out"]
    graph = h.make_graph(
        nodes,
        "after_attention",
        [_value(n, dtype) for n in ("stream", "attended", *AFTER_WEIGHTS)],
        [_value(n, dtype) for n in outputs],
        initializer=constants,
    )
    return block_model(graph, [h.make_opsetid("", OPSET), h.make_opsetid(MS_DOMAIN, 1)])


def _split(a: ArchSpec) -> list[onnx.NodeProto]:
    """[B, S, H, D] -> q, k (unrotated) and v [B, H, S, D]: one transpose for all heads, then a split."""
    return [
        h.make_node("Transpose", ["qkv_heads"], ["qkv_heads_first"], perm=[0, 2, 1, 3]),
        h.make_node("Split", ["qkv_heads_first", "head_split"], ["q_unrotated", "k_unrotated", "io.v"], axis=1),
    ]


def _split_normed(a: ArchSpec) -> list[onnx.NodeProto]:
    """Qwen3: q and k are normalised per head (weights [D] of their own) before the transposes."""
    nodes = [h.make_node("Split", ["qkv_heads", "head_split"], ["q_heads", "k_heads", "v_heads"], axis=2)]
    for name, norm in (("q", Q_NORM), ("k", K_NORM)):
        nodes += [
            _rms_norm(f"{name}_heads", "io." + norm, f"{name}_normed", a.rms_eps),
            h.make_node("Transpose", [f"{name}_normed"], [f"{name}_unrotated"], perm=[0, 2, 1, 3]),
        ]
    return nodes + [h.make_node("Transpose", ["v_heads"], ["io.v"], perm=[0, 2, 1, 3])]


def stream_wiring(j: int, layers: int) -> tuple[dict[str, str], dict[str, str]]:
    """Layer j's residual stream: (its before-attention block's input, its after-attention block's output).
    hidden_states.0 enters the first layer, hidden_states.L leaves the last (the head's input)."""
    into = (
        {"hidden": "hidden_states.0"} if j == 0 else {"residual": f"residual_states.{j}", "delta": f"delta_states.{j}"}
    )
    if j == layers - 1:
        return into, {"hidden_out": f"hidden_states.{layers}"}
    return into, {"residual_out": f"residual_states.{j + 1}", "delta_out": f"delta_states.{j + 1}"}


def _skip_rms_norm(x: str, skip: str, weight: str, out: str, total: str, eps: float) -> onnx.NodeProto:
    """total = x + skip; out = RMSNorm(total), in float32."""
    return h.make_node(
        "SkipSimplifiedLayerNormalization", [x, skip, weight], [out, "", "", total], domain=MS_DOMAIN, epsilon=eps
    )


def _rms_norm(x: str, weight: str, out: str, eps: float) -> onnx.NodeProto:
    """RMSNorm over the last axis, in float32 as transformers computes it (stash_type 1)."""
    return h.make_node("RMSNormalization", [x, weight], [out], axis=-1, epsilon=eps, stash_type=1)


def _value(name: str, elem: int) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(f"io.{name}", elem, None)
