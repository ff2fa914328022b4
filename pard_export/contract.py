"""The IO contract of the exported graphs (design §4), defined once for the exporter and the runtime.

Shape legend: B batch, S new tokens in this call, P tokens already cached, T = P + S, K draft length
(the draft graph appends K-1 mask tokens), V vocabulary rows, L layers, Hkv key/value heads, D head size,
C the capacity of a preallocated KV cache (plugin flavour).

Three attention flavours share every other tensor:
- plain  : the cache goes in as past_key_values.{i}.* [B,Hkv,P,D] and comes out concatenated as present.{i}.*
           [B,Hkv,T,D]; attention_mask [B,T] marks the real columns (what ONNX Runtime runs by default).
- plugin : one pard::PardAttention node per layer (plugins/pard_attention) over preallocated buffers
           kv_cache.{i}.* [B,Hkv,C,D]; past_len int32 [B] says how many rows of each are real. The node writes
           the S new rows at past_len[b].. and the graph returns the buffers as kv_cache_out.{i}.* (TensorRT: the
           same memory, updated in place). The draft's K-1 mask slots are written too, past the real rows, where
           the next call overwrites them. No attention_mask: every input token is causal over rows 0..past_len+i,
           so the caller keeps each row's real tokens contiguous (runtime/plugin_cache.py says how).
           A TensorRT plan built from a plugin graph takes one more input, attention_sync int32 [N], and gives it
           back as attention_sync_out (same memory): the split-K counters of its PardAttention kernels, which the
           runtime allocates zero-filled once and the kernels leave at zero (export/tensorrt_lowering.py).
- inplace: the plugin flavour's IO in ONNX ops (opset 24, and ONNX Runtime's SkipSimplifiedLayerNormalization), for
           ONNX Runtime: each layer writes its S new rows at past_len[b] with TensorScatter and attends over the whole
           buffer, rows past past_len[b]+i masked.
           The runtime binds each kv_cache.{i}.* and kv_cache_out.{i}.* to one OrtValue (IO binding), so the new
           rows land in the buffer that is read and no step copies the cache. C is the runtime's choice per
           generation (attention costs grow with C, not with max_seq_len): it grows the buffers as rows need it.
           One more input, prefill bool []: how attention multiplies. True (prompt chunks): the query rows of a KV
           head go through one matrix product, which is fast for many rows. False (every other call): each query
           row is its own product, which reads the cache without copying it (faster for the few rows of a step) and
           makes a token's logits independent of the other tokens in the call: decode, verify and batches agree
           bit for bit. The runtime keeps a row's computation the same whatever the call (decoding.prefill_plan).

The inplace flavour's attention kernel (the manifest's attention_kernel), the same IO either way:
- onnx  : the block of standard ops above (export/inplace_attention.py), about 20 nodes per layer.
- native: one pard.cpu::CachedAttention node per layer (plugins/cached_attention), compiled at build time into the
          engine directory as NATIVE_KERNEL_LIBRARY, which the runtime registers with ONNX Runtime. Like the block,
          it computes prompt chunks (prefill) in blocks and every other call row by row, a token's numbers then
          independent of the rest of the call. float32, CPU execution provider.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_IDS = "input_ids"  # int64 [B, S]
POSITION_IDS = "position_ids"  # int64 [B, S]
ATTENTION_MASK = "attention_mask"  # int64 [B, T]: 1 = a real token, 0 = padding
PAD_ID = 0  # the input id of padding: any id will do, as padding is masked out (plain) or lies past a row's length
LOGITS = "logits"  # float32 [B, S, V]
DRAFT_IDS = "draft_ids"  # int64 [B, K]
DRAFT_LOGITS = "draft_logits"  # float32 [B, K, V]
PAST_LEN = "past_len"  # int32 [B]: tokens already in each row's KV cache (plugin flavour)
PREFILL = "prefill"  # bool []: the call is a prompt chunk (inplace flavour, see above)
ATTENTION_SYNC = "attention_sync"  # int32 [N]: TensorRT plans of the plugin flavour only (see above)
ATTENTION_SYNC_OUT = "attention_sync_out"  # the same buffer, as the plan's output
KV_KINDS = ("key", "value")

BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"
CAPACITY = "cache_capacity"  # C (plugin flavour)

PLAIN, PLUGIN, INPLACE = "plain", "plugin", "inplace"
ONNX_KERNEL, NATIVE_KERNEL = "onnx", "native"
ATTENTION_KERNELS = (ONNX_KERNEL, NATIVE_KERNEL)
NATIVE_KERNEL_LIBRARY = "cached_attention.so"  # in the engine directory of a native-kernel engine
ATTENTIONS = (PLAIN, PLUGIN, INPLACE)
BUFFERED = (PLUGIN, INPLACE)  # the flavours whose caches are preallocated buffers (past_len, kv_cache.*)

# Graph roles; each is stored as "<role>.onnx" in an engine directory.
TARGET = "target"
DRAFT = "draft"
DRAFT_AR = "draft_ar"  # optional: the draft as a plain AR model (target IO), for the ar-draft baseline
ROLES = (TARGET, DRAFT, DRAFT_AR)
# Session modes: pard chooses n <= K drafts per step from measurements (runtime/drafting.py), pard-fixed verifies K
# every step, ar runs the target alone, ar-draft the draft autoregressively (ordinary speculative decoding).
MODES = ("ar", "pard", "pard-fixed", "ar-draft")

# What an engine is built for (build's choices, and the manifest's backend, dtype and quantization fields)
BACKENDS = ("onnxruntime", "tensorrt")
DTYPES = ("float32", "float16", "bfloat16")
QUANTIZE_SCHEMES = ("int4", "int8")  # weight-only, onnxruntime backend
NO_QUANTIZATION = "none"  # --draft-quantize none: keep the draft float while the target is quantized

MAX_K = 32


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def cache_capacity(max_seq_len: int, k: int) -> int:
    """C: cache rows per sequence, the real tokens plus what one call writes above them (pads, mask slots, drafts);
    the runtime allocates exactly this and TensorRT profiles are built for it."""
    return max_seq_len + 2 * k + 2


def kv_cache_name(layer: int, kind: str) -> str:
    return f"kv_cache.{layer}.{kind}"


def kv_cache_out_name(layer: int, kind: str) -> str:
    return f"kv_cache_out.{layer}.{kind}"


_CACHE_IN_PREFIXES = ("past_key_values.", "kv_cache.")
_CACHE_OUT_PREFIXES = ("present.", "kv_cache_out.")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64", "int32", "bool", "float32", or "model" (the dtype the weights were exported in)
    dims: tuple[str | int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class GraphSpec:
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attention: str = ""  # "" = read off the inputs (plain or plugin; manifests from before the inplace flavour)

    def __post_init__(self):
        if not self.attention:
            object.__setattr__(self, "attention", PLUGIN if any(t.name == PAST_LEN for t in self.inputs) else PLAIN)

    @property
    def buffered(self) -> bool:
        """The caches are preallocated buffers [B,Hkv,C,D] indexed by past_len (plugin and inplace flavours)."""
        return self.attention in BUFFERED

    @property
    def mask_slots(self) -> int:
        """Tokens the graph appends to each call's input: K-1 for the draft graph, 0 for the others."""
        drafts = [t.dims[1] for t in self.outputs if t.name == DRAFT_IDS]
        return int(drafts[0]) - 1 if drafts else 0

    @property
    def past_names(self) -> list[str]:
        """The KV cache inputs, layer by layer, key before value (either flavour)."""
        return [t.name for t in self.inputs if t.name.startswith(_CACHE_IN_PREFIXES)]

    @property
    def present_names(self) -> list[str]:
        """The KV cache outputs, in the order of past_names."""
        return [t.name for t in self.outputs if t.name.startswith(_CACHE_OUT_PREFIXES)]

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "attention": self.attention,
        }


def _kv(name_of, layers: int, kv_heads: int, head_dim: int, seq_dim: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name_of(i, kind), "model", (BATCH, kv_heads, seq_dim, head_dim))
        for i in range(layers)
        for kind in KV_KINDS
    )


def _common_inputs(layers: int, kv_heads: int, head_dim: int, attention: str) -> tuple[TensorSpec, ...]:
    tokens = (TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)), TensorSpec(POSITION_IDS, "int64", (BATCH, SEQUENCE)))
    if attention in BUFFERED:
        lengths = (TensorSpec(PAST_LEN, "int32", (BATCH,)),)
        prefill = (TensorSpec(PREFILL, "bool", ()),) if attention == INPLACE else ()
        return tokens + lengths + prefill + _kv(kv_cache_name, layers, kv_heads, head_dim, CAPACITY)
    mask = (TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),)
    return tokens + mask + _kv(past_name, layers, kv_heads, head_dim, PAST)


def _cache_outputs(layers: int, kv_heads: int, head_dim: int, attention: str) -> tuple[TensorSpec, ...]:
    if attention in BUFFERED:
        return _kv(kv_cache_out_name, layers, kv_heads, head_dim, CAPACITY)
    return _kv(present_name, layers, kv_heads, head_dim, TOTAL)


def target_spec(
    layers: int, kv_heads: int, head_dim: int, vocab_rows: int, role: str = TARGET, attention: str = PLAIN
) -> GraphSpec:
    """Prefill (S = prompt), decode (S = 1) and verify (S = K + 1) in one graph (also the AR draft's IO)."""
    outputs = (TensorSpec(LOGITS, "float32", (BATCH, SEQUENCE, vocab_rows)),)
    outputs += _cache_outputs(layers, kv_heads, head_dim, attention)
    return GraphSpec(role, _common_inputs(layers, kv_heads, head_dim, attention), outputs, attention)


def draft_spec(layers: int, kv_heads: int, head_dim: int, vocab: int, k: int, attention: str = PLAIN) -> GraphSpec:
    """K drafts from one forward; the cache keeps the real tokens only (plain: mask slots dropped from present;
    plugin: written past the real rows, so past_len advances by the real tokens alone)."""
    outputs = (
        TensorSpec(DRAFT_IDS, "int64", (BATCH, k)),
        TensorSpec(DRAFT_LOGITS, "float32", (BATCH, k, vocab)),
    ) + _cache_outputs(layers, kv_heads, head_dim, attention)
    return GraphSpec(DRAFT, _common_inputs(layers, kv_heads, head_dim, attention), outputs, attention)


def graph_spec_from_dict(role: str, data: dict) -> GraphSpec:
    def tensors(items):
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    attention = data.get("attention", "")
    if attention and attention not in ATTENTIONS:
        raise ValueError(f"io.attention {attention!r} (expected {', '.join(ATTENTIONS)})")
    return GraphSpec(role, tensors(data["inputs"]), tensors(data["outputs"]), attention)
