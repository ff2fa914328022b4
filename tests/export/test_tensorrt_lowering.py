"""The TensorRT form of a plugin graph: split-K counters chained through the PardAttention nodes, scratch outputs,
the weights left in the external data file."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pard_export.contract import ATTENTION_SYNC, ATTENTION_SYNC_OUT
from pard_export.errors import TrtBuildError
from pard_export.export.tensorrt_lowering import lower_for_tensorrt, lowered_path
from plugins.pard_attention import COUNTERS_PER_BLOCK, DOMAIN, OP_TYPE, sync_size
from plugins.pard_attention.schema import register_schema

K = 4


@pytest.fixture(scope="module")
def plugin_engine(tiny_pair, engine):
    target, draft = tiny_pair("qwen3")  # GQA: Hq / Hkv > 1
    return engine(target, draft, K, attention="plugin", max_seq_len=64)


def attention_nodes(model):
    return [node for node in model.graph.node if (node.domain, node.op_type) == (DOMAIN, OP_TYPE)]


def attribute(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_lowering_chains_the_counters_and_adds_unread_scratch_outputs(plugin_engine, tmp_path):
    shutil.copytree(plugin_engine, tmp_path / "staging")
    original = tmp_path / "staging" / "target.onnx"
    before = original.read_bytes()
    lowered = lower_for_tensorrt(original, max_batch=3, max_sequence=20)
    assert lowered == lowered_path(original) == tmp_path / "staging" / "target.tensorrt.onnx"
    assert original.read_bytes() == before

    model = onnx.load(str(lowered))  # its initializers still resolve to target.onnx.data beside it
    nodes = attention_nodes(model)
    assert len(nodes) >= 2
    kv_heads, q_heads = attribute(nodes[0], "num_kv_heads"), attribute(nodes[0], "num_q_heads")
    size = sync_size(3, 20, kv_heads, q_heads // kv_heads)
    assert size == 3 * kv_heads * -(-20 * (q_heads // kv_heads) // 64) * COUNTERS_PER_BLOCK
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    for tensor in (inputs[ATTENTION_SYNC], outputs[ATTENTION_SYNC_OUT]):
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT32
        assert [d.dim_value for d in tensor.type.tensor_type.shape.dim] == [size]

    assert [len(n.input) for n in nodes] == [7] * len(nodes) and [len(n.output) for n in nodes] == [6] * len(nodes)
    assert nodes[0].input[6] == ATTENTION_SYNC and nodes[-1].output[3] == ATTENTION_SYNC_OUT
    for before_node, node in zip(nodes, nodes[1:]):
        assert node.input[6] == before_node.output[3]  # each update in place, in layer order
    consumed = {name for node in model.graph.node for name in node.input} | set(outputs)
    scratch = [name for node in nodes for name in node.output[4:]]
    assert len(set(scratch)) == len(scratch) and not set(scratch) & consumed

    plain = onnx.load(str(plugin_engine / "target.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    assert weights and all(np.array_equal(numpy_helper.to_array(t), weights[t.name]) for t in model.graph.initializer)
    register_schema()
    onnx.checker.check_model(model)  # the OpSchema takes the TensorRT inputs/outputs as optional


def test_lowering_refuses_a_lowered_or_plain_graph(plugin_engine, tiny_pair, engine, tmp_path):
    shutil.copytree(plugin_engine, tmp_path / "plugin")
    lowered = lower_for_tensorrt(tmp_path / "plugin" / "draft.onnx", max_batch=1, max_sequence=8)
    with pytest.raises(TrtBuildError, match="lowered already"):
        lower_for_tensorrt(lowered, max_batch=1, max_sequence=8)
    target, draft = tiny_pair("qwen3")
    shutil.copytree(engine(target, draft, K, attention="plain"), tmp_path / "plain")
    with pytest.raises(TrtBuildError, match="--attention plugin"):
        lower_for_tensorrt(tmp_path / "plain" / "target.onnx", max_batch=1, max_sequence=8)
