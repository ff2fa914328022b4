"""`pard.cpu::CachedAttention`: a decoder layer's attention over preallocated KV buffers, as one ONNX Runtime CPU op.

The inplace flavour's native kernel (build --attention-kernel native): the same IO as its ONNX-op block, in one node
per layer instead of about 20, which at one token per call is what ONNX Runtime spends most of its time on.

    qkv          [B, S, (Hq + 2 Hkv) * D]  the q, k and v heads of the S new tokens, as the fused q/k/v MatMul
                                           gives them (no norm, no rotary yet)
    cos, sin     [B, S, D / 2]             the rotary tables of the tokens' positions (RotaryEmbedding's, halves)
    k_cache      [B, Hkv, C, D]            rows past_len[b] .. past_len[b] + S - 1 get the new keys; v_cache likewise
    past_len     int32 [B]                 tokens already cached per row
    q_norm       optional [D]              Qwen3: RMSNorm weights of q and k, per head, before the rotary
    k_norm       optional [D]
    prefill      optional bool []          true: a prompt chunk, computed in blocks of tokens (faster for many)
    out          [B, S, Hq * D]            float32
    k_cache_out, v_cache_out               the caches, updated; the same memory as k_cache / v_cache when the caller
                                           binds one OrtValue to both (IO binding), else a copy
Attributes: num_q_heads, num_kv_heads, head_size, scale (softmax scale), epsilon (of the q/k norms).

Token i of row b attends to cache rows 0 .. past_len[b] + i. Outside prompt chunks each (row, token, head) is computed
by the same code whatever else the call holds, so decode, verify, draft and batched calls agree bit for bit (what
keeps greedy PARD equal to the target alone); prompt chunks sum in another order (the runtime sends a prompt's tokens
through prefill calls whatever the mode). float32 only, CPU execution provider only.

`build.compile_library` compiles the source (cached_attention.cc) into an engine directory; it needs a C++17
compiler and ONNX Runtime's C/C++ API headers (`find_headers`). The library asks ONNX Runtime for the API version of
the headers it was compiled with, which every later ONNX Runtime still serves.

Layering: this package knows nothing of pard_export (tests/test_import_graph.py).
"""

from pathlib import Path

DOMAIN = "pard.cpu"
OP_TYPE = "CachedAttention"
OPSET_VERSION = 1
INPUTS = ("qkv", "cos", "sin", "k_cache", "v_cache", "past_len", "q_norm", "k_norm", "prefill")
OUTPUTS = ("out", "k_cache_out", "v_cache_out")
SOURCE = Path(__file__).with_name("cached_attention.cc")
