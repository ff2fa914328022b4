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
  `programs_per_sm` programs per SM; at run time a block uses as many as its keys are worth (none shorter than
  `min_keys_per_split` keys) and the fixed-size scratch allows. Each writes its partial softmax to the `partial` /
  `partial_lse` scratch outputs and bumps its group's counter in `sync`; the program whose bump brings the counter
  to a multiple of the group's size (from zero: the last to arrive) merges the group's partials by log-sum-exp
  (its own from registers) and puts the counter back to 0. With one group (the default) that merger writes the
  output. With `merge_tree`, a block of n splits has about sqrt(n) groups whose mergers run in parallel, store the
  group's result and bump the block's counter; the last of them merges the groups: two serial merges of ~sqrt(n)
  partials instead of one of n.
  `sync` must therefore hold zeros before the first launch (the runtime owns and zero-fills it; it stays zero
  between launches). Nobody waits on anybody, so a wrong counter can give a wrong output but never a hang. On
  counters that start non-zero (TensorRT times its tactics on arbitrary data) a group still merges about once, so
  a tactic's timing includes its merge;
- a past_len outside [0, Smax - S] is clamped into it, so no launch reads or writes outside the caches (the
  runtime never passes one, but TensorRT may run a plugin on arbitrary data while it builds a plan).

Tensors are contiguous (TensorRT's LINEAR format), so strides follow from the shapes: S and Smax are runtime
scalars, the head counts and head size are compile-time constants (the node's attributes). Tiles, pipelining and
the split-K and merge options form a `FusedConfig`; `TACTICS` are the configs the TensorRT plugin offers its
builder, which keeps the fastest per optimization profile.
`pard_attention_fused` launches it from torch (tests run it under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import COUNTERS_PER_BLOCK, MERGE_GROUPS, QUERY_BLOCK, sync_size
from .dtypes import triton_dtype_name
from .reference import check_shapes
from .triton_kernel import _add, _dot, _larger

BLOCK_M = QUERY_BLOCK  # query rows (tokens x group heads) per program: fixed, since S is only known at run time
MAX_SPLITS = 64  # key splits per query block, at most
SCRATCH_ROWS = 32768  # rows of the scratch outputs: B * S * Hq * splits never exceeds it (fewer splits if need be)


@dataclass(frozen=True)
class FusedConfig:
    """One compiled variant of the kernel and the split-K rule of its launch: a TensorRT tactic (TACTICS)."""

    block_n: int = 64  # keys per tile
    num_warps: int = 4
    num_stages: int = 3  # software pipelining depth (H200: 3 beat 2 at every timed shape, docs/gpu-pard-attention.md)
    programs_per_sm: int = 1  # split-K aims at this many programs per streaming multiprocessor
    min_keys_per_split: int = 256  # a split never holds fewer keys than this (unless the block sees fewer)
    splits_round_down: bool = False  # offer floor (not ceil) of target / blocks splits: no partial second wave
    merge_tree: bool = False  # merge the splits in two levels of ~sqrt(splits) partials each (module docstring)
    merge_stages: int = 0  # > 0: software-pipeline the merge loop this deep (tl.range num_stages); 0: a plain loop


DEFAULT_CONFIG = FusedConfig()  # run 3's table of record (docs/gpu-pard-attention.md)
# What the TensorRT plugin offers its builder, which times each on the build GPU at every optimization profile's opt
# shape and keeps the fastest (tactic i + 1 is TACTICS[i]). The defaults, then variants for the shapes where they
# missed the bandwidth target in run 3: a pipelined merge, also two-level, for multi-token steps at batch 1 (one
# program merges many 64-row partials); whole waves of programs at batch 8; smaller tiles (more programs resident).
# Append only, and never change an entry: a timing cache (build --timing-cache) remembers picks by tactic number.
TACTICS = (
    DEFAULT_CONFIG,
    FusedConfig(merge_stages=2),
    FusedConfig(merge_tree=True, merge_stages=2),
    FusedConfig(splits_round_down=True),
    FusedConfig(block_n=32),
)


def tactic_config(tactic: int) -> FusedConfig:
    """The config of a TensorRT tactic: 1 .. len(TACTICS); 0 (TensorRT's default tactic) is DEFAULT_CONFIG."""
    if not 0 <= tactic <= len(TACTICS):
        raise ValueError(f"PardAttention has tactics 1 to {len(TACTICS)}, not {tactic}")
    return TACTICS[tactic - 1] if tactic else DEFAULT_CONFIG


INPUTS = ("Q", "KNew", "VNew", "KCache", "VCache", "PastLen", "Sync")
SCALARS = ("seq", "capacity")
OUTPUTS = ("Out", "KCacheOut", "VCacheOut", "SyncOut", "Partial", "PartialLse")
RUNTIME_ARGS = INPUTS + SCALARS + OUTPUTS


def launch_grid(
    batch,
    seq,
    capacity,
    kv_heads: int,
    group: int,
    sm_count: int,
    config: FusedConfig = DEFAULT_CONFIG,
    *,
    cdiv=triton.cdiv,
    minimum=builtins.min,
    maximum=builtins.max,
):
    """(x, y, z) programs: B * Hkv (row, kv head) pairs, query blocks of BLOCK_M rows, and key splits: as many as a
    full cache may use, but no more than config.programs_per_sm programs per streaming multiprocessor ask for
    (rounded up, or down with config.splits_round_down). With tensorrt.plugin's cdiv, min and max it takes
    TensorRT's symbolic shape expressions."""
    pairs, query_blocks = batch * kv_heads, cdiv(seq * group, BLOCK_M)
    blocks = pairs * query_blocks
    target = config.programs_per_sm * sm_count
    if config.splits_round_down:
        wanted = maximum(cdiv(target + 1, blocks) - 1, 1)
    else:
        wanted = cdiv(target, blocks)
    splits = minimum(minimum(cdiv(capacity, config.min_keys_per_split), MAX_SPLITS), wanted)
    return pairs, query_blocks, splits


def scratch_shapes(head_size: int) -> tuple[tuple[int, int], tuple[int]]:
    """Shapes of the float32 scratch outputs: partial [SCRATCH_ROWS, D] and partial_lse [SCRATCH_ROWS]. Fixed,
    so their memory does not grow with the batch, the chunk or the cache (the kernel splits less instead)."""
    return (SCRATCH_ROWS, head_size), (SCRATCH_ROWS,)


def new_scratch(head_size: int, device) -> list[torch.Tensor]:
    """Uninitialised float32 scratch of scratch_shapes(head_size) (the kernel writes before it reads)."""
    return [torch.empty(shape, dtype=torch.float32, device=device) for shape in scratch_shapes(head_size)]


def constexprs(
    q_heads: int,
    kv_heads: int,
    head_size: int,
    dtype_name: str,
    config: FusedConfig = DEFAULT_CONFIG,
    *,
    interpreted: bool = False,
) -> dict:
    """The kernel's compile-time constants for one node (its attributes), dtype ("fp16", "bf16", "fp32") and
    config (its num_warps and num_stages are launch options, not constants)."""
    if q_heads % kv_heads:
        raise ValueError(f"num_q_heads {q_heads} is not a multiple of num_kv_heads {kv_heads}")
    if head_size < 16:
        raise ValueError(f"head size: expected at least 16 (tl.dot), found {head_size}")
    return {
        "GROUP": q_heads // kv_heads,
        "KV_HEADS": kv_heads,
        "HEAD_D": head_size,
        "BLOCK_D": triton.next_power_of_2(head_size),
        "BLOCK_M": BLOCK_M,
        "BLOCK_N": config.block_n,
        "SCALE_LOG2": math.log2(math.e) / math.sqrt(head_size),
        "MIN_KEYS": config.min_keys_per_split,
        "SCRATCH_ROWS": SCRATCH_ROWS,
        "COUNTERS": COUNTERS_PER_BLOCK,
        "MERGE_GROUPS": MERGE_GROUPS if config.merge_tree else 1,
        "MERGE_STAGES": config.merge_stages,
        "DOT_PRECISION": "ieee" if dtype_name == "fp32" else "tf32",
        "DOT_IN_FP32": dtype_name == "bf16" and interpreted,
    }


def signature(dtype_name: str) -> dict[str, str]:
    """Triton's signature of `pard_attention_fused_kernel`, in TensorRT's AOT order: inputs, int32 scalars,
    outputs (the cache and sync outputs alias their inputs), then the compile-time constants."""
    types = {
        "PastLen": "*i32",
        "Sync": "*i32",
        "SyncOut": "*i32",
        "Partial": "*fp32",
        "PartialLse": "*fp32",
        "seq": "i32",
        "capacity": "i32",
    }
    runtime = {name: types.get(name, f"*{dtype_name}") for name in RUNTIME_ARGS}
    return {**runtime, **{name: "constexpr" for name in constexprs(1, 1, 16, dtype_name)}}


def pard_attention_fused(
    q,
    k_new,
    v_new,
    k_cache,
    v_cache,
    past_len,
    *,
    config: FusedConfig = DEFAULT_CONFIG,
    sm_count=None,
    sync=None,
    scratch=None,
    out=None,
):
    """Same contract as `triton_kernel.pard_attention` (caches updated in place; returns out), in one launch.

    config: the kernel variant (a TensorRT tactic); sm_count: the streaming multiprocessors split-K fills (None:
    the GPU's own; 1 under the CPU interpreter). sync (int32 zeros, at least sync_size(...) of
    them), scratch (partial, partial_lse: float32 of scratch_shapes(D)) and out: buffers to use, as TensorRT hands
    them to the plugin; None allocates the scratch and out per call and takes the counters from a per-device buffer
    kept between calls."""
    check_shapes(q, k_new, v_new, k_cache, v_cache, past_len)
    batch, seq, q_heads, head_size = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    tensors = (q, k_new, v_new, k_cache, v_cache)
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError("the fused kernel needs contiguous tensors (TensorRT's LINEAR format)")
    name = triton_dtype_name(q.dtype)
    interpreted = isinstance(pard_attention_fused_kernel, InterpretedFunction)
    if sm_count is None:
        sm_count = 1 if interpreted else torch.cuda.get_device_properties(q.device).multi_processor_count
    consts = constexprs(q_heads, kv_heads, head_size, name, config, interpreted=interpreted)
    group = q_heads // kv_heads
    counters = sync_size(batch, seq, kv_heads, group)
    if sync is None:
        sync = zeroed_counters(q.device, counters)
    elif sync.dtype != torch.int32 or sync.numel() < counters:
        raise ValueError(
            f"sync: expected at least {counters} int32 counters (sync_size), found {sync.numel()} {sync.dtype}"
        )
    if scratch is None:
        scratch = new_scratch(head_size, q.device)
    out = torch.empty_like(q) if out is None else out
    grid = launch_grid(batch, seq, capacity, kv_heads, group, sm_count, config)
    pard_attention_fused_kernel[grid](
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        past_len,
        sync,
        seq,
        capacity,
        out,
        k_cache,
        v_cache,
        sync,
        *scratch,
        **consts,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
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
def _online_step(
    q, k, v, visible, m_i, l_i, acc, SCALE_LOG2: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr
):
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


# S and Smax unspecialised, as in the AOT compile (tensorrt_plugin.compile_kernel): the kernel launched from torch,
# which benchmarks/gpu_checks.py times, is then the very code a TensorRT plan runs (pointers 16-byte aligned in both).
@triton.jit(do_not_specialize=["seq", "capacity"])
def pard_attention_fused_kernel(
    Q, KNew, VNew, KCache, VCache, PastLen, Sync,
    seq, capacity,
    Out, KCacheOut, VCacheOut, SyncOut, Partial, PartialLse,
    GROUP: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALE_LOG2: tl.constexpr,
    MIN_KEYS: tl.constexpr, SCRATCH_ROWS: tl.constexpr, COUNTERS: tl.constexpr, MERGE_GROUPS: tl.constexpr,
    MERGE_STAGES: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)  # (batch row, kv head)
    b = (pair // KV_HEADS).to(tl.int64)
    kv_head = pair % KV_HEADS
    q_block = tl.program_id(1)
    split = tl.program_id(2)
    past = tl.minimum(tl.maximum(tl.load(PastLen + b), 0), tl.maximum(capacity - seq, 0))
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    new_row = KV_HEADS * HEAD_D  # elements between consecutive tokens of k_new/v_new [B, S, Hkv, D]
    new_base = b * seq * new_row + kv_head * HEAD_D
    cache_base = (b * KV_HEADS + kv_head) * capacity * HEAD_D  # caches [B, Hkv, Smax, D]

    if (q_block == 0) & (split == 0):
        _write_new_rows(
            KNew,
            VNew,
            KCacheOut,
            VCacheOut,
            new_base,
            cache_base,
            past,
            seq,
            capacity,
            dims,
            dim_ok,
            new_row,
            HEAD_D,
            BLOCK_N,
        )

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
        m_i, l_i, acc = _attend_keys(
            q,
            KNew,
            VNew,
            KCache,
            VCache,
            new_base,
            cache_base,
            past,
            start,
            end,
            token,
            row_ok,
            dims,
            dim_ok,
            new_row,
            SCALE_LOG2,
            DOT_PRECISION,
            DOT_IN_FP32,
            HEAD_D,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
        )
        out_ptrs = Out + out_row[:, None] * HEAD_D + dims[None, :]
        part, lse = _normalised(acc, m_i, l_i)  # every real row sees key 0 when unsplit
        if splits == 1:
            tl.store(out_ptrs, part.to(Out.dtype.element_ty), mask=out_mask)
        else:
            counters = SyncOut + (pair * tl.num_programs(1) + q_block) * COUNTERS  # [the block's, one per group]
            _store_partial(Partial, PartialLse, out_row * split_cap + split, part, lse, row_ok, out_mask, dims, HEAD_D)
            # one group: the last split to arrive merges them all. A static branch, not _merge_in_two_levels with one
            # group: compiled in, that code costs the default kernel register spills (benchmarks/kernel_resources.py)
            if MERGE_GROUPS == 1:
                if _completes(tl.atomic_add(counters + 1, 1, sem="acq_rel", scope="gpu"), splits):
                    part, lse = _merge_partials(
                        part,
                        lse,
                        Partial,
                        PartialLse,
                        out_row * split_cap,
                        splits,
                        1,
                        split,
                        row_ok,
                        out_mask,
                        dims,
                        HEAD_D,
                        MERGE_STAGES,
                    )
                    tl.store(out_ptrs, part.to(Out.dtype.element_ty), mask=out_mask)
                    tl.atomic_xchg(counters + 1, 0, sem="relaxed", scope="gpu")  # zero for the next launch
            else:
                _merge_in_two_levels(
                    part,
                    lse,
                    Partial,
                    PartialLse,
                    out_ptrs,
                    counters,
                    out_row * split_cap,
                    split,
                    splits,
                    row_ok,
                    out_mask,
                    dims,
                    HEAD_D,
                    MERGE_GROUPS,
                    MERGE_STAGES,
                )


@triton.jit
def _merge_in_two_levels(
    part,
    lse,
    Partial,
    PartialLse,
    out_ptrs,
    counters,
    base_row,
    split,
    splits,
    row_ok,
    out_mask,
    dims,
    HEAD_D: tl.constexpr,
    MERGE_GROUPS: tl.constexpr,
    MERGE_STAGES: tl.constexpr,
):
    """merge_tree: ~sqrt(splits) groups of consecutive splits. The last of a group to arrive merges the group and
    leaves the result in the group's first scratch rows; the last group to finish merges the groups' results."""
    groups = tl.minimum(tl.sqrt_rn(splits.to(tl.float32)).to(tl.int32), MERGE_GROUPS)  # floor: 1 .. MERGE_GROUPS
    group_size = (splits + groups - 1) // groups
    groups = (splits + group_size - 1) // group_size
    group = split // group_size
    first = group * group_size
    members = tl.minimum(group_size, splits - first)
    if _completes(tl.atomic_add(counters + 1 + group, 1, sem="acq_rel", scope="gpu"), members):  # group's last
        part, lse = _merge_partials(
            part,
            lse,
            Partial,
            PartialLse,
            base_row + first,
            members,
            1,
            split - first,
            row_ok,
            out_mask,
            dims,
            HEAD_D,
            MERGE_STAGES,
        )
        tl.atomic_xchg(counters + 1 + group, 0, sem="relaxed", scope="gpu")  # zero for the next launch
        if groups == 1:
            tl.store(out_ptrs, part.to(out_ptrs.dtype.element_ty), mask=out_mask)
        else:
            _store_partial(Partial, PartialLse, base_row + first, part, lse, row_ok, out_mask, dims, HEAD_D)
            if _completes(tl.atomic_add(counters, 1, sem="acq_rel", scope="gpu"), groups):  # the last group
                part, lse = _merge_partials(
                    part,
                    lse,
                    Partial,
                    PartialLse,
                    base_row,
                    groups,
                    group_size,
                    group,
                    row_ok,
                    out_mask,
                    dims,
                    HEAD_D,
                    MERGE_STAGES,
                )
                tl.store(out_ptrs, part.to(out_ptrs.dtype.element_ty), mask=out_mask)
                tl.atomic_xchg(counters, 0, sem="relaxed", scope="gpu")


@triton.jit
def _completes(before, count):
    """Whether a bump that found `before` in a counter of `count` arrivals is the last: from zero, before == count
    - 1. Modulo count, so that counters holding anything (TensorRT's tactic timing) still give about one merger."""
    return (before + 1) % count == 0


@triton.jit
def _write_new_rows(
    KNew,
    VNew,
    KCacheOut,
    VCacheOut,
    new_base,
    cache_base,
    past,
    seq,
    capacity,
    dims,
    dim_ok,
    new_row,
    HEAD_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Copy the S new rows of one (row, kv head) into the caches at rows past..past+S-1 (those that fit)."""
    for start in range(0, seq, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        ok = ((tokens < seq) & (past + tokens < capacity))[:, None] & dim_ok[None, :]
        src = new_base + tokens[:, None] * new_row + dims[None, :]
        dst = cache_base + (past + tokens).to(tl.int64)[:, None] * HEAD_D + dims[None, :]
        tl.store(KCacheOut + dst, tl.load(KNew + src, mask=ok), mask=ok)
        tl.store(VCacheOut + dst, tl.load(VNew + src, mask=ok), mask=ok)


@triton.jit
def _attend_keys(
    q,
    KNew,
    VNew,
    KCache,
    VCache,
    new_base,
    cache_base,
    past,
    start,
    end,
    token,
    row_ok,
    dims,
    dim_ok,
    new_row,
    SCALE_LOG2: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    HEAD_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
        m_i, l_i, acc = _online_step(
            q, k, v, key_ok[None, :] & row_ok[:, None], m_i, l_i, acc, SCALE_LOG2, DOT_PRECISION, DOT_IN_FP32
        )
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
def _store_partial(Partial, PartialLse, part_row, part, lse, row_ok, out_mask, dims, HEAD_D: tl.constexpr):
    """Leave one normalised partial softmax (and its base-2 log-sum-exp) in the scratch rows part_row."""
    tl.store(Partial + part_row[:, None] * HEAD_D + dims[None, :], part, mask=out_mask)
    tl.store(PartialLse + part_row, lse, mask=row_ok)
    tl.debug_barrier()  # every thread's partial is stored before a counter says so


@triton.jit
def _merge_partials(
    part,
    lse,
    Partial,
    PartialLse,
    base_row,
    count,
    stride,
    own,
    row_ok,
    out_mask,
    dims,
    HEAD_D: tl.constexpr,
    MERGE_STAGES: tl.constexpr,
):
    """Merge `count` normalised partials, at scratch rows base_row + i * stride, by base-2 log-sum-exp weights:
    number `own` is (part, lse), already in registers; the others are read. Returns the merged (part, lse).
    ".cg" loads read L2, where the other programs' partials are, never a stale L1 line. (Loading every weight
    first and unrolling this loop measured slower on an H200: docs/gpu-pard-attention.md.)"""
    m = lse
    total = tl.where(lse > float("-inf"), 1.0, 0.0)
    acc = part * total[:, None]
    if MERGE_STAGES > 0:
        for step in tl.range(1, count, num_stages=MERGE_STAGES):
            m, total, acc = _merge_step(
                m,
                total,
                acc,
                Partial,
                PartialLse,
                base_row + ((own + step) % count) * stride,
                row_ok,
                out_mask,
                dims,
                HEAD_D,
            )
    else:
        for step in range(1, count):
            m, total, acc = _merge_step(
                m,
                total,
                acc,
                Partial,
                PartialLse,
                base_row + ((own + step) % count) * stride,
                row_ok,
                out_mask,
                dims,
                HEAD_D,
            )
    return _normalised(acc, m, total)


@triton.jit
def _normalised(acc, m, total):
    """A running softmax (weighted sum acc, base-2 max m, weight sum total) as (acc / total, its base-2
    log-sum-exp); a row that saw no key (total 0) gives 0 and -inf."""
    has_keys = total > 0.0
    safe_total = tl.where(has_keys, total, 1.0)
    return acc / safe_total[:, None], tl.where(has_keys, m + tl.log2(safe_total), float("-inf"))


@triton.jit
def _merge_step(m, total, acc, Partial, PartialLse, part_row, row_ok, out_mask, dims, HEAD_D: tl.constexpr):
    """Add the partial at scratch rows part_row to the running (max, weight sum, weighted sum)."""
    lse = tl.load(PartialLse + part_row, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
    part = tl.load(Partial + part_row[:, None] * HEAD_D + dims[None, :], mask=out_mask, other=0.0, cache_modifier=".cg")
    m_new = tl.maximum(m, lse)
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - shift)
    weight = tl.exp2(lse - shift)
    return m_new, total * alpha + weight, acc * alpha[:, None] + part * weight[:, None]
