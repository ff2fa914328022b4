"""PardAttention as an ONNX node: the OpSchema (checker, shape inference), the pass to onnxruntime-extensions'
domain, and the op on ONNX Runtime against the numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

pytest.importorskip("onnxruntime_extensions")

from plugins.pard_attention import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION, reference  # noqa: E402
from plugins.pard_attention.onnxruntime_op import CONTRIB_DOMAIN, inference_session, to_contrib_domain  # noqa: E402
from plugins.pard_attention.schema import make_node, opset_import, register_schema  # noqa: E402


def one_node_model(q_heads=4, kv_heads=2, head_size=8, dims=("B", "S", "C")) -> onnx.ModelProto:
    """A graph of one PardAttention node; its outputs declare only their rank, so inference has to supply the dims."""
    b, s, c = dims
    vi = onnx.helper.make_tensor_value_info
    inputs = [
        vi("q", TensorProto.FLOAT, [b, s, q_heads, head_size]),
        vi("k", TensorProto.FLOAT, [b, s, kv_heads, head_size]),
        vi("v", TensorProto.FLOAT, [b, s, kv_heads, head_size]),
        vi("k_cache", TensorProto.FLOAT, [b, kv_heads, c, head_size]),
        vi("v_cache", TensorProto.FLOAT, [b, kv_heads, c, head_size]),
        vi("past_len", TensorProto.INT32, [b]),
    ]
    outputs = [vi(name, TensorProto.FLOAT, [None] * 4) for name in ("out", "k_cache_out", "v_cache_out")]
    node = make_node(
        [i.name for i in inputs],
        [o.name for o in outputs],
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_size=head_size,
        name="attention",
    )
    graph = onnx.helper.make_graph([node], "one_node", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18), opset_import()])


def test_schema_registers_once_and_describes_the_plugin_node():
    first, again = register_schema(), register_schema()
    assert (first.name, first.domain, first.since_version) == (again.name, again.domain, again.since_version)
    assert (first.name, first.domain) == (OP_TYPE, DOMAIN)
    assert [i.name for i in first.inputs] == ["q", "k_new", "v_new", "k_cache", "v_cache", "past_len", "sync"]
    assert [o.name for o in first.outputs] == [
        "out",
        "k_cache_out",
        "v_cache_out",
        "sync_out",
        "partial",
        "partial_lse",
    ]
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional  # the TensorRT form's extras only
    assert [p.name for p in (*first.inputs, *first.outputs) if p.option == optional] == [
        "sync",
        "sync_out",
        "partial",
        "partial_lse",
    ]
    assert {"num_q_heads", "num_kv_heads", "head_size", "plugin_namespace", "plugin_version"} <= set(first.attributes)
    node = one_node_model().graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, attrs["plugin_namespace"], attrs["plugin_version"]) == (
        DOMAIN,
        PLUGIN_NAMESPACE.encode(),
        PLUGIN_VERSION.encode(),
    )


def test_checker_and_shape_inference_accept_the_node():
    register_schema()
    model = one_node_model()
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.output, *inferred.graph.value_info)
    }
    assert shapes["out"] == ["B", "S", 4, 8]
    assert shapes["k_cache_out"] == shapes["v_cache_out"] == ["B", 2, "C", 8]


@pytest.mark.parametrize("heads, match", [((3, 2), "multiple"), ((8, 2), "num_q_heads is 8")])
def test_shape_inference_rejects_head_counts_that_do_not_fit(heads, match):
    register_schema()
    model = one_node_model()
    node = model.graph.node[0]
    for attr in node.attribute:
        if attr.name == "num_q_heads":
            attr.i = heads[0]
    with pytest.raises(onnx.shape_inference.InferenceError, match=match):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_contrib_pass_moves_only_the_attention_nodes_and_leaves_its_input_alone():
    model = one_node_model()
    relu = onnx.helper.make_node("Relu", ["out"], ["relu_out"])
    model.graph.node.append(relu)
    moved = to_contrib_domain(model)
    assert [n.domain for n in moved.graph.node] == [CONTRIB_DOMAIN, ""]
    assert {o.domain for o in moved.opset_import} == {"", CONTRIB_DOMAIN}
    assert model.graph.node[0].domain == DOMAIN and {o.domain for o in model.opset_import} == {"", DOMAIN}
    assert moved.graph.node[0].attribute == model.graph.node[0].attribute  # every attribute kept


def random_inputs(seed, batch=2, seq=3, q_heads=4, kv_heads=2, head_size=8, capacity=16, past=(0, 9)):
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "q": f(batch, seq, q_heads, head_size),
        "k": f(batch, seq, kv_heads, head_size),
        "v": f(batch, seq, kv_heads, head_size),
        "k_cache": f(batch, kv_heads, capacity, head_size),
        "v_cache": f(batch, kv_heads, capacity, head_size),
        "past_len": np.array(past, dtype=np.int32),
    }


@pytest.mark.parametrize("seq, heads", [(1, (4, 2)), (3, (4, 2)), (5, (4, 1)), (2, (2, 2))])
def test_onnxruntime_op_equals_the_reference(tmp_path, seq, heads):
    path = tmp_path / "attention.onnx"
    onnx.save(one_node_model(*heads), path)
    session = inference_session(path, ort.SessionOptions(), ["CPUExecutionProvider"])
    feeds = random_inputs(seq, seq=seq, q_heads=heads[0], kv_heads=heads[1])
    before = {name: array.copy() for name, array in feeds.items()}
    out, k_cache, v_cache = session.run(None, feeds)
    expected_k, expected_v = before["k_cache"].copy(), before["v_cache"].copy()
    expected = reference.pard_attention(
        before["q"], before["k"], before["v"], expected_k, expected_v, before["past_len"]
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(k_cache, expected_k)
    np.testing.assert_array_equal(v_cache, expected_v)
    assert not np.array_equal(k_cache, before["k_cache"])  # the new rows did land
    for name in feeds:
        np.testing.assert_array_equal(feeds[name], before[name])  # ONNX Runtime's inputs stay untouched


def test_onnxruntime_op_answers_a_row_past_the_capacity_with_nan_not_an_abort(tmp_path, capfd):
    path = tmp_path / "attention.onnx"
    onnx.save(one_node_model(), path)
    session = inference_session(path, ort.SessionOptions(), ["CPUExecutionProvider"])
    feeds = random_inputs(0, past=(0, 14))  # 14 + 3 new rows > 16
    out, _, _ = session.run(None, feeds)
    assert np.isnan(out).all()
    assert "does not fit" in capfd.readouterr().err
