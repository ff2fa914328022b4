"""`pard::PardAttention`: multi-token causal attention over a preallocated KV cache, updated in place.

Shapes: B batch rows, S new tokens per row (decode 1, verify k+1, draft new+k-1, prefill), Smax cache
capacity, Hq query heads, Hkv key/value heads (Hq a multiple of Hkv: GQA), D head size.

    q        [B, S, Hq, D]      RoPE already applied
    k_new    [B, S, Hkv, D]     keys of the S new tokens (RoPE applied); v_new likewise
    k_cache  [B, Hkv, Smax, D]  written in place at rows past_len[b] .. past_len[b]+S-1; v_cache likewise
    past_len int32 [B]          tokens already in the cache, per row
    out      [B, S, Hq, D]      q's dtype

Query i of row b attends to cache positions 0 .. past_len[b]+i (causal, aligned bottom-right), with
scale 1/sqrt(D) and the softmax in float32. Rows past past_len[b]+S-1 are neither read nor written.
past_len[b] must lie in [0, Smax - S]: the reference raises otherwise; the one-launch kernel a TensorRT plan embeds
(`triton_fused.py`) clamps it into that range, so it never touches memory outside the caches.

`reference.pard_attention` is the numpy reference; `triton_kernel.pard_attention` the GPU kernel (import it
explicitly: it needs torch and triton). As an ONNX node (one per decoder layer): `schema.py` registers its OpSchema
and builds the node (needs onnx); `onnxruntime_op.py` runs it on ONNX Runtime through onnxruntime-extensions. ONNX
has no in-place update, so the node also outputs the updated caches [B, Hkv, Smax, D]; TensorRT aliases them to the
cache inputs.

Layering: this package knows nothing of pard_export (the exporter and runtime import it, never the reverse), so
the op can ship and be tested on its own; tests/test_import_graph.py enforces that.
"""

from .reference import pard_attention

DOMAIN = "pard"
OP_TYPE = "PardAttention"
OPSET_VERSION = 1  # of the `pard` opset
# TensorRT's ONNX parser finds the plugin by op type, these two node attributes, and the plugin's fields.
PLUGIN_NAMESPACE = "pard"
PLUGIN_VERSION = "1"
INPUTS = ("q", "k_new", "v_new", "k_cache", "v_cache", "past_len")
OUTPUTS = ("out", "k_cache_out", "v_cache_out")
INT_ATTRIBUTES = ("num_q_heads", "num_kv_heads", "head_size")
STRING_ATTRIBUTES = ("plugin_namespace", "plugin_version")
# The node as TensorRT runs it (tensorrt_plugin.py, one launch of triton_fused.py) has one more input and three
# more outputs, all optional in the OpSchema: split-K counters (int32, zeros before and after every launch; the
# output aliases the input) and the float32 partial results the splits leave for the one that merges them.
TRT_INPUTS = ("sync",)
TRT_OUTPUTS = ("sync_out", "partial", "partial_lse")
QUERY_BLOCK = 64  # query rows (tokens x group heads) per program of the one-launch kernel
MERGE_GROUPS = 8  # split groups a query block's two-level merge may use: one counter each, plus one for the block
COUNTERS_PER_BLOCK = 1 + MERGE_GROUPS


def sync_size(batch: int, seq: int, kv_heads: int, group: int) -> int:
    """int32 counters one launch uses in `sync`: COUNTERS_PER_BLOCK per (batch row, kv head, block of QUERY_BLOCK
    query rows)."""
    return batch * kv_heads * -(-seq * group // QUERY_BLOCK) * COUNTERS_PER_BLOCK


__all__ = [
    "COUNTERS_PER_BLOCK",
    "DOMAIN",
    "MERGE_GROUPS",
    "OP_TYPE",
    "OPSET_VERSION",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "QUERY_BLOCK",
    "pard_attention",
    "sync_size",
]
