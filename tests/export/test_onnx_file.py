"""onnx_file: weights in one external file per graph, and two graphs with the same weights sharing one file."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pard_export.export.onnx_file import data_file, own_weight_file, save_with_weights, share_weight_file


def _graph(path, weight: torch.Tensor, name: str = "g"):
    """y = x @ w, with w in <path>.data."""
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, weight.shape[0]])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, weight.shape[1]])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], name, [x], [y]))
    save_with_weights(model, path, {"w": weight})


def _run(path, x):
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


def test_identical_weights_share_one_file_and_unshare_before_a_rewrite(tmp_path):
    weight = torch.arange(2048, dtype=torch.float32).reshape(32, 64) / 100
    owner, other = tmp_path / "draft.onnx", tmp_path / "draft_ar.onnx"
    _graph(owner, weight)
    _graph(other, weight, "other")
    x = np.ones((1, 32), dtype=np.float32)
    expected = _run(other, x)
    assert share_weight_file(other, owner)
    assert not data_file(other).exists() and np.array_equal(_run(other, x), expected)
    own_weight_file(other, owner)  # the owner is about to be rewritten: its file becomes the other's
    assert data_file(other).is_file() and not data_file(owner).exists()
    owner.unlink()
    _graph(owner, weight)  # written again, the same bytes
    assert share_weight_file(other, owner) and np.array_equal(_run(other, x), expected)


def test_different_weights_stay_apart(tmp_path):
    owner, other = tmp_path / "draft.onnx", tmp_path / "draft_ar.onnx"
    _graph(owner, torch.ones(32, 64))
    _graph(other, torch.zeros(32, 64), "other")
    assert not share_weight_file(other, owner)
    assert data_file(other).is_file()
    own_weight_file(other, owner)  # not shared: nothing moves
    assert data_file(owner).is_file() and data_file(other).is_file()
