"""Streaming export from safetensors checkpoints: sharded and bf16 checkpoints build and stay lossless; a shard
missing from disk or a tensor of the wrong shape exits 2 with one line naming the file and tensor, writing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import tiny_models
from pard_export.cli import main
from pard_export.errors import SourceError
from pard_export.export.checkpoint import INDEX_FILE, CheckpointWeights
from pard_export.export.sources import resolve
from pard_export.runtime import Session

PROMPT = [276, 297, 298, 294]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair("llama")


def _resaved(source, out, dtype=None, shard_size=None):
    """The model of `source` saved again into `out`: in `dtype`, in shards of at most `shard_size`."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    options = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **options)
    for file in source.iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(file, out / file.name)
    return out


@pytest.fixture(scope="module")
def sharded(pair, tmp_path_factory):
    target = _resaved(pair[0], tmp_path_factory.mktemp("sharded") / "target", shard_size="30KB")
    assert len(json.loads((target / INDEX_FILE).read_text())["weight_map"]) > 0
    assert len(list(target.glob("*.safetensors"))) >= 2
    return target


@pytest.mark.parametrize("kind", ["sharded", "bf16"])
def test_sharded_and_bf16_checkpoints_build_lossless(pair, sharded, engine, tmp_path_factory, kind):
    if kind == "bf16":
        target = _resaved(pair[0], tmp_path_factory.mktemp("bf16") / "target", dtype=torch.bfloat16)
    else:
        target = sharded
    expected = tiny_models.reference_greedy(target, PROMPT, 24)  # the checkpoint's own weights, in float32
    with Session(engine(target, pair[1], 4, with_ar_draft=True)) as session:
        for mode in ("ar", "pard", "pard-fixed", "ar-draft"):
            assert session.generate(PROMPT, max_new_tokens=24, mode=mode).token_ids == expected, mode


def test_the_weights_are_read_one_at_a_time_in_the_engine_dtype(sharded):
    model, weights = resolve(str(sharded)).load_for_export(torch.float16)
    assert next(model.parameters()).device.type == "meta"  # no weight memory for the model itself
    assert isinstance(weights, CheckpointWeights) and len(weights) == len(dict(model.named_parameters()))
    name = "model.layers.1.mlp.down_proj.weight"
    with safe_open(weights.files[name], framework="pt") as f:
        stored = f.get_tensor(name)
    assert weights[name].dtype == torch.float16 and torch.equal(weights[name], stored.to(torch.float16))
    assert model.model.rotary_emb.inv_freq.device.type == "cpu"  # the export reads it


def _fails_cleanly(capsys, argv, *parts):
    """Exit 2, one line holding every one of `parts`, and nothing written beside --out (no staging left)."""
    out = Path(argv[argv.index("--out") + 1])
    capsys.readouterr()
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert all(part in lines[0] for part in parts), lines[0]
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_missing_shard_exits_2_naming_the_file_and_a_tensor(pair, sharded, tmp_path, capsys):
    target = shutil.copytree(sharded, tmp_path / "target")
    weight_map = json.loads((target / INDEX_FILE).read_text())["weight_map"]
    gone = sorted(set(weight_map.values()))[-1]
    (target / gone).unlink()
    tensor = next(name for name, file in weight_map.items() if file == gone)
    argv = ["build", "--target", str(target), "--draft", str(pair[1]), "--out", str(tmp_path / "out" / "o")]
    _fails_cleanly(capsys, argv, gone, tensor, "is missing")


def test_a_tensor_of_the_wrong_shape_exits_2_naming_the_file_and_tensor(pair, tmp_path, capsys):
    target = shutil.copytree(pair[0], tmp_path / "target")
    file = target / "model.safetensors"
    with safe_open(file, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    name = "model.layers.0.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-1]  # one row short
    save_file(tensors, file, metadata={"format": "pt"})
    argv = ["build", "--target", str(target), "--draft", str(pair[1]), "--out", str(tmp_path / "out" / "o")]
    _fails_cleanly(capsys, argv, "model.safetensors", name, "shape")


def test_a_tensor_missing_from_the_checkpoint_is_named(pair, tmp_path):
    target = shutil.copytree(pair[0], tmp_path / "target")
    file = target / "model.safetensors"
    with safe_open(file, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys() if name != "model.norm.weight"}
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(SourceError, match="no tensor model.norm.weight"):
        resolve(str(target)).load_for_export(torch.float32)
