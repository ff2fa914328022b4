"""Weights read tensor by tensor from a checkpoint: a Hugging Face safetensors checkpoint (one model.safetensors, or
the shards that model.safetensors.index.json lists, as the 8B and 70B repositories ship them) or a GGUF file
(de-quantised one tensor at a time). Each tensor is read when it is written and converted straight to the engine's
dtype (bf16 -> fp16 without a float32 detour), so the build never holds more than one at a time. Names and shapes
are checked against the config's model from the files' headers before anything is exported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SourceError

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def has_safetensors(directory: Path) -> bool:
    return (directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file()


class _StreamedWeights(Mapping):
    """name -> tensor in `dtype`, read on every access (nothing is kept). The names and shapes are the model's
    parameters (`expected`: tied ones once, in the order they are written), which may live on the meta device."""

    def __init__(self, model, dtype: torch.dtype):
        self.dtype = dtype
        self.expected = {name: param.shape for name, param in model.named_parameters()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.expected)

    def __len__(self) -> int:
        return len(self.expected)


class CheckpointWeights(_StreamedWeights):
    """From a safetensors checkpoint: each tensor mapped for its read only."""

    def __init__(self, directory: Path, model, dtype: torch.dtype):
        super().__init__(model, dtype)
        self.directory = Path(directory)
        self.files = _tensor_files(self.directory)
        self._check()

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.expected:
            raise KeyError(name)
        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name).to(self.dtype)

    def _check(self) -> None:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in self.expected:
            if name not in self.files:
                raise SourceError(
                    f"{self.directory}: no tensor {name} in the checkpoint, which its config.json needs; "
                    "the checkpoint is incomplete or for another model"
                )
            by_file.setdefault(self.files[name], []).append(name)
        for file, names in by_file.items():
            if not file.is_file():
                raise SourceError(
                    f"{file} is missing: {INDEX_FILE} lists it for {names[0]}; download every shard of the checkpoint"
                )
            with safe_open(file, framework="pt") as f:
                for name in names:
                    shape = list(f.get_slice(name).get_shape())
                    if shape != list(self.expected[name]):
                        raise SourceError(
                            f"{file.name}: tensor {name} has shape {shape}, but config.json makes it "
                            f"{list(self.expected[name])}; the checkpoint does not match its config"
                        )


class GGUFWeights(_StreamedWeights):
    """From a GGUF file: each tensor de-quantised when read, with transformers' own name map and tensor processing
    (Llama's q/k permutation undone), as its whole-file loader does."""

    def __init__(self, path: Path, model, dtype: torch.dtype):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        super().__init__(model, dtype)
        self.path = Path(path)
        self.reader = GGUFReader(str(path))
        architecture = bytes(self.reader.fields["general.architecture"].parts[-1]).decode()
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=model.config.to_dict())
        self.key_map = get_gguf_hf_weights_map(model, self.processor)
        stored = {self.key_map[t.name]: t for t in self.reader.tensors if t.name in self.key_map}
        for name, shape in self.expected.items():
            if name not in stored:
                raise SourceError(f"{self.path.name}: no tensor for {name}, which its metadata's model needs")
            found = [int(d) for d in reversed(stored[name].shape)]  # GGUF lists dimensions innermost first
            if found != list(shape):
                raise SourceError(
                    f"{self.path.name}: tensor {stored[name].name} ({name}) has shape {found}, but its metadata makes "
                    f"it {list(shape)}; the file is damaged or for another model"
                )
        self.tensors = {name: stored[name] for name in self.expected}

    def __getitem__(self, name: str) -> torch.Tensor:
        import mmap

        import numpy as np
        import torch
        from gguf import dequantize

        stored = self.tensors[name]
        weights = dequantize(stored.data, stored.tensor_type)
        processed = self.processor.process(
            weights=weights, name=stored.name, tensor_key_mapping=self.key_map, parsed_parameters={"tensors": {}}
        )
        tensor = torch.from_numpy(np.copy(processed.weights)).to(self.dtype)
        self.reader.data._mmap.madvise(mmap.MADV_DONTNEED)  # the file's pages read so far leave this process's RSS
        return tensor


def _tensor_files(directory: Path) -> dict[str, Path]:
    """tensor name -> the file that holds it."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{index} is not a safetensors index (no weight_map): {e}") from e
        return {name: directory / file for name, file in weight_map.items()}
    from safetensors import safe_open

    with safe_open(directory / SINGLE_FILE, framework="pt") as f:
        return dict.fromkeys(f.keys(), directory / SINGLE_FILE)
