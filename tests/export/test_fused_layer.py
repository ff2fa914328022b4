"""The inplace flavour's hand-written layer blocks: the weights they take (transposed, q/k/v fused) hold the same
numbers, and a stitched graph spells no layer out op by op (what the per-node cost of ONNX Runtime punishes). Their
logits against the traced plain flavour: tests/runtime/test_inplace_kv.py."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch

from pard_export.export import fused_layer
from pard_export.manifest import read_manifest


def test_fused_weights_transpose_and_concatenate():
    g = torch.Generator().manual_seed(0)
    names = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"]
    shapes = {"q_proj.weight": (8, 6), "k_proj.weight": (4, 6), "v_proj.weight": (4, 6), "o_proj.weight": (6, 8)}
    weights = {f"model.layers.0.self_attn.{n}": torch.randn(*shapes[n], generator=g) for n in names}
    weights |= {
        f"model.layers.0.self_attn.{n.replace('weight', 'bias')}": torch.randn(shapes[n][0], generator=g)
        for n in names[:3]
    }
    weights |= {f"model.layers.0.mlp.{n}.weight": torch.randn(5, 6, generator=g) for n in ("gate_proj", "up_proj")}
    weights["model.layers.0.mlp.down_proj.weight"] = torch.randn(6, 5, generator=g)
    weights["model.embed_tokens.weight"] = torch.randn(3, 6, generator=g)

    fused = fused_layer.fused_weights(weights, layers=1, has_bias=True)

    prefix = "model.layers.0."
    qkv = fused[prefix + fused_layer.QKV]
    assert qkv.shape == (6, 16) and qkv.is_contiguous()
    x = torch.randn(2, 6, generator=g)
    separate = [x @ weights[f"{prefix}self_attn.{n}"].T for n in names[:3]]
    assert torch.allclose(x @ qkv, torch.cat(separate, -1), atol=1e-6)
    assert torch.equal(
        fused[prefix + fused_layer.QKV_BIAS],
        torch.cat([weights[f"{prefix}self_attn.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]),
    )
    assert torch.equal(fused[prefix + fused_layer.DOWN], weights[prefix + "mlp.down_proj.weight"].T)
    assert not [n for n in fused if n.startswith(prefix) and n.endswith("proj.weight")]  # the originals are gone
    assert torch.equal(fused["model.embed_tokens.weight"], weights["model.embed_tokens.weight"])


def _layer_ops(tiny_pair, engine, arch: str, kernel: str) -> tuple[Counter, int]:
    target, draft = tiny_pair(arch)
    root = engine(target, draft, 3, attention_kernel=kernel)
    model = onnx.load(str(root / read_manifest(root).models["target"].file), load_external_data=False)
    layers = Counter(n.op_type for n in model.graph.node if n.name.startswith("layers."))
    return layers, read_manifest(root).models["target"].layers


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_layers_are_fused(arch, tiny_pair, engine):
    layers, layer_count = _layer_ops(tiny_pair, engine, arch, "onnx")
    assert layers["MatMul"] == 5 * layer_count + 2 * layer_count  # qkv, o, gate, up, down; two for attention
    assert layers["SkipSimplifiedLayerNormalization"] == 2 * layer_count - 1  # the first layer's input norm is plain
    assert layers["RotaryEmbedding"] == 2 * layer_count
    assert not {"Gemm", "Pow", "ReduceMean", "Sqrt", "Neg", "Concat", "Slice"} & set(layers), layers
    per_layer = sum(layers.values()) / layer_count
    # the traced layers: ~70; two of the 30 are Unsqueezes that lay each KV head out for its query rows' products
    assert per_layer <= 30 + 4 * (arch == "qwen3") + (arch == "qwen2"), layers


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_the_native_kernel_leaves_one_attention_node_per_layer(arch, tiny_pair, engine):
    layers, layer_count = _layer_ops(tiny_pair, engine, arch, "native")
    assert layers["CachedAttention"] == layer_count
    assert layers["MatMul"] == 5 * layer_count  # qkv, o, gate, up, down
    assert not {"RotaryEmbedding", "Reshape", "Transpose", "Split", "TensorScatter", "Softmax"} & set(layers), layers
    # two SkipSimplifiedLayerNormalizations, 5 MatMuls, the node, SiLU as Sigmoid and Mul, one more Mul, the q/k/v
    # bias Add (qwen2); the first layer's RMSNormalization and Identity, the last layer's residual Add
    assert sum(layers.values()) == (11 + (arch == "qwen2")) * layer_count + 2, layers
