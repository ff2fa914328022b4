"""`pard-export recipe`: an engine's target/draft pair as a TensorRT-LLM or vLLM speculative-decoding config, for
serving beyond one device (tensor parallelism). Field names follow those projects' documentation:
TensorRT-LLM's `PARDDecodingConfig` (PyTorch backend, `trtllm-serve`) and vLLM's `speculative_config` for
parallel draft models. Both servers load Hugging Face checkpoints (a hub id or a local directory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .contract import DRAFT, TARGET
from .errors import PardExportError
from .manifest import read_manifest

SERVERS = ("trtllm", "vllm")
FILES = {"trtllm": "trtllm-serve.yaml", "vllm": "vllm-speculative-config.json"}


@dataclass(frozen=True)
class Recipe:
    path: Path  # the config file written
    command: str  # how to serve with it


def recipe(engine: str | Path, serve_with: str, *, tp: int = 1, out: str | Path | None = None) -> Recipe:
    """Write the config for `serve_with` (trtllm or vllm) and return it with the serving command."""
    if serve_with not in SERVERS:
        raise PardExportError(f"--for {serve_with!r} is not one of {', '.join(SERVERS)}")
    if tp < 1:
        raise PardExportError(f"--tp must be at least 1, got {tp}")
    manifest = read_manifest(Path(engine))
    target, draft = (_checkpoint(manifest.models[role].source, role) for role in (TARGET, DRAFT))
    path = Path(out) if out else Path(engine) / FILES[serve_with]
    if serve_with == "trtllm":
        path.write_text(_yaml(trtllm_config(draft, manifest.k, manifest.mask_token_id, tp)))
        command = f"trtllm-serve {target} --extra_llm_api_options {path}"
    else:
        config = vllm_speculative_config(draft, manifest.k)
        path.write_text(json.dumps(config, indent=2) + "\n")
        command = f"vllm serve {target} --tensor-parallel-size {tp} --speculative-config '{json.dumps(config)}'"
    return Recipe(path, command)


def trtllm_config(draft: str, k: int, mask_token_id: int, tp: int) -> dict:
    """TensorRT-LLM LLM API options: tensor parallelism and a PARDDecodingConfig."""
    return {
        "tensor_parallel_size": tp,
        "speculative_config": {
            "decoding_type": "PARD",
            "max_draft_len": k,
            "speculative_model": draft,
            "mask_token_id": mask_token_id,
        },
    }


def vllm_speculative_config(draft: str, k: int) -> dict:
    return {"model": draft, "num_speculative_tokens": k, "method": "draft_model", "parallel_drafting": True}


def _checkpoint(source: str, role: str) -> str:
    """The hub id or absolute directory a server loads; GGUF-only models and pinned revisions are refused."""
    from .export.sources import resolve

    resolved = resolve(source)
    if resolved.gguf_file:
        raise PardExportError(
            f"the {role} comes from a GGUF file ({source}); TensorRT-LLM and vLLM need a Hugging Face checkpoint: "
            "rebuild the engine from one"
        )
    if resolved.revision:
        raise PardExportError(
            f"the {role} pins revision {resolved.revision}; pass it to the server yourself "
            "(these configs name models by id only)"
        )
    location = Path(resolved.location)
    return str(location.resolve()) if location.is_dir() else resolved.location


def _yaml(data: dict, indent: int = 0) -> str:
    """A nested mapping of scalars as YAML; strings are written as JSON strings, which YAML reads unchanged."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:\n" + _yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(" " * indent + f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
