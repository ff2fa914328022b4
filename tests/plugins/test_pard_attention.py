"""PardAttention: the numpy reference against naive math, and the Triton kernel against the reference.

Without a GPU the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set before triton is imported);
with one, the compiled kernel runs in the `gpu` test instead.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

from plugins.pard_attention import reference  # noqa: E402

PAST = (0, 17)  # per-row past lengths, deliberately different
SPARE_ROWS = 5  # cache rows beyond the longest row's past + S, which must stay untouched
HEADS = [(1, 1), (3, 1), (8, 2), (8, 1)]  # (Hq, Hkv): group sizes 1, 3, 4, 8
# fp32: largest absolute error; fp16/bf16: largest absolute error over the largest expected magnitude.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_inputs(seq, q_heads, kv_heads, head_dim, dtype=torch.float32, past=PAST, device="cpu", seed=0):
    """Random q, k_new, v_new, k_cache, v_cache, past_len (torch) with a cache just big enough plus spare rows."""
    gen = torch.Generator().manual_seed(seed)
    batch, capacity = len(past), max(past) + seq + SPARE_ROWS

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = rand(batch, seq, q_heads, head_dim)
    k_new, v_new = rand(batch, seq, kv_heads, head_dim), rand(batch, seq, kv_heads, head_dim)
    k_cache, v_cache = rand(batch, kv_heads, capacity, head_dim), rand(batch, kv_heads, capacity, head_dim)
    return q, k_new, v_new, k_cache, v_cache, torch.tensor(past, dtype=torch.int32, device=device)


def as_numpy(tensors):
    return [t.float().cpu().numpy().copy() if t.is_floating_point() else t.cpu().numpy() for t in tensors]


def error(found: np.ndarray, expected: np.ndarray, dtype) -> float:
    """The error TOLERANCE bounds: absolute for float32, relative to the largest expected value otherwise."""
    scale = 1.0 if dtype == torch.float32 else max(float(np.abs(expected).max()), 1e-30)
    return float(np.abs(found - expected).max()) / scale


def naive_attention(q, k_new, v_new, k_cache, v_cache, past_len):
    """Scalar loops straight from the op's definition; returns (out, k_cache, v_cache) as new arrays."""
    batch, seq, q_heads, head_dim = q.shape
    group = q_heads // k_cache.shape[1]
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    out = np.zeros(q.shape, dtype=np.float64)
    for b in range(batch):
        past = int(past_len[b])
        for i in range(seq):
            k_cache[b, :, past + i] = k_new[b, i]
            v_cache[b, :, past + i] = v_new[b, i]
        for h in range(q_heads):
            for i in range(seq):
                keys = k_cache[b, h // group, : past + i + 1]
                scores = [float(q[b, i, h] @ key) / math.sqrt(head_dim) for key in keys]
                weights = np.exp(np.array(scores) - max(scores))
                weights /= weights.sum()
                out[b, i, h] = weights @ v_cache[b, h // group, : past + i + 1]
    return out, k_cache, v_cache


# --- the reference itself ---


def test_reference_matches_naive_loops_and_writes_only_the_new_rows():
    inputs = as_numpy(make_inputs(seq=3, q_heads=4, kv_heads=2, head_dim=8, past=(0, 5)))
    expected, k_expected, v_expected = naive_attention(*inputs)
    k_before = inputs[3].copy()
    out = reference.pard_attention(*inputs)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 8)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(inputs[3], k_expected)  # written in place...
    np.testing.assert_array_equal(inputs[4], v_expected)
    np.testing.assert_array_equal(inputs[3][0, :, 3:], k_before[0, :, 3:])  # ...and only at past .. past+S-1
    np.testing.assert_array_equal(inputs[3][1, :, :5], k_before[1, :, :5])
    np.testing.assert_array_equal(inputs[3][1, :, 8:], k_before[1, :, 8:])


def test_reference_matches_torch_sdpa_with_a_bottom_right_mask():
    q, k_new, v_new, k_cache, v_cache, past_len = make_inputs(seq=9, q_heads=8, kv_heads=2, head_dim=64)
    out = reference.pard_attention(*as_numpy([q, k_new, v_new, k_cache, v_cache, past_len]))
    for b, past in enumerate(PAST):
        k_cache[b, :, past : past + 9] = k_new[b].transpose(0, 1)
        v_cache[b, :, past : past + 9] = v_new[b].transpose(0, 1)
        visible = torch.arange(past + 9)[None, :] <= past + torch.arange(9)[:, None]  # [S, P+S]
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[b : b + 1].transpose(1, 2),
            k_cache[b : b + 1, :, : past + 9],
            v_cache[b : b + 1, :, : past + 9],
            attn_mask=visible,
            enable_gqa=True,
        )  # [1, Hq, S, D]
        np.testing.assert_allclose(out[b], expected[0].transpose(0, 1).numpy(), atol=1e-5)


def test_reference_rejects_a_row_that_overflows_the_cache():
    inputs = as_numpy(make_inputs(seq=9, q_heads=2, kv_heads=1, head_dim=16, past=(0, 17)))
    inputs[5][1] = 17 + SPARE_ROWS + 1
    with pytest.raises(ValueError, match="does not fit"):
        reference.pard_attention(*inputs)


def test_reference_rejects_heads_that_do_not_group():
    inputs = as_numpy(make_inputs(seq=1, q_heads=3, kv_heads=2, head_dim=16))
    with pytest.raises(ValueError, match="multiple"):
        reference.pard_attention(*inputs)


# --- the Triton kernel against the reference ---


def kernel_module():
    """plugins.pard_attention.triton_kernel, or a skip where triton is not installed (the `kernels` extra)."""
    pytest.importorskip("triton")
    from plugins.pard_attention import triton_kernel

    return triton_kernel


def check_kernel(seq, heads, head_dim, dtype, device="cpu", past=PAST, **kernel_kwargs):
    kernel = kernel_module()
    inputs = make_inputs(seq, *heads, head_dim, dtype=dtype, past=past, device=device)
    expected_inputs = as_numpy(inputs)
    expected = reference.pard_attention(*expected_inputs)
    out = kernel.pard_attention(*inputs, **kernel_kwargs)
    assert out.dtype == dtype and out.shape == (len(past), seq, heads[0], head_dim)
    found = error(out.float().cpu().numpy(), expected, dtype)
    assert found <= TOLERANCE[dtype], f"error {found:.2e} over the tolerance {TOLERANCE[dtype]:.0e}"
    np.testing.assert_array_equal(inputs[3].float().cpu().numpy(), expected_inputs[3])  # caches: same rows
    np.testing.assert_array_equal(inputs[4].float().cpu().numpy(), expected_inputs[4])


def small_tiles():
    return kernel_module().KernelConfig(block_n=16)  # several key tiles even for these short caches


interpreted = pytest.mark.skipif(not INTERPRETED, reason="a GPU is present: the gpu test runs the kernel")


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", HEADS, ids=[f"{hq}q{hkv}kv" for hq, hkv in HEADS])
@pytest.mark.parametrize("seq", [1, 9, 33])
def test_kernel_matches_reference(seq, heads, head_dim, dtype):
    check_kernel(seq, heads, head_dim, dtype, config=small_tiles())


@interpreted
@pytest.mark.parametrize("seq, heads, num_splits", [(1, (8, 2), 8), (9, (3, 1), 3), (33, (8, 1), 2)])
def test_kernel_split_over_keys_matches_reference(seq, heads, num_splits):
    """Split-K, including splits that hold no visible key of a row (row 0 has no past)."""
    check_kernel(seq, heads, 64, torch.float32, num_splits=num_splits, config=small_tiles())


@interpreted
@pytest.mark.parametrize("seq, heads, num_splits", [(1, (8, 2), 1), (9, (8, 1), 3)])
def test_kernel_in_bfloat16_matches_reference(seq, heads, num_splits):
    check_kernel(seq, heads, 128, torch.bfloat16, num_splits=num_splits, config=small_tiles())


@interpreted
def test_kernel_reads_strided_views_of_a_fused_projection():
    kernel = kernel_module()
    _, _, _, k_cache, v_cache, past_len = make_inputs(seq=9, q_heads=4, kv_heads=2, head_dim=32)
    qkv = torch.randn(2, 9, 4 + 2 + 2, 32)  # [B, S, Hq+2*Hkv, D] as a fused QKV projection gives it
    q, k_new, v_new = qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:]
    expected = reference.pard_attention(*as_numpy([q, k_new, v_new, k_cache, v_cache, past_len]))
    out = kernel.pard_attention(q, k_new, v_new, k_cache, v_cache, past_len, config=small_tiles())
    assert error(out.numpy(), expected, torch.float32) <= 1e-5


def test_kernel_rejects_mixed_dtypes():
    kernel = kernel_module()
    q, k_new, v_new, k_cache, v_cache, past_len = make_inputs(seq=1, q_heads=2, kv_heads=1, head_dim=16)
    with pytest.raises(ValueError, match="k_cache"):
        kernel.pard_attention(q, k_new, v_new, k_cache.half(), v_cache, past_len)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_on_cuda_matches_reference(dtype, num_splits):
    for seq in (1, 9, 33):
        for heads in HEADS:
            for head_dim in (64, 128):
                check_kernel(seq, heads, head_dim, dtype, device="cuda", num_splits=num_splits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("seq", [1, 9, 200])
def test_kernel_on_cuda_with_automatic_split_k_matches_reference(seq):
    """Llama-3.1-8B heads over a long cache: the launcher picks split-K from the SM count."""
    check_kernel(seq, (32, 8), 128, torch.bfloat16, device="cuda", past=(300, 4095))
