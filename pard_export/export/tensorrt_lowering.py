"""A plugin-flavour ONNX graph -> the graph TensorRT's parser gets: PardAttention nodes in their TensorRT form.

The one-launch kernel the TensorRT plugin embeds (plugins/pard_attention/triton_fused.py) splits long caches
between programs and lets the last split merge them. An AOT plugin has no workspace, so each node gets:
- one more input, `sync`: split-K counters. The graph takes them as a new input, ATTENTION_SYNC (int32 [N], static
  N: enough for max_batch rows and the longest chunk), which the runtime zero-fills once and binds for every call;
  node i's sync_out (the same memory: the plugin aliases it) is node i+1's sync, and the last one is the graph
  output ATTENTION_SYNC_OUT, so the order of the in-place updates is explicit and the runtime binds one buffer;
- two float32 scratch outputs (partial, partial_lse) that no node reads: TensorRT gives them activation memory.

Only the graph proto is rewritten: initializers stay in the external data file beside the graph, which the
lowered copy (written to the same folder) still points to. So lowering an 8B model reads no weights.
"""

from __future__ import annotations

from pathlib import Path

from ..contract import ATTENTION_SYNC, ATTENTION_SYNC_OUT
from ..errors import TrtBuildError

LOWERED_SUFFIX = ".tensorrt.onnx"  # draft.onnx -> draft.tensorrt.onnx, beside it


def lowered_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + LOWERED_SUFFIX)


def lower_for_tensorrt(onnx_path: Path, max_batch: int, max_sequence: int) -> Path:
    """Write the TensorRT form of `onnx_path` beside it (lowered_path) and return its path. max_batch and
    max_sequence (the longest S of one call) size the counters."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    lower_model(model, max_batch, max_sequence)
    target = lowered_path(onnx_path)
    onnx.save(model, str(target))
    return target


def lower_model(model, max_batch: int, max_sequence: int) -> int:
    """Rewrite an onnx.ModelProto in place (see the module docstring); returns the number of counters N."""
    import onnx

    from plugins.pard_attention import DOMAIN, INPUTS, OP_TYPE, OUTPUTS, TRT_OUTPUTS, sync_size

    nodes = [node for node in model.graph.node if (node.domain, node.op_type) == (DOMAIN, OP_TYPE)]
    if not nodes:
        raise TrtBuildError(
            f"the graph has no {DOMAIN}::{OP_TYPE} node: the tensorrt backend builds from the plugin "
            "flavour (pard-export build --attention plugin)"
        )
    if any(len(node.input) != len(INPUTS) or len(node.output) != len(OUTPUTS) for node in nodes):
        raise TrtBuildError(f"a {OP_TYPE} node already has its TensorRT inputs/outputs: the graph is lowered already")
    size = max(
        sync_size(
            max_batch,
            max_sequence,
            _attribute(node, "num_kv_heads"),
            _attribute(node, "num_q_heads") // _attribute(node, "num_kv_heads"),
        )
        for node in nodes
    )
    model.graph.input.append(onnx.helper.make_tensor_value_info(ATTENTION_SYNC, onnx.TensorProto.INT32, [size]))
    sync = ATTENTION_SYNC
    for index, node in enumerate(nodes):
        prefix = node.name or f"{OP_TYPE}_{index}"
        outputs = [f"{prefix}/{output}" for output in TRT_OUTPUTS]  # sync_out, partial, partial_lse
        if index == len(nodes) - 1:
            outputs[0] = ATTENTION_SYNC_OUT
        node.input.append(sync)  # TRT_INPUTS: just sync
        node.output.extend(outputs)
        sync = outputs[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(ATTENTION_SYNC_OUT, onnx.TensorProto.INT32, [size]))
    return size


def _attribute(node, name: str) -> int:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    raise TrtBuildError(f"{node.name or node.op_type}: no {name} attribute")
