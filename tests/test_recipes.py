"""`pard-export recipe`: TensorRT-LLM and vLLM configs whose keys are those projects' documented names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pard_export.cli import main
from pard_export.errors import PardExportError
from pard_export.manifest import read_manifest
from pard_export.recipes import _checkpoint, recipe

# TensorRT-LLM LLM API (PyTorch backend): tensor_parallel_size, speculative_config = PARDDecodingConfig(...)
TRTLLM_LLM_ARGS = {"tensor_parallel_size", "speculative_config"}
TRTLLM_PARD_FIELDS = {"decoding_type", "max_draft_len", "max_total_draft_tokens", "speculative_model", "mask_token_id"}
# vLLM docs, "Parallel Draft Models":
# speculative_config={"model", "num_speculative_tokens", "method", "parallel_drafting"}
VLLM_FIELDS = {"model", "num_speculative_tokens", "method", "parallel_drafting"}


@pytest.fixture
def engine_dir(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    return engine(target, draft, 4), target, draft


def test_trtllm_yaml(engine_dir, tmp_path):
    engine, target, draft = engine_dir
    made = recipe(engine, "trtllm", tp=4, out=tmp_path / "serve.yaml")
    config = yaml.safe_load(made.path.read_text())
    assert set(config) <= TRTLLM_LLM_ARGS and set(config["speculative_config"]) <= TRTLLM_PARD_FIELDS
    assert config["tensor_parallel_size"] == 4
    assert config["speculative_config"] == {
        "decoding_type": "PARD",
        "max_draft_len": 4,
        "speculative_model": str(Path(draft).resolve()),
        "mask_token_id": read_manifest(engine).mask_token_id,
    }
    assert made.command.startswith(f"trtllm-serve {Path(target).resolve()} ")


def test_vllm_config(engine_dir, tmp_path):
    engine, target, draft = engine_dir
    made = recipe(engine, "vllm", tp=2, out=tmp_path / "spec.json")
    config = json.loads(made.path.read_text())
    assert set(config) == VLLM_FIELDS
    assert config == {
        "model": str(Path(draft).resolve()),
        "num_speculative_tokens": 4,
        "method": "draft_model",
        "parallel_drafting": True,
    }
    assert "--tensor-parallel-size 2" in made.command and json.dumps(config) in made.command


def test_gguf_sources_are_refused(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(PardExportError, match="Hugging Face checkpoint"):
        _checkpoint(str(tmp_path / "model.gguf"), "target")


def test_cli_bad_server_is_one_line(capsys, engine_dir):
    capsys.readouterr()
    assert main(["recipe", "--engine", str(engine_dir[0]), "--for", "tgi"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "trtllm, vllm" in err[0]
