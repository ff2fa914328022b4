"""PardAttention as ONE Triton kernel launch: the form TensorRT's AOT Python plugin embeds in a plan.

`tensorrt.plugin.aot_impl` hands TensorRT one compiled kernel with one launch configuration, whose arguments are
the input pointers, then int32 scalars, then the output pointers. So this kernel does everything
`triton_kernel.py` does in three launches (write the new K/V, attend with split-K, combine the splits):

- one program per (batch row, kv head, query block, key split); a query block holds all GROUP query heads of
  the kv head for up to BLOCK_M // GROUP tokens, so each K/V tile is read once for the whole group;
- the program of split 0, query block 0 copies the S new keys/values into the caches at rows past_len[b]..;
  attention reads cached keys 0..past_len[b]-1 from the cache and the new keys straight from k_new/v_new, so no
  program reads a cache row that another program of the same launch writes (no race, no grid-wide barrier);
- split-K without a second launch: the grid offers each query block enough split programs to give the GPU about
  PROGRAMS_PER_SM programs per SM; at run time a block uses as many as its keys are worth (none shorter than
  MIN_KEYS_PER_SPLIT keys) and the fixed-size scratch allows. Each writes its partial softmax to the `partial` /
  `partial_lse` scratch outputs and bumps the block's counter in `sync`; the program
  that arrives last merges the partials by log-sum-exp, writes the output and puts the counter back to 0.
  `sync` must therefore hold zeros before the first launch (the runtime owns and zero-fills it; it stays zero
  between launches). Nobody waits on anybody, so a wrong counter can give a wrong output but never a hang.

Tensors are contiguous (TensorRT's LINEAR format), so strides follow from the shapes: S and Smax are runtime
scalars, the head counts and head size are compile-time constants (the node's attributes).
`pard_attention_fused` launches it from torch (tests run it under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import builtins
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import QUERY_BLOCK, sync_size
from .reference import check_shapes
from .triton_kernel import _add, _dot, _larger

BLOCK_M = QUERY_BLOCK  # query rows (tokens x group heads) per program: fixed, since S is only known at run time
BLOCK_N = 64  # keys per tile
NUM_WARPS = 4
NUM_STAGES = 3  # software pipelining depth (H200: 3 beat 2 at every timed shape, docs/gpu-pard-attention.md)
MAX_SPLITS = 64  # key splits per query block, at most
SCRATCH_ROWS = 32768  # rows of the scratch outputs: B * S * Hq * splits never exceeds it (fewer splits if need be)
MIN_KEYS_PER_SPLIT = 256  # a split never holds fewer keys than this (unless the block sees fewer)
PROGRAMS_PER_SM = 1  # split-K aims at this many programs per streaming multiprocessor (fewer splits: shorter merge)

INPUTS = ("Q", "KNew", "VNew", "KCache", "VCache", "PastLen", "Sync")
SCALARS = ("seq", "capacity")
OUTPUTS = ("Out", "KCacheOut", "VCacheOut", "SyncOut", "Partial", "PartialLse")
RUNTIME_ARGS = INPUTS + SCALARS + OUTPUTS


def launch_grid(batch, seq, capacity, kv_heads: int, group: int, target_programs: int,
                min_keys: int = MIN_KEYS_PER_SPLIT, *, cdiv=triton.cdiv, minimum=builtins.min):
    """(x, y, z) programs: B * Hkv (row, kv head) pairs, query blocks of BLOCK_M rows, and key splits: as many as a
    full cache may use, but no more than target_programs (target_programs(sm_count)) asks for. With
    cdiv=tensorrt.plugin.cdiv and minimum=tensorrt.plugin.min it takes TensorRT's symbolic shape expressions."""
    pairs, query_blocks = batch * kv_heads, cdiv(seq * group, BLOCK_M)
    splits = minimum(minimum(cdiv(capacity, min_keys), MAX_SPLITS), cdiv(target_programs, pairs * query_blocks))
    return pairs, query_blocks, splits


def scratch_shapes(head_size: int) -> tuple[tuple[int, int], tuple[int]]:
    """Shapes of the float32 scratch outputs: partial [SCRATCH_ROWS, D] and partial_lse [SCRATCH_ROWS]. Fixed,
    so their memory does not grow with the batch, the chunk or the cache (the kernel splits less instead)."""
    return (SCRATCH_ROWS, head_size), (SCRATCH_ROWS,)


def target_programs(sm_count: int) -> int:
    """How many programs split-K aims at on a GPU with sm_count streaming multiprocessors."""
    return PROGRAMS_PER_SM * sm_count


def constexprs(q_heads: int, kv_heads: int, head_size: int, dtype_name: str, *, min_keys: int = MIN_KEYS_PER_SPLIT,
               interpreted: bool = False) -> dict:
    """The kernel's compile-time constants for one node (its attributes) and dtype ("fp16", "bf16", "fp32")."""
    if q_heads % kv_heads:
        raise ValueError(f"num_q_heads {q_heads} is not a multiple of num_kv_heads {kv_heads}")
    if head_size < 16:
        raise ValueError(f"head size: expected at least 16 (tl.dot), found {head_size}")
    return {
        "GROUP": q_heads // kv_heads, "KV_HEADS": kv_heads, "HEAD_D": head_size,
        "BLOCK_D": triton.next_power_of_2(head_size), "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N,
        "SCALE_LOG2": math.log2(math.e) / math.sqrt(head_size),
        "MIN_KEYS": min_keys, "SCRATCH_ROWS": SCRATCH_ROWS,
        "DOT_PRECISION": "ieee" if dtype_name == "fp32" else "tf32",
        "DOT_IN_FP32": dtype_name == "bf16" and interpreted,
    }


def signature(dtype_name: str) -> dict[str, str]:
    """Triton's signature of `pard_attention_fused_kernel`, in TensorRT's AOT order: inputs, int32 scalars,
    outputs (the cache and sync outputs alias their inputs), then the compile-time constants."""
    types = {"PastLen": "*i32", "Sync": "*i32", "SyncOut": "*i32", "Partial": "*fp32", "PartialLse": "*fp32",
             "seq": "i32", "capacity": "i32"}
    runtime = {name: types.get(name, f"*{dtype_name}") for name in RUNTIME_ARGS}
    return {**runtime, **{name: "constexpr" for name in constexprs(1, 1, 16, dtype_name)}}


def pard_attention_fused(q, k_new, v_new, k_cache, v_cache, past_len, *, sm_count=None,
                         min_keys=MIN_KEYS_PER_SPLIT, sync=None, scratch=None, out=None):
    """Same contract as `triton_kernel.pard_attention` (caches updated in place; returns out), in one launch.

    sm_count: the streaming multiprocessors split-K fills (None: the GPU's own; 1 under the CPU interpreter);
    min_keys: the shortest split. sync (int32 zeros, at least sync_size(...) of them), scratch (partial,
    partial_lse: float32 of scratch_shapes(D)) and out: buffers to use, as TensorRT hands them to the plugin;
    None allocates the scratch and out per call and takes the counters from a per-device buffer kept between calls."""
    check_shapes(q, k_new, v_new, k_cache, v_cache, past_len)
    batch, seq, q_heads, head_size = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    tensors = (q, k_new, v_new, k_cache, v_cache)
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError("the fused kernel needs contiguous tensors (TensorRT's LINEAR format)")
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[q.dtype]
    interpreted = isinstance(pard_attention_fused_kernel, InterpretedFunction)
    if sm_count is None:
        sm_count = 1 if interpreted else torch.cuda.get_device_properties(q.device).multi_processor_count
    consts = constexprs(q_heads, kv_heads, head_size, name, min_keys=min_keys, interpreted=interpreted)
    group = q_heads // kv_heads
    if sync is None:
        sync = zeroed_counters(q.device, sync_size(batch, seq, kv_heads, group))
    if scratch is None:
        scratch = [torch.empty(shape, dtype=torch.float32, device=q.device) for shape in scratch_shapes(head_size)]
    out = torch.empty_like(q) if out is None else out
    grid = launch_grid(batch, seq, capacity, kv_heads, group, target_programs(sm_count), min_keys)
    pard_attention_fused_kernel[grid](q, k_new, v_new, k_cache, v_cache, past_len, sync, seq, capacity,
                                      out, k_cache, v_cache, sync, *scratch,
                                      **consts, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out


def zeroed_counters(device, size: int) -> torch.Tensor:
    """The first `size` of a per-device int32 buffer that is all zeros between launches (the kernel resets what
    it counts). It only grows: a new, larger buffer is zero-filled. One buffer per device: launches on concurrent
    streams must pass their own `sync` (as TensorRT does: the runtime owns one per plan)."""
    buffer = _COUNTERS.get(device)
    if buffer is None or buffer.numel() < size:
        buffer = _COUNTERS[device] = torch.zeros(max(size, 1024), dtype=torch.int32, device=device)
    return buffer[:size]


_COUNTERS: dict = {}


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
    Q, KNew, VNew, KCache, VCache, PastLen, Sync,
    seq, capacity,
    Out, KCacheOut, VCacheOut, SyncOut, Partial, PartialLse,
    GROUP: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALE_LOG2: tl.constexpr,
    MIN_KEYS: tl.constexpr, SCRATCH_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)  # (batch row, kv head)
    b = (pair // KV_HEADS).to(tl.int64)
    kv_head = pair % KV_HEADS
    q_block = tl.program_id(1)
    split = tl.program_id(2)
    past = tl.load(PastLen + b)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    new_row = KV_HEADS * HEAD_D  # elements between consecutive tokens of k_new/v_new [B, S, Hkv, D]
    new_base = b * seq * new_row + kv_head * HEAD_D
    cache_base = (b * KV_HEADS + kv_head) * capacity * HEAD_D  # caches [B, Hkv, Smax, D]

    if (q_block == 0) & (split == 0):
        _write_new_rows(KNew, VNew, KCacheOut, VCacheOut, new_base, cache_base, past, seq, dims, dim_ok,
                        new_row, HEAD_D, BLOCK_N)

    # This block's keys: the cache's `past` rows, then new keys up to its last query token.
    n_keys = past + tl.minimum(seq - 1, ((q_block + 1) * BLOCK_M - 1) // GROUP) + 1
    # Every block may use split_cap splits (the scratch row stride); this one uses what its keys are worth.
    out_rows = (tl.num_programs(0) // KV_HEADS) * seq * (KV_HEADS * GROUP)  # B * S * Hq
    split_cap = tl.maximum(1, tl.minimum(tl.num_programs(2), SCRATCH_ROWS // out_rows))
    splits = tl.minimum(split_cap, (n_keys + MIN_KEYS - 1) // MIN_KEYS)  # n_keys >= 1: at least one
    chunk = ((n_keys + splits - 1) // splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    splits = (n_keys + chunk - 1) // chunk  # after rounding chunks to whole tiles, no split is empty
    if split < splits:
        rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
        token = rows // GROUP  # [BLOCK_M] index among the S new tokens
        head = kv_head * GROUP + rows % GROUP  # [BLOCK_M] query head
        row_ok = token < seq
        out_row = (b * seq + token) * (KV_HEADS * GROUP) + head  # [BLOCK_M] (b, token, head) of out
        out_mask = row_ok[:, None] & dim_ok[None, :]
        q = tl.load(Q + out_row[:, None] * HEAD_D + dims[None, :], mask=out_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
        start = split * chunk
        end = tl.minimum(start + chunk, n_keys)
        m_i, l_i, acc = _attend_keys(q, KNew, VNew, KCache, VCache, new_base, cache_base, past, start, end, token,
                                     row_ok, dims, dim_ok, new_row, SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32,
                                     HEAD_D, BLOCK_M, BLOCK_N, BLOCK_D)
        if splits == 1:
            out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # every real row sees key 0
            tl.store(Out + out_row[:, None] * HEAD_D + dims[None, :], out.to(Out.dtype.element_ty), mask=out_mask)
        else:
            part_row = out_row * split_cap + split
            has_keys = l_i > 0.0  # false for a row that sees none of this split's keys
            tl.store(Partial + part_row[:, None] * HEAD_D + dims[None, :],
                     acc / tl.where(has_keys, l_i, 1.0)[:, None], mask=out_mask)
            tl.store(PartialLse + part_row, tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)),
                                                     float("-inf")), mask=row_ok)
            tl.debug_barrier()  # every thread's partial is stored before the counter says so
            counter = SyncOut + pair * tl.num_programs(1) + q_block
            if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == splits - 1:  # the last split to finish
                _merge_splits(Partial, PartialLse, Out, out_row, row_ok, out_mask, splits, split_cap,
                              dims, HEAD_D, BLOCK_M, BLOCK_D)
                tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # zero again for the next launch


@triton.jit
def _write_new_rows(KNew, VNew, KCacheOut, VCacheOut, new_base, cache_base, past, seq, dims, dim_ok,
                    new_row, HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Copy the S new rows of one (row, kv head) into the caches at rows past..past+S-1."""
    for start in range(0, seq, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        ok = (tokens < seq)[:, None] & dim_ok[None, :]
        src = new_base + tokens[:, None] * new_row + dims[None, :]
        dst = cache_base + (past + tokens).to(tl.int64)[:, None] * HEAD_D + dims[None, :]
        tl.store(KCacheOut + dst, tl.load(KNew + src, mask=ok), mask=ok)
        tl.store(VCacheOut + dst, tl.load(VNew + src, mask=ok), mask=ok)


@triton.jit
def _attend_keys(q, KNew, VNew, KCache, VCache, new_base, cache_base, past, start, end, token, row_ok, dims,
                 dim_ok, new_row, SCALE_LOG2: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
                 HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Online softmax over keys [start, end): cached ones (< past) from the cache, new ones from k_new/v_new."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    cache_end = tl.minimum(end, past)
    for tile in range(start, cache_end, BLOCK_N):  # cached keys: every query row sees all of them
        keys = tile + tl.arange(0, BLOCK_N)
        key_ok = keys < cache_end
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        offsets = cache_base + keys.to(tl.int64)[:, None] * HEAD_D + dims[None, :]
        k = tl.load(KCache + offsets, mask=kv_mask, other=0.0)
        v = tl.load(VCache + offsets, mask=kv_mask, other=0.0)
        m_i, l_i, acc = _online_step(q, k, v, key_ok[None, :] & row_ok[:, None], m_i, l_i, acc,
                                     SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32)
    for tile in range(tl.maximum(start, past), end, BLOCK_N):  # new keys, causal: token t sees new keys 0..t
        keys = tile + tl.arange(0, BLOCK_N)
        key_ok = keys < end
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        offsets = new_base + (keys - past)[:, None] * new_row + dims[None, :]
        k = tl.load(KNew + offsets, mask=kv_mask, other=0.0)
        v = tl.load(VNew + offsets, mask=kv_mask, other=0.0)
        visible = key_ok[None, :] & (keys[None, :] <= (past + token)[:, None])
        m_i, l_i, acc = _online_step(q, k, v, visible, m_i, l_i, acc, SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32)
    return m_i, l_i, acc


@triton.jit
def _merge_splits(Partial, PartialLse, Out, out_row, row_ok, out_mask, splits, split_stride, dims,
                  HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the block's `splits` partial softmaxes (base-2 log-sum-exp weights) into the output rows.
    ".cg" loads read L2, where the other programs' partials are, never a stale L1 line. (Loading every weight
    first and unrolling this loop measured slower on an H200: docs/gpu-pard-attention.md.)"""
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for split in range(0, splits):
        part_row = out_row * split_stride + split
        lse = tl.load(PartialLse + part_row, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(Partial + part_row[:, None] * HEAD_D + dims[None, :], mask=out_mask, other=0.0,
                       cache_modifier=".cg")
        m_new = tl.maximum(m, lse)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - shift)
        weight = tl.exp2(lse - shift)
        acc = acc * alpha[:, None] + part * weight[:, None]
        total = total * alpha + weight
        m = m_new
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    tl.store(Out + out_row[:, None] * HEAD_D + dims[None, :], out.to(Out.dtype.element_ty), mask=out_mask)
