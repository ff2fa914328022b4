"""Assemble one ONNX graph from traced blocks (prologue, L decoder layers, head).

Every block is placed under a prefix: its internal values and constants are renamed `<prefix>/<name>`, and
its interface (inputs and outputs) is wired to names of the stitched graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class Placement:
    block: onnx.ModelProto
    prefix: str
    wiring: dict[str, str]  # every block input/output name -> value name in the stitched graph


def stitch(
    placements: Sequence[Placement],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    name: str,
) -> onnx.ModelProto:
    nodes, constants = [], []
    for placement in placements:
        rename = _renamer(placement)
        for init in placement.block.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            constants.append(copy)
        nodes.extend(
            _renamed_node(node, i, rename, placement.prefix) for i, node in enumerate(placement.block.graph.node)
        )
    graph = onnx.helper.make_graph(nodes, name, list(inputs), list(outputs), initializer=constants)
    model = onnx.helper.make_model(
        graph,
        opset_imports=_merged_opsets(p.block for p in placements),
        producer_name="pard-export",
    )
    model.ir_version = max(p.block.ir_version for p in placements)
    model.functions.extend(_merged_functions(p.block for p in placements))
    return model


def block_model(graph: onnx.GraphProto, opsets: Sequence[onnx.OperatorSetIdProto]) -> onnx.ModelProto:
    """A hand-written block (an ONNX model of one graph, interface named "io.<name>")."""
    block = onnx.helper.make_model(graph, opset_imports=list(opsets))
    block.ir_version = _MIN_IR_VERSION  # the stitched graph takes the highest of its blocks'
    return block


_MIN_IR_VERSION = 7


def _renamer(placement: Placement):
    graph = placement.block.graph
    unwired = {v.name for v in (*graph.input, *graph.output)} - placement.wiring.keys()
    if unwired:
        raise AssertionError(f"block {placement.prefix} leaves {sorted(unwired)} unwired")
    interface, prefix = placement.wiring, placement.prefix

    def rename(value: str) -> str:
        if not value:
            return value  # an omitted optional input
        return interface.get(value, f"{prefix}/{value}")

    return rename


def _renamed_node(node: onnx.NodeProto, index: int, rename, prefix: str) -> onnx.NodeProto:
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        raise AssertionError(f"block node {node.name} ({node.op_type}) has a subgraph; stitching assumes flat blocks")
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = f"{prefix}/{node.name or f'{node.op_type}_{index}'}"
    copy.ClearField("input")
    copy.ClearField("output")
    copy.input.extend(rename(v) for v in node.input)
    copy.output.extend(rename(v) for v in node.output)
    return copy


def _merged_opsets(blocks) -> list[onnx.OperatorSetIdProto]:
    """The highest version of each domain. The traced blocks are opset 20; the ops they use (arithmetic, MatMul,
    Gemm, Reshape, Transpose, Slice, Softmax, Cast, ...) have not changed meaning up to the inplace flavour's 24,
    only gained types (tests/runtime/test_inplace_kv.py compares the flavours' logits)."""
    versions: dict[str, int] = {}
    for block in blocks:
        for opset in block.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return [onnx.helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _merged_functions(blocks) -> list[onnx.FunctionProto]:
    functions = {}
    for block in blocks:
        for fn in block.functions:
            functions.setdefault((fn.domain, fn.name, fn.overload), fn)
    return list(functions.values())
