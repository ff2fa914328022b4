"""The tensorrt runtime adapter: its pure parts here (profile choice, CUDA graph buckets, the clear error without
TensorRT, the slim import); running plans needs TensorRT and a GPU (`tensorrt`, `gpu` markers)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pard_export.errors import BackendUnavailableError, EngineError
from pard_export.runtime import Session
from pard_export.runtime.backend_trt import graph_key, pick_profile
from pard_export.tensorrt_support import TENSORRT_MISSING, tensorrt_available

RANGES = [  # (min, max) per input, as TrtGraph reads them from a plan: the "step" then the "prefill" profile
    {"input_ids": ((1, 1), (8, 5)), "attention_mask": ((1, 1), (8, 1024))},
    {"input_ids": ((1, 1), (8, 128)), "attention_mask": ((1, 1), (8, 1024))},
]


def test_pick_profile_takes_the_first_that_holds_the_call():
    assert pick_profile(RANGES, {"input_ids": (2, 5), "attention_mask": (2, 300)}) == 0  # verify
    assert pick_profile(RANGES, {"input_ids": (1, 60), "attention_mask": (1, 60)}) == 1  # prefill
    with pytest.raises(EngineError, match="input_ids \\[9, 1\\].*--max-batch"):
        pick_profile(RANGES, {"input_ids": (9, 1), "attention_mask": (9, 10)})


def test_cuda_graphs_are_keyed_by_shape_and_only_for_captured_lengths():
    decode = {"input_ids": (2, 1), "attention_mask": (2, 40)}
    assert graph_key(decode, {1, 5}) == (("attention_mask", (2, 40)), ("input_ids", (2, 1)))
    assert graph_key(decode, {1, 5}) != graph_key({"input_ids": (2, 1), "attention_mask": (2, 41)}, {1, 5})
    assert graph_key({"input_ids": (1, 60), "attention_mask": (1, 60)}, {1, 5}) is None  # prefill: not captured
    assert graph_key(decode, None) is None and graph_key(decode, ()) is None


def test_runtime_import_stays_free_of_tensorrt():
    code = ("import sys, pard_export.runtime; "
            "print(','.join(m for m in ('tensorrt', 'pard_export.runtime.backend_trt', 'cuda') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_a_tensorrt_engine_without_tensorrt_is_a_clear_error(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    root = shutil.copytree(engine(target, draft, 4), tmp_path / "trt-engine")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="^" + re.escape(TENSORRT_MISSING)):
        Session(root)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_trt_graph_matches_onnxruntime_on_the_plain_target(tiny_pair, engine, tmp_path):
    """On a TensorRT host: the plain fp32 target as a plan, run through TrtGraph (with CUDA graphs), against ORT."""
    import onnxruntime as ort

    from pard_export.export import tensorrt_build as tb
    from pard_export.manifest import read_manifest
    from pard_export.runtime.backend_trt import TrtGraph

    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4)
    io = read_manifest(root).models["target"].io
    settings = tb.TrtBuildSettings(k=4, max_batch=2, prefill_chunk=16, max_seq_len=64, opt_past=8)
    tb.build_plan(root / "target.onnx", tmp_path / "target.plan", tb.optimization_profiles(io, settings), settings)
    graph = TrtGraph(tmp_path / "target.plan", io, capture={1, 5})
    reference = ort.InferenceSession(str(root / "target.onnx"))
    rng = np.random.default_rng(0)
    for seq, past in ((3, 0), (5, 7), (5, 7), (1, 20)):  # the repeated verify call replays its CUDA graph
        feeds = {"input_ids": rng.integers(0, 300, (2, seq)), "position_ids": np.tile(np.arange(past, past + seq), (2, 1)),
                 "attention_mask": np.ones((2, past + seq), dtype=np.int64)}
        feeds.update({name: rng.standard_normal((2, 2, past, 16)).astype(np.float32) for name in io.past_names})
        found, expected = graph.run(feeds), dict(zip(graph.output_names, reference.run(None, feeds)))
        for name in graph.output_names:
            np.testing.assert_allclose(found[name], expected[name], atol=2e-3, rtol=2e-3)
    graph.close()
