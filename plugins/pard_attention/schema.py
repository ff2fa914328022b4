"""The ONNX side of `pard::PardAttention`: its OpSchema (so onnx.checker and shape inference accept plugin graphs)
and the node the exporter emits, one per decoder layer. Needs onnx."""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from . import (
    DOMAIN,
    INPUTS,
    INT_ATTRIBUTES,
    OP_TYPE,
    OPSET_VERSION,
    OUTPUTS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    TRT_INPUTS,
    TRT_OUTPUTS,
)

_FLOATS = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
_RANKS = {"q": 4, "k_new": 4, "v_new": 4, "k_cache": 4, "v_cache": 4, "past_len": 1, "sync": 1}
_DOCS = {
    "q": "[B, S, Hq, D] queries of the S new tokens, RoPE applied",
    "k_new": "[B, S, Hkv, D] keys of the new tokens, RoPE applied",
    "v_new": "[B, S, Hkv, D] values of the new tokens",
    "k_cache": "[B, Hkv, Smax, D] key cache; rows past_len[b] .. past_len[b]+S-1 get k_new",
    "v_cache": "[B, Hkv, Smax, D] value cache, likewise",
    "past_len": "int32 [B] tokens already cached per row",
    "out": "[B, S, Hq, D] attention output",
    "k_cache_out": "k_cache with the new rows written (TensorRT: the same buffer as k_cache, updated in place)",
    "v_cache_out": "v_cache with the new rows written (TensorRT: the same buffer as v_cache)",
    "sync": "optional, TensorRT only: int32 [N] split-K counters, zeros (N >= sync_size(B, S, Hkv, Hq / Hkv))",
    "sync_out": "optional: sync, zeros again (TensorRT: the same buffer)",
    "partial": "optional scratch: float32 [R, D], partial outputs of the key splits (R fixed; nobody reads it)",
    "partial_lse": "optional scratch: float32 [R], their log-sum-exps",
}
_TYPE_OF = {
    "past_len": "tensor(int32)",
    "sync": "tensor(int32)",
    "sync_out": "tensor(int32)",
    "partial": "tensor(float)",
    "partial_lse": "tensor(float)",
}


def register_schema() -> OpSchema:
    """Register the OpSchema of pard::PardAttention with onnx once per process; returns the registered schema."""
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return onnx.defs.get_schema(OP_TYPE, OPSET_VERSION, DOMAIN)
    schema = _schema()
    onnx.defs.register_schema(schema)
    return onnx.defs.get_schema(OP_TYPE, OPSET_VERSION, DOMAIN)


def make_node(
    inputs: list[str], outputs: list[str], *, q_heads: int, kv_heads: int, head_size: int, name: str
) -> onnx.NodeProto:
    """One PardAttention node wired to `inputs` (in INPUTS order) and `outputs` (in OUTPUTS order)."""
    return onnx.helper.make_node(
        OP_TYPE,
        inputs,
        outputs,
        name=name,
        domain=DOMAIN,
        num_q_heads=q_heads,
        num_kv_heads=kv_heads,
        head_size=head_size,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def opset_import() -> onnx.OperatorSetIdProto:
    return onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION)


def _schema() -> OpSchema:
    attr = OpSchema.Attribute
    schema = OpSchema(
        OP_TYPE,
        DOMAIN,
        OPSET_VERSION,
        "Multi-token causal attention over a preallocated KV cache (plugins/pard_attention/__init__.py): writes the "
        "new keys/values at rows past_len[b].. and lets query i of row b attend to cache rows 0 .. past_len[b]+i.",
        inputs=[_param(name) for name in INPUTS] + [_param(name, optional=True) for name in TRT_INPUTS],
        outputs=[_param(name) for name in OUTPUTS] + [_param(name, optional=True) for name in TRT_OUTPUTS],
        type_constraints=[("T", list(_FLOATS), "activations and caches share one float type")],
        attributes=[
            attr("num_q_heads", OpSchema.AttrType.INT, "Hq", required=True),
            attr("num_kv_heads", OpSchema.AttrType.INT, "Hkv (Hq a multiple of it: GQA)", required=True),
            attr("head_size", OpSchema.AttrType.INT, "D", required=True),
            attr("plugin_namespace", _default("plugin_namespace", PLUGIN_NAMESPACE), "TensorRT plugin namespace"),
            attr("plugin_version", _default("plugin_version", PLUGIN_VERSION), "TensorRT plugin version"),
        ],
        node_determinism=OpSchema.NodeDeterminism.Deterministic,
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def _param(name: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, _TYPE_OF.get(name, "T"), _DOCS[name], param_option=option)


def _default(name: str, value: str) -> onnx.AttributeProto:
    return onnx.helper.make_attribute(name, value)


def _infer(ctx) -> None:
    """Check ranks and head counts; type and shape the outputs."""
    q_heads, kv_heads, head_size = (_int_attribute(ctx, name) for name in INT_ATTRIBUTES)
    if q_heads is not None and kv_heads and q_heads % kv_heads:
        raise onnx.shape_inference.InferenceError(
            f"{OP_TYPE}: num_q_heads {q_heads} is not a multiple of num_kv_heads {kv_heads}"
        )
    names = INPUTS + TRT_INPUTS
    types = [ctx.get_input_type(i) if ctx.has_input(i) else None for i in range(len(names))]
    for name, tp in zip(names, types):
        if tp is not None and tp.tensor_type.HasField("shape") and len(tp.tensor_type.shape.dim) != _RANKS[name]:
            raise onnx.shape_inference.InferenceError(
                f"{OP_TYPE}: input {name} has rank {len(tp.tensor_type.shape.dim)}, expected {_RANKS[name]}"
            )
    _check_dim(types[0], 2, q_heads, "q", "num_q_heads")
    _check_dim(types[0], 3, head_size, "q", "head_size")
    _check_dim(types[3], 1, kv_heads, "k_cache", "num_kv_heads")
    # out is shaped like q, each cache output like its cache input; the attributes fix the head dims.
    for output, source, known in (
        (0, 0, {2: q_heads, 3: head_size}),
        (1, 3, {1: kv_heads, 3: head_size}),
        (2, 4, {1: kv_heads, 3: head_size}),
    ):
        if types[source] is not None:
            ctx.set_output_type(output, _with_dims(types[source], known))
    if ctx.has_output(3) and types[6] is not None:  # sync_out: like sync
        ctx.set_output_type(3, types[6])
    for output, rank in ((4, 2), (5, 1)):  # the float32 scratch: [R, D] and [R]
        if ctx.has_output(output):
            ctx.set_output_type(output, onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [None] * rank))


def _with_dims(tp: onnx.TypeProto, known: dict[int, int | None]) -> onnx.TypeProto:
    out = onnx.TypeProto()
    out.CopyFrom(tp)
    if out.tensor_type.HasField("shape"):
        for axis, value in known.items():
            if value is not None:
                out.tensor_type.shape.dim[axis].dim_value = value
    return out


def _int_attribute(ctx, name: str) -> int | None:
    attribute = ctx.get_attribute(name)
    return None if attribute is None else onnx.helper.get_attribute_value(attribute)


def _check_dim(tp, axis: int, expected: int | None, name: str, attribute: str) -> None:
    if tp is None or expected is None or not tp.tensor_type.HasField("shape"):
        return
    dim = tp.tensor_type.shape.dim[axis]
    if dim.HasField("dim_value") and dim.dim_value != expected:
        raise onnx.shape_inference.InferenceError(
            f"{OP_TYPE}: {name} dim {axis} is {dim.dim_value}, {attribute} is {expected}"
        )
