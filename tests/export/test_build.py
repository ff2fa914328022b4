"""build(): the engine directory, its manifest, atomic replacement, dtypes, and hub ids (offline cache)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

import tiny_models
from pard_export.contract import (
    DRAFT,
    NATIVE_KERNEL,
    NATIVE_KERNEL_LIBRARY,
    ONNX_KERNEL,
    TARGET,
    draft_spec,
    target_spec,
)
from pard_export.errors import EngineError, PardExportError
from pard_export.export import build
from pard_export.manifest import read_manifest, verify_hashes
from pard_export.runtime import Session
from pard_export.runtime.backend_ort import OrtGraph

build_module = importlib.import_module("pard_export.export.build")  # the package re-exports the function


def test_engine_directory_and_manifest(tiny_pair, engine):
    target, draft = tiny_pair("qwen2")
    root = engine(target, draft, 4, attention="plain")
    manifest = read_manifest(root)
    verify_hashes(root, manifest)
    assert (manifest.format, manifest.k, manifest.mask_token_id) == ("pard-export/1", 4, tiny_models.MASK)
    assert manifest.vocab_size == tiny_models.VOCAB and manifest.eos_token_ids == (tiny_models.EOS,)
    assert manifest.max_seq_len == 512  # the tiny target's max_position_embeddings
    assert set(manifest.files) >= {
        "target.onnx",
        "target.onnx.data",
        "draft.onnx",
        "draft.onnx.data",
        "tokenizer/tokenizer.json",
    }
    assert manifest.tools["onnxruntime"] == ort.__version__
    sizes = tiny_models.TARGET_SIZE, tiny_models.DRAFT_SIZE
    assert manifest.models[TARGET].io == target_spec(sizes[0]["num_hidden_layers"], 2, 16, tiny_models.VOCAB)
    assert manifest.models[DRAFT].io == draft_spec(sizes[1]["num_hidden_layers"], 1, 16, tiny_models.VOCAB, 4)
    for role in (TARGET, DRAFT):
        session = ort.InferenceSession(str(root / manifest.models[role].file))
        assert [i.name for i in session.get_inputs()] == [t.name for t in manifest.models[role].io.inputs]
        assert [o.name for o in session.get_outputs()] == [t.name for t in manifest.models[role].io.outputs]


def test_the_ar_draft_graph_reads_the_drafts_weight_file(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4, with_ar_draft=True)
    manifest = read_manifest(root)
    assert "draft.onnx.data" in manifest.files and "draft_ar.onnx.data" not in manifest.files
    assert not (root / "draft_ar.onnx.data").exists()
    graph = onnx.load(str(root / "draft_ar.onnx"), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"draft.onnx.data"}
    with Session(root) as session:
        expected = session.generate(tiny_models.PROMPTS[0], max_new_tokens=10, mode="ar").token_ids
        assert session.generate(tiny_models.PROMPTS[0], max_new_tokens=10, mode="ar-draft").token_ids == expected


def test_failure_leaves_nothing(tiny_pair, tmp_path, monkeypatch):
    target, draft = tiny_pair("llama")
    out = tmp_path / "engines" / "e"

    def broken(*args, **kwargs):
        raise RuntimeError("export failed half-way")

    monkeypatch.setattr("pard_export.export.graphs.export_draft", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        build(str(target), 4, draft=str(draft), out=out, progress=False)
    assert list(out.parent.iterdir()) == []


def test_force_replaces_an_engine(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    out = Path(shutil.copytree(engine(target, draft, 4), tmp_path / "e"))
    (out / "stale.txt").write_text("old")
    build(str(target), 2, draft=str(draft), out=out, force=True, progress=False)
    assert not (out / "stale.txt").exists()
    assert read_manifest(out).k == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_float16_engine(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4, dtype="float16", attention="plain")
    session = ort.InferenceSession(str(root / "target.onnx"))
    types = {i.name: i.type for i in session.get_inputs()}
    assert types["past_key_values.0.key"] == "tensor(float16)"
    fp32 = engine(target, draft, 4, attention="plain")
    ids = [5, 17, 40, 99]
    with Session(root) as half, Session(fp32) as full:
        assert half.generate(ids, max_new_tokens=8).token_ids == full.generate(ids, max_new_tokens=8).token_ids


def test_the_native_kernel_by_default_where_it_compiles(tiny_pair, engine, tmp_path, monkeypatch, capsys):
    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4)
    native = read_manifest(root)
    assert native.attention_kernel == NATIVE_KERNEL and NATIVE_KERNEL_LIBRARY in native.files
    with pytest.raises(EngineError, match="runs its attention in a CPU kernel"):  # its op is registered for the CPU
        OrtGraph(root / native.models[TARGET].file, native.models[TARGET].io, providers=["CUDAExecutionProvider"])
    monkeypatch.setattr(build_module.native_build, "find_headers", lambda: None)
    fallback = build(str(target), 4, draft=str(draft), out=tmp_path / "o", progress=False)
    assert read_manifest(fallback).attention_kernel == ONNX_KERNEL
    assert not (fallback / NATIVE_KERNEL_LIBRARY).exists()
    assert (
        "note: the onnx attention kernel, not the native one: ONNX Runtime's C++ API headers" in capsys.readouterr().err
    )


def test_bfloat16_needs_tensorrt(tiny_pair, tmp_path):
    target, draft = tiny_pair("llama")
    with pytest.raises(PardExportError, match="bfloat16"):
        build(str(target), 4, draft=str(draft), out=tmp_path / "o", dtype="bfloat16", progress=False)
    assert not (tmp_path / "o").exists()


def _hub_cache(root: Path, repo: str, model_dir: Path) -> None:
    """The layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_ids_through_the_offline_cache(tiny_pair, tmp_path):
    target, draft = tiny_pair("llama")
    cache = tmp_path / "hub"
    _hub_cache(cache, "tiny-org/target", target)
    _hub_cache(cache, "tiny-org/pard-draft", draft)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    exe = str(Path(sys.executable).with_name("pard-export"))
    out = tmp_path / "e"
    done = subprocess.run(
        [
            exe,
            "build",
            "--target",
            "tiny-org/target",
            "--draft",
            "tiny-org/pard-draft",
            "--k",
            "2",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["target"]["source"] == "tiny-org/target"
    missing = subprocess.run(
        [exe, "build", "--target", "tiny-org/absent", "--draft", "tiny-org/pard-draft", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "cannot load tiny-org/absent" in missing.stderr
    assert not (tmp_path / "x").exists()


def test_default_out_dir_name():
    assert build_module._short_name("smollm2-135m") == "smollm2-135m"
    assert build_module._short_name("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b-instruct"
    assert build_module._short_name("/models/SmolLM2.Q4.gguf") == "smollm2.q4"


def test_logits_are_float32_whatever_the_dtype(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    session = ort.InferenceSession(str(engine(target, draft, 4, dtype="float16", attention="plain") / "draft.onnx"))
    outputs = {o.name: o.type for o in session.get_outputs()}
    assert outputs["draft_logits"] == "tensor(float)" and outputs["draft_ids"] == "tensor(int64)"


def test_a_graph_onnx_runtime_rejects_fails_the_build(tmp_path):
    spec = target_spec(1, 1, 16, 32)
    node = onnx.helper.make_node("NoSuchOp", ["input_ids"], ["logits"], domain="nowhere")
    x = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", "sequence", 32])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y]))
    onnx.save_model(model, tmp_path / "target.onnx")
    with pytest.raises(PardExportError, match="ONNX Runtime cannot load the exported target.onnx"):
        build_module._compile_onnxruntime(tmp_path, {TARGET: spec})
