"""pard.cpu::CachedAttention, compiled here and run by ONNX Runtime: the numpy reference's numbers (q/k norms and
rotary in numpy, then plugins/pard_attention's reference attention), the caches updated in place under IO binding,
a token's output independent of the rest of its call (bit for bit), and a call that overflows the cache refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from plugins.cached_attention import DOMAIN, INPUTS, OP_TYPE, OPSET_VERSION, OUTPUTS
from plugins.cached_attention.build import compile_library
from plugins.pard_attention.reference import pard_attention

Q_HEADS, KV_HEADS, DIM, CAPACITY, EPS = 6, 2, 16, 64, 1e-6  # groups of 3: rows of two tokens meet


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return compile_library(tmp_path_factory.mktemp("kernel") / "cached_attention.so")


def _session(library, path, norms: bool) -> ort.InferenceSession:
    names = [*INPUTS[:6], *(("q_norm", "k_norm") if norms else ("", "")), "prefill"]
    node = h.make_node(
        OP_TYPE,
        names,
        list(OUTPUTS),
        domain=DOMAIN,
        num_q_heads=Q_HEADS,
        num_kv_heads=KV_HEADS,
        head_size=DIM,
        scale=DIM**-0.5,
        epsilon=EPS,
    )
    types = {"past_len": T.INT32, "prefill": T.BOOL}
    graph = h.make_graph(
        [node],
        "one_node",
        [h.make_tensor_value_info(n, types.get(n, T.FLOAT), None) for n in names if n],
        [h.make_tensor_value_info(n, T.FLOAT, None) for n in OUTPUTS],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 24), h.make_opsetid(DOMAIN, OPSET_VERSION)])
    onnx.save(model, path)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(rng, past_len, tokens: int, norms: bool, prefill: bool = False) -> dict[str, np.ndarray]:
    batch = len(past_len)
    positions = np.asarray(past_len)[:, None] + np.arange(tokens)[None]
    angles = positions[..., None] * (1e4 ** -(np.arange(DIM // 2) / (DIM // 2)))[None, None]
    feeds = {
        "qkv": rng.standard_normal((batch, tokens, (Q_HEADS + 2 * KV_HEADS) * DIM)).astype(np.float32),
        "cos": np.cos(angles).astype(np.float32),
        "sin": np.sin(angles).astype(np.float32),
        "k_cache": rng.standard_normal((batch, KV_HEADS, CAPACITY, DIM)).astype(np.float32),
        "v_cache": rng.standard_normal((batch, KV_HEADS, CAPACITY, DIM)).astype(np.float32),
        "past_len": np.asarray(past_len, np.int32),
        "prefill": np.array(prefill),
    }
    if norms:
        feeds |= {name: rng.uniform(0.5, 1.5, DIM).astype(np.float32) for name in ("q_norm", "k_norm")}
    return feeds


def _reference(feeds: dict[str, np.ndarray]):
    batch, tokens = feeds["qkv"].shape[:2]
    heads = feeds["qkv"].reshape(batch, tokens, Q_HEADS + 2 * KV_HEADS, DIM)
    q, k, v = np.split(heads, [Q_HEADS, Q_HEADS + KV_HEADS], axis=2)
    if "q_norm" in feeds:
        q, k = (
            x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * feeds[n] for x, n in ((q, "q_norm"), (k, "k_norm"))
        )
    cos, sin = feeds["cos"][:, :, None], feeds["sin"][:, :, None]

    def rotated(x):
        first, second = x[..., : DIM // 2], x[..., DIM // 2 :]
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)

    keys, values = feeds["k_cache"].copy(), feeds["v_cache"].copy()
    out = pard_attention(rotated(q), rotated(k), v, keys, values, feeds["past_len"])
    return out.reshape(batch, tokens, Q_HEADS * DIM), keys, values


@pytest.mark.parametrize("norms", [False, True])  # with and without Qwen3's q/k norms
@pytest.mark.parametrize("tokens, prefill", [(4, False), (4, True), (45, True)])  # prompt chunks: blocks of 32 tokens
def test_matches_the_reference_in_a_ragged_batch(library, tmp_path, norms, tokens, prefill):
    feeds = _feeds(np.random.default_rng(0), [3, 0], tokens, norms, prefill)
    out, keys, values = _session(library, tmp_path / "op.onnx", norms).run(None, feeds)
    expected = _reference(feeds)
    for found, wanted in zip((out, keys, values), expected):
        np.testing.assert_allclose(found, wanted, atol=2e-5, rtol=0)


def test_caches_bound_as_input_and_output_are_updated_in_place(library, tmp_path):
    session = _session(library, tmp_path / "op.onnx", norms=False)
    feeds = _feeds(np.random.default_rng(1), [5], 2, norms=False)
    out, keys, values = _reference(feeds)
    binding = session.io_binding()
    caches = {name: ort.OrtValue.ortvalue_from_numpy(feeds.pop(name).copy()) for name in ("k_cache", "v_cache")}
    addresses = {name: value.data_ptr() for name, value in caches.items()}
    for name, value in caches.items():
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(f"{name}_out", value)
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("out", "cpu")
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(binding.get_outputs()[-1].numpy(), out, atol=2e-5, rtol=0)
    np.testing.assert_allclose(caches["k_cache"].numpy(), keys, atol=2e-5, rtol=0)
    np.testing.assert_allclose(caches["v_cache"].numpy(), values, atol=0, rtol=0)
    assert {name: value.data_ptr() for name, value in caches.items()} == addresses


def test_a_tokens_output_does_not_depend_on_the_rest_of_the_call(library, tmp_path):
    session = _session(library, tmp_path / "op.onnx", norms=True)
    feeds = _feeds(np.random.default_rng(2), [6, 9], 4, norms=True)
    together = session.run(None, feeds)[0]
    for b in range(2):
        row = {n: v[b : b + 1] if n not in ("q_norm", "k_norm", "prefill") else v for n, v in feeds.items()}
        assert np.array_equal(session.run(None, row)[0][0], together[b])  # alone instead of in a batch
        keys, values = row["k_cache"].copy(), row["v_cache"].copy()
        for i in range(4):  # one token per call instead of four in one
            step = {**row, "qkv": row["qkv"][:, i : i + 1], "cos": row["cos"][:, i : i + 1]}
            step |= {"sin": row["sin"][:, i : i + 1], "k_cache": keys, "v_cache": values}
            step["past_len"] = row["past_len"] + i
            out, keys, values = session.run(None, step)
            assert np.array_equal(out[0, 0], together[b, i])


def test_a_call_past_the_cache_capacity_is_refused(library, tmp_path):
    session = _session(library, tmp_path / "op.onnx", norms=False)
    feeds = _feeds(np.random.default_rng(3), [CAPACITY - 2], 4, norms=False)
    with pytest.raises(Exception, match="do not fit"):
        session.run(None, feeds)
