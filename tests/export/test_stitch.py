"""stitch() on tiny synthetic blocks: wiring, prefixes, SSA, shared constants kept apart."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pard_export.export.stitch import Placement, stitch


def _add_block() -> onnx.ModelProto:
    """io.y = io.x + io.w + c, with an internal value named like one in the other copies."""
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("Add", ["io.x", "io.w"], ["t"]), helper.make_node("Add", ["t", "c"], ["io.y"])]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("io.x", "io.w")],
        [helper.make_tensor_value_info("io.y", TensorProto.FLOAT, [2])],
        initializer=[c],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _chain(n: int) -> onnx.ModelProto:
    block = _add_block()
    placements = [
        Placement(block, f"layers.{i}", {"io.x": f"h.{i}", "io.w": f"w.{i}", "io.y": f"h.{i + 1}"}) for i in range(n)
    ]
    inputs = [helper.make_tensor_value_info("h.0", TensorProto.FLOAT, [2])]
    outputs = [helper.make_tensor_value_info(f"h.{n}", TensorProto.FLOAT, [2])]
    model = stitch(placements, inputs, outputs, "chain")
    for i in range(n):
        model.graph.initializer.append(helper.make_tensor(f"w.{i}", TensorProto.FLOAT, [2], [float(i), 10.0 * i]))
    return model


def test_chain_of_blocks_is_valid_and_computes_the_composition():
    model = _chain(3)
    onnx.checker.check_model(model, full_check=True)
    names = [out for node in model.graph.node for out in node.output]
    assert len(names) == len(set(names))  # SSA
    assert {"layers.0/t", "layers.2/t", "layers.1/c"} <= set(names) | {i.name for i in model.graph.initializer}
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"h.0": np.zeros(2, np.float32)})
    np.testing.assert_allclose(y, [0 + 1 + 2 + 3, 0 + 10 + 20 + 3])  # sum of w.i plus c=1 per block


def test_unwired_interface_is_an_error():
    block = _add_block()
    with pytest.raises(AssertionError, match="unwired"):
        stitch([Placement(block, "b", {"io.x": "x", "io.y": "y"})], [], [], "g")
