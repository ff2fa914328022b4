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

`reference.pard_attention` is the numpy reference; `triton_kernel.pard_attention` the GPU kernel (import it
explicitly: it needs torch and triton).
"""

from .reference import pard_attention

DOMAIN = "pard"
OP_TYPE = "PardAttention"

__all__ = ["DOMAIN", "OP_TYPE", "pard_attention"]
