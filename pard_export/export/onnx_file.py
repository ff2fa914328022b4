"""Write a stitched model with its weights streamed into one external data file (no 2 GB protobuf limit,
no second copy of the weights in memory)."""

from __future__ import annotations

from collections.abc import Mapping
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


def save_with_weights(model: onnx.ModelProto, path: Path, weights: Mapping[str, torch.Tensor]) -> None:
    data_name = f"{path.name}.data"
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        for name, tensor in weights.items():
            offset += data.write(b"\0" * (-offset % _ALIGN))
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            model.graph.initializer.append(_external_tensor(name, tensor, data_name, offset, raw.nbytes))
            offset += data.write(memoryview(raw))
    onnx.save_model(model, path)


def _external_tensor(name: str, tensor: torch.Tensor, location: str, offset: int, length: int) -> onnx.TensorProto:
    proto = onnx.TensorProto(name=name, data_type=ONNX_DTYPES[tensor.dtype], dims=list(tensor.shape))
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value
    return proto
