"""The IO contract of the exported graphs (design §4), defined once for the exporter and the runtime.

Shape legend: B batch, S new tokens in this call, P tokens already cached, T = P + S, K draft length
(the draft graph appends K-1 mask tokens), V vocabulary rows, L layers, Hkv key/value heads, D head size.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"  # int64 [B, S]
POSITION_IDS = "position_ids"  # int64 [B, S]
ATTENTION_MASK = "attention_mask"  # int64 [B, T]: 1 = a real token, 0 = padding
LOGITS = "logits"  # float32 [B, S, V]
DRAFT_IDS = "draft_ids"  # int64 [B, K]
DRAFT_LOGITS = "draft_logits"  # float32 [B, K, V]
KV_KINDS = ("key", "value")

BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"

# Graph roles; each is stored as "<role>.onnx" in an engine directory.
TARGET = "target"
DRAFT = "draft"
DRAFT_AR = "draft_ar"  # optional: the draft as a plain AR model (target IO), for the ar-draft baseline
ROLES = (TARGET, DRAFT, DRAFT_AR)

MAX_K = 32


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64", "float32", or "model" (the dtype the weights were exported in)
    dims: tuple[str | int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class GraphSpec:
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def past_names(self) -> list[str]:
        return [t.name for t in self.inputs if t.name.startswith("past_key_values.")]

    @property
    def present_names(self) -> list[str]:
        return [t.name for t in self.outputs if t.name.startswith("present.")]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def _kv(name_of, layers: int, kv_heads: int, head_dim: int, seq_dim: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name_of(i, kind), "model", (BATCH, kv_heads, seq_dim, head_dim))
        for i in range(layers)
        for kind in KV_KINDS
    )


def _common_inputs(layers: int, kv_heads: int, head_dim: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)),
        TensorSpec(POSITION_IDS, "int64", (BATCH, SEQUENCE)),
        TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),
    ) + _kv(past_name, layers, kv_heads, head_dim, PAST)


def target_spec(layers: int, kv_heads: int, head_dim: int, vocab_rows: int, role: str = TARGET) -> GraphSpec:
    """Prefill (S = prompt), decode (S = 1) and verify (S = K + 1) in one graph (also the AR draft's IO)."""
    outputs = (TensorSpec(LOGITS, "float32", (BATCH, SEQUENCE, vocab_rows)),) + _kv(
        present_name, layers, kv_heads, head_dim, TOTAL
    )
    return GraphSpec(role, _common_inputs(layers, kv_heads, head_dim), outputs)


def draft_spec(layers: int, kv_heads: int, head_dim: int, vocab: int, k: int) -> GraphSpec:
    """K drafts from one forward; the present KV holds the real tokens only (mask slots dropped)."""
    outputs = (
        TensorSpec(DRAFT_IDS, "int64", (BATCH, k)),
        TensorSpec(DRAFT_LOGITS, "float32", (BATCH, k, vocab)),
    ) + _kv(present_name, layers, kv_heads, head_dim, TOTAL)
    return GraphSpec(DRAFT, _common_inputs(layers, kv_heads, head_dim), outputs)


def graph_spec_from_dict(role: str, data: dict) -> GraphSpec:
    def tensors(items):
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    return GraphSpec(role, tensors(data["inputs"]), tensors(data["outputs"]))
