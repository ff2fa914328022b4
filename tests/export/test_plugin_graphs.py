"""Plugin-flavour graphs (PardAttention nodes over preallocated KV buffers): valid ONNX for the checker and shape
inference, and on ONNX Runtime (the onnxruntime-extensions op) the plain graphs' logits, drafts and KV (fp32)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tiny_models
from pard_export.contract import (
    ATTENTION_MASK,
    DRAFT_IDS,
    DRAFT_LOGITS,
    INPUT_IDS,
    LOGITS,
    PAST_LEN,
    POSITION_IDS,
    kv_cache_name,
    kv_cache_out_name,
    past_name,
    present_name,
)
from pard_export.manifest import read_manifest

pytest.importorskip("onnxruntime_extensions")

from plugins.pard_attention import DOMAIN, OP_TYPE  # noqa: E402
from plugins.pard_attention.onnxruntime_op import inference_session  # noqa: E402
from plugins.pard_attention.schema import register_schema  # noqa: E402

K = 4
TOL = 1e-4
ARCH = "qwen3"  # qk-norm and GQA: the most of the layer that moves into the split blocks
# (batch, new tokens, past): prefill, decode (S=1), verify (S=K+1), with and without a cache
TARGET_CASES = [(1, 7, 0), (2, 7, 0), (2, 1, 6), (2, K + 1, 9), (1, K + 1, 0)]
DRAFT_CASES = [(1, 6, 0), (2, 1, 5), (2, 3, 8)]


@pytest.fixture(scope="module")
def engines(tiny_pair, engine):
    """(plain engine, plugin engine) of the same pair."""
    target, draft = tiny_pair(ARCH)
    return engine(target, draft, K, attention="plain"), engine(target, draft, K, attention="plugin", max_seq_len=64)


def _names(name_of, layers):
    return [name_of(i, kind) for i in range(layers) for kind in ("key", "value")]


def _steps(session, prefix, new, kv, cache_in, cache_out, context):
    """Run `prefix`, then `new`; context(start, s) gives the flavour's own feeds. (outputs, caches, length)."""
    b, outputs, start = prefix.shape[0], None, 0
    for ids in (prefix, new):
        if not ids.shape[1]:
            continue
        s = ids.shape[1]
        feeds = {INPUT_IDS: ids, POSITION_IDS: np.tile(np.arange(start, start + s), (b, 1)), **context(start, s)}
        feeds |= dict(zip(cache_in, kv))
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        kv = [outputs[name] for name in cache_out]
        start += s
    return outputs, kv, start


def _plain(session, layers, shape, prefix, new):
    """Outputs of `new` after `prefix` through a plain graph: (outputs by name, present caches)."""
    b, kv_heads, head_dim = shape
    kv = [np.zeros((b, kv_heads, 0, head_dim), np.float32) for _ in range(2 * layers)]
    outputs, kv, _ = _steps(
        session,
        prefix,
        new,
        kv,
        _names(past_name, layers),
        _names(present_name, layers),
        lambda start, s: {ATTENTION_MASK: np.ones((b, start + s), np.int64)},
    )
    return outputs, kv


def _plugin(session, layers, shape, prefix, new, capacity):
    """The same through a plugin graph: (outputs by name, each cache's first P+S rows)."""
    b, kv_heads, head_dim = shape
    kv = [np.zeros((b, kv_heads, capacity, head_dim), np.float32) for _ in range(2 * layers)]
    outputs, kv, length = _steps(
        session,
        prefix,
        new,
        kv,
        _names(kv_cache_name, layers),
        _names(kv_cache_out_name, layers),
        lambda start, s: {PAST_LEN: np.full(b, start, np.int32)},
    )
    return outputs, [t[:, :, :length] for t in kv]


def _sessions(engines, role):
    plain, plugin = engines
    entry = read_manifest(plugin).models[role]
    sessions = (
        ort.InferenceSession(str(plain / f"{role}.onnx")),
        inference_session(plugin / f"{role}.onnx", ort.SessionOptions(), ["CPUExecutionProvider"]),
    )
    return sessions, entry.layers, entry.kv_heads, entry.head_dim


def _tokens(batch, new, past):
    rng = np.random.default_rng(batch * 100 + new * 10 + past)
    return rng.integers(4, tiny_models.VOCAB, (batch, past)), rng.integers(4, tiny_models.VOCAB, (batch, new))


def test_plugin_graphs_pass_the_checker_and_shape_inference(engines, tmp_path):
    register_schema()
    _, plugin = engines
    for role in ("target", "draft"):
        path = plugin / f"{role}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(tmp_path / f"{role}.onnx"), strict_mode=True)
        model = onnx.load(str(tmp_path / f"{role}.onnx"), load_external_data=False)
        nodes = [n for n in model.graph.node if n.op_type == OP_TYPE]
        entry = read_manifest(plugin).models[role]
        assert len(nodes) == entry.layers and {n.domain for n in nodes} == {DOMAIN}
        assert {o.domain: o.version for o in model.opset_import}[DOMAIN] == 1
        inferred = {v.name: v.type.tensor_type for v in model.graph.value_info}
        out = inferred[nodes[0].output[0]]  # [B, S(+K-1), Hq, D], inferred through the schema
        size = tiny_models.TARGET_SIZE if role == "target" else tiny_models.DRAFT_SIZE
        assert [d.dim_value for d in out.shape.dim][2:] == [size["num_attention_heads"], size["head_dim"]]
    manifest = read_manifest(plugin)
    assert manifest.attention == "plugin" and read_manifest(engines[0]).attention == "plain"


@pytest.mark.parametrize("batch,new,past", TARGET_CASES)
def test_plugin_target_graph_equals_the_plain_one(engines, batch, new, past):
    (plain, plugin), layers, kv_heads, head_dim = _sessions(engines, "target")
    prefix, tokens = _tokens(batch, new, past)
    expected, expected_kv = _plain(plain, layers, (batch, kv_heads, head_dim), prefix, tokens)
    found, found_kv = _plugin(plugin, layers, (batch, kv_heads, head_dim), prefix, tokens, capacity=past + new + 3)
    assert np.abs(found[LOGITS] - expected[LOGITS]).max() <= TOL
    for f, e in zip(found_kv, expected_kv):
        assert np.abs(f - e).max() <= TOL


@pytest.mark.parametrize("batch,new,past", DRAFT_CASES)
def test_plugin_draft_graph_equals_the_plain_one(engines, batch, new, past):
    (plain, plugin), layers, kv_heads, head_dim = _sessions(engines, "draft")
    prefix, tokens = _tokens(batch, new, past)
    expected, expected_kv = _plain(plain, layers, (batch, kv_heads, head_dim), prefix, tokens)
    found, found_kv = _plugin(plugin, layers, (batch, kv_heads, head_dim), prefix, tokens, capacity=past + new + K + 2)
    assert np.abs(found[DRAFT_LOGITS] - expected[DRAFT_LOGITS]).max() <= TOL
    assert (found[DRAFT_IDS] == expected[DRAFT_IDS]).all()
    for f, e in zip(found_kv, expected_kv):  # the real tokens' KV; the mask slots' rows lie above them
        assert np.abs(f - e).max() <= TOL
