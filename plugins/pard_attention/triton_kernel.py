"""PardAttention in Triton: write the new K/V into the caches, then flash-decoding attention over them.

One attention program per (batch row, kv head, query block, key split). A query block holds the S new
tokens x the GROUP query heads of one kv head, flattened (row r = token r // GROUP, head r % GROUP), so each
K/V tile is read once for the whole group. Programs stop at their block's last visible key. When
B * Hkv * query blocks is too small to fill the GPU, the visible keys are shared out between `num_splits`
programs (split-K) and a small combine kernel merges their partial softmaxes by log-sum-exp.

Set TRITON_INTERPRET=1 before importing this module to run it on CPU tensors.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .reference import check_shapes

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_SPLITS = 64


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings; the defaults aim at decode/verify shapes (S small, long past)."""

    block_m: int = 64  # largest query block (tokens x group heads); smaller S*GROUP gets a smaller block
    block_n: int = 64  # keys per tile
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int = 2  # split-K aims at this many attention programs per SM
    min_keys_per_split: int = 256  # split-K never cuts the cache capacity finer than this


def pard_attention(q, k_new, v_new, k_cache, v_cache, past_len, *, num_splits=None, config=KernelConfig()):
    """Write k_new/v_new into the caches IN PLACE at rows past_len[b]..past_len[b]+S-1; return out [B,S,Hq,D].

    Same semantics as `reference.pard_attention` (see the package docstring). past_len stays on the device:
    the caller guarantees past_len[b] + S <= Smax. num_splits=None picks the split-K factor from the GPU's SM
    count and the cache capacity (1 on CPU).
    """
    _check(q, k_new, v_new, k_cache, v_cache, past_len)
    batch, seq, q_heads, head_dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    block_d = triton.next_power_of_2(head_dim)

    _write_kv[(batch * seq, kv_heads)](
        k_new, v_new, k_cache, v_cache, past_len, seq,
        *k_new.stride(), *v_new.stride(), *k_cache.stride(), *v_cache.stride(),
        HEAD_D=head_dim, BLOCK_D=block_d,
    )  # fmt: skip

    block_m = min(config.block_m, max(16, triton.next_power_of_2(seq * group)))
    q_blocks = triton.cdiv(seq * group, block_m)
    splits = num_splits or _auto_splits(q.device, batch * kv_heads * q_blocks, capacity, config)
    out = torch.empty((batch, seq, q_heads, head_dim), dtype=q.dtype, device=q.device)
    if splits == 1:
        partial, lse = out, out  # lse is not written without split-K
    else:
        partial = torch.empty((batch, seq, q_heads, splits, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((batch, seq, q_heads, splits), dtype=torch.float32, device=q.device)

    _attend[(batch * kv_heads, q_blocks, splits)](
        q, k_cache, v_cache, past_len, partial, lse,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        seq, kv_heads, splits, math.log2(math.e) / math.sqrt(head_dim),
        GROUP=group, HEAD_D=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=config.block_n,
        WRITE_LSE=splits > 1, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_IN_FP32=q.dtype == torch.bfloat16 and isinstance(_attend, InterpretedFunction),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    if splits > 1:
        _combine[(batch * seq * q_heads,)](
            partial, lse, out, splits, HEAD_D=head_dim, BLOCK_D=block_d, BLOCK_SPLITS=triton.next_power_of_2(splits)
        )
    return out


def _auto_splits(device, programs: int, capacity: int, config: KernelConfig) -> int:
    if device.type != "cuda":
        return 1
    wanted = triton.cdiv(config.programs_per_sm * _sm_count(device.index or 0), programs)
    return max(1, min(wanted, capacity // config.min_keys_per_split, _MAX_SPLITS))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _check(q, k_new, v_new, k_cache, v_cache, past_len) -> None:
    check_shapes(q, k_new, v_new, k_cache, v_cache, past_len)
    if q.dtype not in _DTYPES:
        raise ValueError(f"q: expected one of {_DTYPES}, found {q.dtype}")
    if q.shape[3] < 16:
        raise ValueError(f"head size: expected at least 16 (tl.dot), found {q.shape[3]}")
    if past_len.dtype != torch.int32:
        raise ValueError(f"past_len: expected torch.int32, found {past_len.dtype}")
    others = {"k_new": k_new, "v_new": v_new, "k_cache": k_cache, "v_cache": v_cache, "past_len": past_len}
    for name, tensor in others.items():
        if tensor.device != q.device:
            raise ValueError(f"{name}: expected q's device {q.device}, found {tensor.device}")
        if tensor.dtype != q.dtype and name != "past_len":
            raise ValueError(f"{name}: expected q's dtype {q.dtype}, found {tensor.dtype}")


@triton.jit
def _write_kv(
    KNew, VNew, KCache, VCache, PastLen, seq,
    s_knb, s_kns, s_knh, s_knd, s_vnb, s_vns, s_vnh, s_vnd,
    s_kcb, s_kch, s_kcn, s_kcd, s_vcb, s_vch, s_vcn, s_vcd,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    b = (token // seq).to(tl.int64)
    s = token % seq
    pos = (tl.load(PastLen + b) + s).to(tl.int64)  # the cache row of this token
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    k = tl.load(KNew + b * s_knb + s * s_kns + kv_head * s_knh + dims * s_knd, mask=dim_ok)
    v = tl.load(VNew + b * s_vnb + s * s_vns + kv_head * s_vnh + dims * s_vnd, mask=dim_ok)
    tl.store(KCache + b * s_kcb + kv_head * s_kch + pos * s_kcn + dims * s_kcd, k, mask=dim_ok)
    tl.store(VCache + b * s_vcb + kv_head * s_vch + pos * s_vcn + dims * s_vcd, v, mask=dim_ok)


@triton.jit
def _attend(
    Q, K, V, PastLen, Out, Lse,
    s_qb, s_qs, s_qh, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
    seq, kv_heads, num_splits, scale_log2,
    GROUP: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, WRITE_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    b = (tl.program_id(0) // kv_heads).to(tl.int64)
    kv_head = tl.program_id(0) % kv_heads
    q_block = tl.program_id(1)
    split = tl.program_id(2)
    past = tl.load(PastLen + b)

    rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    token = rows // GROUP  # [BLOCK_M] index among the S new tokens
    head = kv_head * GROUP + rows % GROUP  # [BLOCK_M] query head
    row_ok = token < seq
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    q_ptrs = Q + b * s_qb + token[:, None] * s_qs + head[:, None] * s_qh + dims[None, :] * s_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    last_key = past + token  # [BLOCK_M] the last cache position each row sees

    # This block sees keys [0, past + its last token]; the splits share them out in whole tiles.
    n_keys = past + tl.minimum(seq - 1, ((q_block + 1) * BLOCK_M - 1) // GROUP) + 1
    chunk = ((n_keys + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, n_keys)

    k_base = K + b * s_kb + kv_head * s_kh
    v_base = V + b * s_vb + kv_head * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for tile in range(start, end, BLOCK_N):
        keys = tile + tl.arange(0, BLOCK_N)
        kv_mask = (keys < end)[:, None] & dim_ok[None, :]
        k = tl.load(k_base + keys[:, None] * s_kn + dims[None, :] * s_kd, mask=kv_mask, other=0.0)
        scores = _dot(q, tl.trans(k), DOT_PRECISION, DOT_IN_FP32) * scale_log2  # [BLOCK_M, BLOCK_N]
        scores = tl.where(keys[None, :] <= last_key[:, None], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(scores, 1, _larger))
        # A row with no visible key yet keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        v = tl.load(v_base + keys[:, None] * s_vn + dims[None, :] * s_vd, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, DOT_IN_FP32)
        l_i = l_i * alpha + tl.reduce(p, 1, _add)
        m_i = m_new

    # Out is [B, S, Hq, num_splits, D] (float32 partials) or, without split-K, the output [B, S, Hq, D].
    out_row = ((b * seq + token) * (kv_heads * GROUP) + head) * num_splits + split
    has_keys = l_i > 0.0  # false only for a split that holds none of this row's keys
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_ptrs = Out + out_row[:, None] * HEAD_D + dims[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    if WRITE_LSE:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(Lse + out_row, lse, mask=row_ok)


# tl.cdiv, tl.zeros, tl.max and tl.sum are themselves @triton.jit functions, compiled for the GPU if triton
# was imported before TRITON_INTERPRET was set (torch._dynamo imports it), and then the interpreter cannot
# call them. The kernels use builtins and these two combine functions instead.
@triton.jit
def _larger(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    # Triton's CPU interpreter multiplies bfloat16 operands as their integer bit patterns (3.9): there the
    # exact float32 values go in instead, which is what the GPU's bf16 x bf16 -> fp32 product gives.
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _combine(
    Partial, Lse, Out, num_splits,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # one (b, token, query head)
    splits = tl.arange(0, BLOCK_SPLITS)
    split_ok = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_D
    lse = tl.load(Lse + row * num_splits + splits, mask=split_ok, other=float("-inf"))  # [BLOCK_SPLITS]
    weights = tl.exp2(lse - tl.reduce(lse, 0, _larger))  # split 0 always holds key 0, so the max is finite
    part_ptrs = Partial + (row * num_splits + splits)[:, None] * HEAD_D + dims[None, :]
    parts = tl.load(part_ptrs, mask=split_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_SPLITS, BLOCK_D]
    out = tl.reduce(parts * weights[:, None], 0, _add) / tl.reduce(weights, 0, _add)
    tl.store(Out + row * HEAD_D + dims, out.to(Out.dtype.element_ty), mask=dim_ok)
