"""The numpy reference of PardAttention: plain float32 math, one batch row at a time."""

from __future__ import annotations

import numpy as np


def pard_attention(q, k_new, v_new, k_cache, v_cache, past_len) -> np.ndarray:
    """Write k_new/v_new into the caches IN PLACE and return the attention output [B, S, Hq, D] in q's dtype.

    The new keys/values land at cache rows past_len[b] .. past_len[b]+S-1 of each batch row b; nothing else in
    the caches changes. Query i of row b attends to cache positions 0 .. past_len[b]+i. Everything is computed
    in float32 (see the package docstring for shapes).
    """
    batch, seq, q_heads, head_dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    check_shapes(q, k_new, v_new, k_cache, v_cache, past_len)
    group = q_heads // kv_heads
    out = np.empty((batch, seq, q_heads, head_dim), dtype=np.float32)
    for b in range(batch):
        past = int(past_len[b])
        if not 0 <= past <= capacity - seq:
            raise ValueError(f"row {b}: past_len {past} + S {seq} does not fit the cache capacity {capacity}")
        k_cache[b, :, past : past + seq] = k_new[b].transpose(1, 0, 2)  # [Hkv, S, D]
        v_cache[b, :, past : past + seq] = v_new[b].transpose(1, 0, 2)
        out[b] = _attend_row(q[b], k_cache[b, :, : past + seq], v_cache[b, :, : past + seq], past, group)
    return out.astype(q.dtype)


def _attend_row(q, keys, values, past: int, group: int) -> np.ndarray:
    seq, head_dim = q.shape[0], q.shape[2]
    q = q.astype(np.float32).transpose(1, 0, 2)  # [Hq, S, D]
    keys = np.repeat(keys.astype(np.float32), group, axis=0)  # [Hq, P+S, D]
    values = np.repeat(values.astype(np.float32), group, axis=0)  # [Hq, P+S, D]
    scores = q @ keys.transpose(0, 2, 1) / np.sqrt(np.float32(head_dim))  # [Hq, S, P+S]
    visible = np.arange(past + seq)[None, :] <= past + np.arange(seq)[:, None]  # [S, P+S]
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return (weights @ values).transpose(1, 0, 2)  # [S, Hq, D]


def check_shapes(q, k_new, v_new, k_cache, v_cache, past_len) -> None:
    """Raise ValueError unless the shapes fit together (numpy arrays or torch tensors)."""
    batch, seq, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    expected = {
        "k_new": (k_new.shape, (batch, seq, kv_heads, head_dim)),
        "v_new": (v_new.shape, (batch, seq, kv_heads, head_dim)),
        "v_cache": (v_cache.shape, tuple(k_cache.shape)),
        "past_len": (past_len.shape, (batch,)),
    }
    for name, (found, wanted) in expected.items():
        if tuple(found) != tuple(wanted):
            raise ValueError(f"{name}: expected shape {tuple(wanted)}, found {tuple(found)}")
    if k_cache.shape[0] != batch or k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache: expected [{batch}, Hkv, Smax, {head_dim}], found {tuple(k_cache.shape)}")
    if q_heads % kv_heads:
        raise ValueError(f"Hq={q_heads} is not a multiple of Hkv={kv_heads}")
