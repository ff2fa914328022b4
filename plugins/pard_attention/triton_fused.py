"""PardAttention as ONE Triton kernel launch: the form TensorRT's AOT Python plugin embeds in a plan.

`tensorrt.plugin.aot_impl` hands TensorRT one compiled kernel with one launch configuration, whose arguments are
the input pointers, then int32 scalars, then the output pointers. `triton_kernel.py` uses up to three launches
(write the new K/V, attend, combine split-K partials), so this kernel fuses them without split-K:

- one program per (batch row, kv head, query block), all GROUP query heads of the kv head together;
- query block 0 also copies the S new keys/values into the caches at rows past_len[b]..;
- attention reads cached keys 0..past_len[b]-1 from the cache and the new keys straight from k_new/v_new, so no
  program reads a cache row that another program of the same launch writes (no race, no grid-wide barrier).

Tensors are contiguous (TensorRT's LINEAR format), so strides follow from the shapes: S and Smax are runtime
scalars, the head counts and head size are compile-time constants (the node's attributes).
`pard_attention_fused` launches it from torch (tests run it under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .reference import check_shapes
from .triton_kernel import _add, _dot, _larger

BLOCK_M = 64  # query rows (tokens x group heads) per program: fixed, since S is only known at run time
BLOCK_N = 64  # keys per tile
NUM_WARPS = 4
NUM_STAGES = 2  # software pipelining depth: fp16/bf16 tiles then take 16 KiB of shared memory at D = 64


RUNTIME_ARGS = ("Q", "KNew", "VNew", "KCache", "VCache", "PastLen", "seq", "capacity", "Out", "KCacheOut", "VCacheOut")


def launch_grid(batch, seq, kv_heads: int, group: int, *, cdiv=triton.cdiv):
    """(programs along x, along y): B * Hkv (row, kv head) pairs by query blocks of BLOCK_M rows. With
    cdiv=tensorrt.plugin.cdiv it takes TensorRT's symbolic shape expressions instead of ints."""
    return batch * kv_heads, cdiv(seq * group, BLOCK_M)


def constexprs(q_heads: int, kv_heads: int, head_size: int, dtype_name: str, interpreted: bool = False) -> dict:
    """The kernel's compile-time constants for one node (its attributes) and dtype ("fp16", "bf16", "fp32")."""
    if q_heads % kv_heads:
        raise ValueError(f"num_q_heads {q_heads} is not a multiple of num_kv_heads {kv_heads}")
    if head_size < 16:
        raise ValueError(f"head size: expected at least 16 (tl.dot), found {head_size}")
    return {
        "GROUP": q_heads // kv_heads, "KV_HEADS": kv_heads, "HEAD_D": head_size,
        "BLOCK_D": triton.next_power_of_2(head_size), "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N,
        "SCALE_LOG2": math.log2(math.e) / math.sqrt(head_size),
        "DOT_PRECISION": "ieee" if dtype_name == "fp32" else "tf32",
        "DOT_IN_FP32": dtype_name == "bf16" and interpreted,
    }


def signature(dtype_name: str) -> dict[str, str]:
    """Triton's signature of `pard_attention_fused_kernel`, in TensorRT's AOT order: inputs, int32 scalars,
    outputs (the two cache outputs alias the cache inputs), then the compile-time constants."""
    types = {"PastLen": "*i32", "seq": "i32", "capacity": "i32"}
    runtime = {name: types.get(name, f"*{dtype_name}") for name in RUNTIME_ARGS}
    return {**runtime, **{name: "constexpr" for name in constexprs(1, 1, 16, dtype_name)}}


def pard_attention_fused(q, k_new, v_new, k_cache, v_cache, past_len):
    """Same contract as `triton_kernel.pard_attention` (caches updated in place; returns out), in one launch."""
    check_shapes(q, k_new, v_new, k_cache, v_cache, past_len)
    batch, seq, q_heads, head_size = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    tensors = (q, k_new, v_new, k_cache, v_cache)
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError("the fused kernel needs contiguous tensors (TensorRT's LINEAR format)")
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[q.dtype]
    consts = constexprs(q_heads, kv_heads, head_size, name, isinstance(pard_attention_fused_kernel, InterpretedFunction))
    out = torch.empty_like(q)
    grid = launch_grid(batch, seq, kv_heads, q_heads // kv_heads)
    pard_attention_fused_kernel[grid](q, k_new, v_new, k_cache, v_cache, past_len, seq, capacity, out, k_cache, v_cache,
                                      **consts, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out


@triton.jit
def _online_step(q, k, v, visible, m_i, l_i, acc, SCALE_LOG2: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 DOT_IN_FP32: tl.constexpr):
    """One key tile of the online softmax: visible [BLOCK_M, BLOCK_N] masks keys a query row may not see."""
    scores = _dot(q, tl.trans(k), DOT_PRECISION, DOT_IN_FP32) * SCALE_LOG2  # [BLOCK_M, BLOCK_N]
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(scores, 1, _larger))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no visible key yet: exp2 gives 0, not NaN
    p = tl.exp2(scores - shift[:, None])
    alpha = tl.exp2(m_i - shift)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, DOT_IN_FP32)
    l_i = l_i * alpha + tl.reduce(p, 1, _add)
    return m_new, l_i, acc


@triton.jit
def pard_attention_fused_kernel(
    Q, KNew, VNew, KCache, VCache, PastLen,
    seq, capacity,
    Out, KCacheOut, VCacheOut,
    GROUP: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALE_LOG2: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    b = (tl.program_id(0) // KV_HEADS).to(tl.int64)
    kv_head = tl.program_id(0) % KV_HEADS
    q_block = tl.program_id(1)
    past = tl.load(PastLen + b)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    new_row = KV_HEADS * HEAD_D  # elements between consecutive tokens of k_new/v_new [B, S, Hkv, D]
    new_base = b * seq * new_row + kv_head * HEAD_D
    cache_base = (b * KV_HEADS + kv_head) * capacity * HEAD_D  # caches [B, Hkv, Smax, D]

    if q_block == 0:  # write the S new rows of this (row, kv head) into the caches
        for start in range(0, seq, BLOCK_N):
            tokens = start + tl.arange(0, BLOCK_N)
            ok = (tokens < seq)[:, None] & dim_ok[None, :]
            src = new_base + tokens[:, None] * new_row + dims[None, :]
            dst = cache_base + (past + tokens).to(tl.int64)[:, None] * HEAD_D + dims[None, :]
            tl.store(KCacheOut + dst, tl.load(KNew + src, mask=ok), mask=ok)
            tl.store(VCacheOut + dst, tl.load(VNew + src, mask=ok), mask=ok)

    rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    token = rows // GROUP  # [BLOCK_M] index among the S new tokens
    head = kv_head * GROUP + rows % GROUP  # [BLOCK_M] query head
    row_ok = token < seq
    q_offsets = (b * seq + token)[:, None] * (KV_HEADS * GROUP * HEAD_D) + head[:, None] * HEAD_D + dims[None, :]
    q = tl.load(Q + q_offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for tile in range(0, past, BLOCK_N):  # cached keys: every query row sees all of them
        keys = tile + tl.arange(0, BLOCK_N)
        key_ok = keys < past
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        offsets = cache_base + keys.to(tl.int64)[:, None] * HEAD_D + dims[None, :]
        k = tl.load(KCache + offsets, mask=kv_mask, other=0.0)
        v = tl.load(VCache + offsets, mask=kv_mask, other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, key_ok[None, :] & row_ok[:, None], m_i, l_i, acc,
                                     SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32)
    last_token = tl.minimum(seq - 1, ((q_block + 1) * BLOCK_M - 1) // GROUP)  # this block's last query token
    for tile in range(0, last_token + 1, BLOCK_N):  # new keys, causal: token t sees new keys 0..t
        keys = tile + tl.arange(0, BLOCK_N)
        kv_mask = (keys < seq)[:, None] & dim_ok[None, :]
        offsets = new_base + keys[:, None] * new_row + dims[None, :]
        k = tl.load(KNew + offsets, mask=kv_mask, other=0.0)
        v = tl.load(VNew + offsets, mask=kv_mask, other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, keys[None, :] <= token[:, None], m_i, l_i, acc,
                                     SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32)

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # l_i > 0 for every real row: new key 0 is always visible
    tl.store(Out + q_offsets, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
