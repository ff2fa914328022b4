"""Write a stitched model with its weights streamed into one external data file (no 2 GB protobuf limit,
no second copy of the weights in memory)."""

from __future__ import annotations

import filecmp
from collections.abc import Callable, Mapping
from pathlib import Path

import onnx
import torch

ONNX_DTYPES = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.bfloat16: onnx.TensorProto.BFLOAT16,
    torch.int64: onnx.TensorProto.INT64,
}
_ALIGN = 4096  # page-aligned tensors let onnxruntime map them without copying


def save_with_weights(
    model: onnx.ModelProto,
    path: Path,
    weights: Mapping[str, torch.Tensor],
    progress: Callable[[str], None] | None = None,
) -> None:
    """`model` as `path`, each of `weights` appended to <path>.data as it is read (a lazy mapping makes or loads them
    one at a time); progress(name) before each."""
    data_name = f"{path.name}.data"
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        for name in weights:
            if progress is not None:
                progress(name)
            tensor = weights[name]
            offset += data.write(b"\0" * (-offset % _ALIGN))
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            model.graph.initializer.append(_external_tensor(name, tensor, data_name, offset, raw.nbytes))
            offset += data.write(memoryview(raw))
    onnx.save_model(model, path)


def _external_tensor(name: str, tensor: torch.Tensor, location: str, offset: int, length: int) -> onnx.TensorProto:
    proto = onnx.TensorProto(name=name, data_type=ONNX_DTYPES[tensor.dtype], dims=list(tensor.shape))
    _point_at(proto, location, offset, length)
    return proto


def _point_at(proto: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `proto` external data: `length` bytes at `offset` of the file `location`."""
    del proto.external_data[:]
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Save `model` as `path` with the bytes of every initializer of at least 1 KiB moved, page-aligned, into
    `<path>.data` (replacing that file, which the model may still point into), emptying each one's inline data as it
    is written. Smaller ones stay inline: shape constants must, for ONNX Runtime's shape inference."""
    data_name = f"{path.name}.data"
    staged = path.parent / f"{data_name}.tmp"
    offset = 0
    with open(staged, "wb") as data:
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.STRING:
                continue  # strings cannot be external
            raw = _tensor_bytes(path.parent, tensor)
            if len(raw) < _INLINE_BELOW:
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    del tensor.external_data[:]
                    tensor.raw_data = raw
                continue
            for field in _INLINE_FIELDS:
                tensor.ClearField(field)
            offset += data.write(b"\0" * (-offset % _ALIGN))
            _point_at(tensor, data_name, offset, len(raw))
            offset += data.write(raw)
    staged.replace(path.parent / data_name)
    onnx.save_model(model, path)


def share_weight_file(path: Path, owner: Path) -> bool:
    """If the graph at `path` keeps its weights in a file byte-identical to the graph `owner`'s, point it into the
    owner's file and delete its own (the draft and its AR graph hold the same weights); True if it did."""
    own, shared = data_file(path), data_file(owner)
    if not (own.is_file() and shared.is_file()) or not filecmp.cmp(own, shared, shallow=False):
        return False
    point_weights(path, shared.name)
    own.unlink()
    return True


def own_weight_file(path: Path, owner: Path) -> None:
    """Undo share_weight_file before the owner's graph is rewritten: the owner's file becomes this graph's own."""
    if _weight_locations(path) == {data_file(owner).name}:
        data_file(owner).rename(data_file(path))
        point_weights(path, data_file(path).name)


def point_weights(path: Path, location: str) -> None:
    """Rewrite the graph at `path` so that every external initializer lies in `location` (same offsets)."""
    model = onnx.load(str(path), load_external_data=False)
    for entry in _location_entries(model):
        entry.value = location
    onnx.save_model(model, str(path))


def data_file(path: Path) -> Path:
    """Where save_with_weights puts a graph's weights: <graph>.onnx.data beside it."""
    return path.parent / f"{path.name}.data"


def _weight_locations(path: Path) -> set[str]:
    return {entry.value for entry in _location_entries(onnx.load(str(path), load_external_data=False))}


def _location_entries(model: onnx.ModelProto):
    """The `location` entry of every external initializer."""
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield from (entry for entry in tensor.external_data if entry.key == "location")


_INLINE_BELOW = 1024  # bytes
_INLINE_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _tensor_bytes(folder: Path, tensor: onnx.TensorProto) -> bytes:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        where = {entry.key: entry.value for entry in tensor.external_data}
        with open(folder / where["location"], "rb") as f:
            f.seek(int(where.get("offset", 0)))
            return f.read(int(where["length"])) if "length" in where else f.read()
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data  # typed fields -> raw bytes
