"""The tensorrt build stage without TensorRT: the clear error, the optimization profiles, and the plain graphs
parsed and built by TensorRT-RTX (CPU) and linted by polygraphy. Tests that need TensorRT carry `tensorrt`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import onnx
import pytest

from pard_export.contract import (
    ATTENTION_MASK,
    BATCH,
    INPUT_IDS,
    PAST_LEN,
    SEQUENCE,
    TOTAL,
    GraphSpec,
    TensorSpec,
    draft_spec,
    target_spec,
)
from pard_export.errors import BackendUnavailableError, PardExportError, TrtBuildError
from pard_export.export import tensorrt_build as tb
from pard_export.tensorrt_support import TENSORRT_MISSING, tensorrt_available

no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
SETTINGS = tb.TrtBuildSettings(k=4, max_batch=8, prefill_chunk=128, max_seq_len=1024, opt_past=256)


@no_tensorrt
def test_cli_without_tensorrt_exits_2_with_one_line_and_writes_nothing(tiny_pair, tmp_path):
    target, draft = tiny_pair("llama")
    out = tmp_path / "engines" / "trt"
    command = [
        sys.executable,
        "-m",
        "pard_export.cli",
        "build",
        "--target",
        str(target),
        "--draft",
        str(draft),
        "--k",
        "4",
        "--backend",
        "tensorrt",
        "--dtype",
        "float16",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"pard-export build: error: {TENSORRT_MISSING}"]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "engines").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@no_tensorrt
def test_build_checks_tensorrt_before_loading_anything(monkeypatch, tmp_path):
    from pard_export.export import build

    def never(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(importlib.import_module("pard_export.export.build"), "_checked_pair", never)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed") as raised:
        build("no/such-model", 4, backend="tensorrt", dtype="float16", out=tmp_path / "e", progress=False)
    assert isinstance(raised.value.__cause__, ImportError)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        tb.build_plan(tmp_path / "x.onnx", tmp_path / "x.plan", [], SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_builds_half_precision_only(monkeypatch):
    monkeypatch.setattr(tb, "require_tensorrt", lambda: object())
    with pytest.raises(PardExportError, match="--dtype float16 or bfloat16"):
        tb.check_tensorrt_build("float32")
    tb.check_tensorrt_build("bfloat16")
    with pytest.raises(PardExportError, match="max_batch"):
        tb.TrtBuildSettings(max_batch=0)


def test_profiles_cover_decode_verify_and_prefill_for_the_plain_target():
    spec = target_spec(2, 2, 16, 320)
    profiles = tb.optimization_profiles(spec, SETTINGS)
    assert list(profiles) == ["step", "prefill"]
    step, prefill = profiles.values()
    assert list(step.keys()) == [t.name for t in spec.inputs]
    ids, mask, past = (_ranges(step, n) for n in (INPUT_IDS, ATTENTION_MASK, "past_key_values.0.key"))
    assert ids == ((1, 1), (1, 5), (8, 5))  # S = 1 (decode) .. k + 1 (verify), tuned for verify at batch 1
    assert past == ((1, 2, 0, 16), (1, 2, 256, 16), (8, 2, 1023, 16))  # P from 0 to max_seq_len - 1
    assert mask == ((1, 1), (1, 261), (8, 1024))  # T = P + S at min and opt, capped at max_seq_len
    assert _ranges(prefill, INPUT_IDS) == ((1, 1), (1, 128), (8, 128))
    assert prefill["past_key_values.1.value"].opt == (1, 2, 0, 16)  # prefill is tuned for an empty cache
    for profile in (step, prefill):
        for name, shapes in profile.items():
            assert all(a <= b <= c for a, b, c in zip(shapes.min, shapes.opt, shapes.max)), name


def _ranges(profile, name):
    shapes = profile[name]
    return tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)


def test_every_runtime_shape_lies_in_a_profile():
    step, prefill = tb.optimization_profiles(draft_spec(1, 1, 16, 320, 4), SETTINGS).values()

    def shapes(batch, seq, past):
        return {
            INPUT_IDS: (batch, seq),
            ATTENTION_MASK: (batch, past + seq),
            "past_key_values.0.key": (batch, 1, past, 16),
        }

    assert tb.within(step, shapes(1, 1, 1023))  # decode at the very end of the cache
    assert tb.within(step, shapes(8, 5, 0)) and not tb.within(step, shapes(8, 6, 0))
    assert tb.within(prefill, shapes(3, 128, 500)) and not tb.within(prefill, shapes(9, 1, 0))


def test_plugin_flavour_inputs_are_data_not_code():
    spec = target_spec(2, 2, 16, 320, attention="plugin")
    step, prefill = tb.optimization_profiles(spec, SETTINGS).values()
    cache = _ranges(step, "kv_cache.0.key")
    capacity = cache[0][2]
    assert capacity >= SETTINGS.max_seq_len + SETTINGS.k and cache[0] == (1, 2, capacity, 16)
    assert cache[2] == (8, 2, capacity, 16) and prefill["kv_cache.1.value"].opt[2] == capacity
    assert _ranges(step, PAST_LEN) == ((1,), (1,), (8,))
    odd = GraphSpec("target", (TensorSpec("x", "int64", (BATCH, "mystery")),), ())
    with pytest.raises(PardExportError, match="'mystery'.*DIM_VALUES"):
        tb.optimization_profiles(odd, SETTINGS)
    extended = {**tb.DIM_VALUES, "mystery": lambda p, s: 7}
    assert _ranges(tb.optimization_profiles(odd, SETTINGS, extended)["step"], "x") == ((1, 7), (1, 7), (8, 7))


def test_a_short_chunk_gives_one_profile():
    spec = GraphSpec(
        "target", (TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)), TensorSpec("m", "int64", (BATCH, TOTAL))), ()
    )
    settings = tb.TrtBuildSettings(k=8, prefill_chunk=4, max_seq_len=64)
    assert list(tb.optimization_profiles(spec, settings)) == ["step"]


def test_plain_graphs_parse_and_build_with_tensorrt_rtx_and_pass_polygraphy_lint(tiny_pair, engine):
    """TensorRT-RTX builds an SM89 plan on this CPU machine from the tiny engine's graphs with this module's
    profiles (the plan is never deserialized: that needs a GPU), and `polygraphy check lint` passes."""
    pytest.importorskip("tensorrt_rtx")
    target, draft = tiny_pair("llama")
    results = tb.check_plain_graphs(engine(target, draft, 4, attention="plain"), "SM89")
    assert set(results) == {"target", "draft"}
    for role, (built, lint) in results.items():
        assert built.plan_bytes > 100_000, role
        assert lint.clean and lint.passing > 50, role


def _plugin_graph(path):
    """One pard::PardAttention node, as the plugin-flavour graphs carry, with no creator registered anywhere here."""
    f16 = onnx.TensorProto.FLOAT
    inputs = [onnx.helper.make_tensor_value_info(n, f16, [1, 1, 2, 16]) for n in ("q", "k", "v")]
    inputs += [onnx.helper.make_tensor_value_info(n, f16, [1, 2, 8, 16]) for n in ("kc", "vc")]
    inputs += [onnx.helper.make_tensor_value_info("past_len", onnx.TensorProto.INT32, [1])]
    outputs = [onnx.helper.make_tensor_value_info(n, f16, None) for n in ("out", "kco", "vco")]
    node = onnx.helper.make_node(
        "PardAttention",
        ["q", "k", "v", "kc", "vc", "past_len"],
        ["out", "kco", "vco"],
        domain="pard",
        num_q_heads=2,
        num_kv_heads=2,
        head_size=16,
        plugin_namespace="pard",
        plugin_version="1",
    )
    graph = onnx.helper.make_graph([node], "g", inputs, outputs)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("pard", 1)]
    )
    onnx.save(model, path)
    return path


def test_rtx_and_lint_fail_loudly_on_a_graph_they_cannot_run(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    path = _plugin_graph(tmp_path / "plugin.onnx")
    with pytest.raises(TrtBuildError, match="parser rejected plugin.onnx"):
        tb.build_rtx_plan(path, [], "SM89")
    lint = tb.lint_onnx(path, {})  # an unregistered custom op: a warning, never clean
    assert lint.ok and not lint.clean and "PardAttention" in lint.entries[0]["message"]
    bad = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
        "bad",
        [
            onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2, 3]),
            onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4, 5]),
        ],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)],
    )
    onnx.save(onnx.helper.make_model(bad, opset_imports=[onnx.helper.make_opsetid("", 21)]), tmp_path / "bad.onnx")
    lint = tb.lint_onnx(tmp_path / "bad.onnx", {})
    assert not lint.ok and lint.failing and "matrix multiplication" in lint.entries[0]["message"]
    with pytest.raises(PardExportError, match="SM90.*not one of"):
        tb.build_rtx_plan(path, [], "SM90")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_plan_with_tensorrt(tiny_pair, engine, tmp_path):
    """On a TensorRT host: a plan from the plain fp32 target graph (strongly typed), with both profiles."""
    from pard_export.manifest import read_manifest

    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4, attention="plain")
    manifest = read_manifest(root)
    settings = tb.TrtBuildSettings(
        k=4, max_batch=2, prefill_chunk=32, max_seq_len=manifest.max_seq_len, timing_cache=tmp_path / "timing.cache"
    )
    size = tb.build_plan(
        root / "target.onnx",
        tmp_path / "target.plan",
        tb.optimization_profiles(manifest.models["target"].io, settings),
        settings,
    )
    assert size == (tmp_path / "target.plan").stat().st_size > 0 and (tmp_path / "timing.cache").is_file()
