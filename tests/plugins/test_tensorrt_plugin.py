"""The TensorRT side of PardAttention: the one-launch Triton kernel its AOT plugin embeds (against the numpy
reference, in Triton's CPU interpreter), the pure launch helpers, and the registration (where TensorRT exists)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pard_export.errors import BackendUnavailableError  # noqa: E402
from pard_export.tensorrt_support import tensorrt_available  # noqa: E402
from plugins.pard_attention import reference, tensorrt_plugin  # noqa: E402

from .test_pard_attention import TOLERANCE, as_numpy, error, make_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernel runs in Triton's interpreter
try:
    from plugins.pard_attention.triton_fused import TACTICS  # noqa: E402

    TACTIC_COUNT = len(TACTICS)
except ImportError:  # no triton: the kernel tests skip
    TACTIC_COUNT = 0
CASES = [  # (S, Hq, Hkv, D, past): decode, verify, GQA groups, a query block split (S * GROUP > 64), head size 80
    (1, 4, 2, 16, (0, 17)),
    (9, 8, 2, 32, (0, 70)),
    (20, 8, 1, 16, (3, 0)),
    (5, 3, 1, 80, (130, 1)),
]


def fused():
    pytest.importorskip("triton")
    from plugins.pard_attention import triton_fused

    return triton_fused


@pytest.mark.parametrize("seq, q_heads, kv_heads, head_dim, past", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_kernel_matches_the_reference(seq, q_heads, kv_heads, head_dim, past, dtype):
    inputs = make_inputs(seq, q_heads, kv_heads, head_dim, dtype=dtype, past=past, device=DEVICE)
    expected_inputs = as_numpy(inputs)
    k_before = inputs[3].clone()
    expected = reference.pard_attention(*expected_inputs)
    out = fused().pard_attention_fused(*inputs)
    assert out.dtype == dtype and out.shape == (len(past), seq, q_heads, head_dim)
    assert error(out.float().cpu().numpy(), expected, dtype) <= TOLERANCE[dtype]
    # the caches: the new rows written in place, everything else untouched
    np.testing.assert_allclose(inputs[3].float().cpu().numpy(), expected_inputs[3], atol=0)
    np.testing.assert_allclose(inputs[4].float().cpu().numpy(), expected_inputs[4], atol=0)
    for b, p in enumerate(past):
        assert torch.equal(inputs[3][b, :, :p], k_before[b, :, :p])
        assert torch.equal(inputs[3][b, :, p + seq :], k_before[b, :, p + seq :])


def test_fused_kernel_bfloat16():
    inputs = make_inputs(4, 4, 2, 16, dtype=torch.bfloat16, past=(0, 9), device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    out = fused().pard_attention_fused(*inputs)
    assert error(out.float().cpu().numpy(), expected, torch.bfloat16) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize(
    "seq, q_heads, kv_heads, head_dim, past, dtype",
    [
        (1, 4, 2, 16, (0, 300), torch.float32),  # decode: one row splits, the other does not
        (9, 8, 2, 32, (200, 70), torch.float16),  # verify: splits that end inside the new tokens
        (20, 8, 1, 16, (3, 150), torch.float32),  # two query blocks, each with its own counter
    ],
)
def test_fused_kernel_split_k_merges_in_kernel_and_leaves_the_counters_at_zero(
    seq, q_heads, kv_heads, head_dim, past, dtype
):
    """sm_count 64 and splits of >= 16 keys: rows of 100+ keys are cut into 64-key splits whose last finisher merges
    them. The output must still equal the reference, and every counter must be back at zero."""
    kernel = fused()
    inputs = make_inputs(seq, q_heads, kv_heads, head_dim, dtype=dtype, past=past, device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    sync = torch.zeros(
        kernel.sync_size(len(past), seq, kv_heads, q_heads // kv_heads) + 3, dtype=torch.int32, device=DEVICE
    )
    config = kernel.FusedConfig(min_keys_per_split=16)
    out = kernel.pard_attention_fused(*inputs, config=config, sm_count=64, sync=sync)
    assert error(out.float().cpu().numpy(), expected, dtype) <= TOLERANCE[dtype]
    assert not sync.any()
    grid = kernel.launch_grid(len(past), seq, inputs[3].shape[2], kv_heads, q_heads // kv_heads, 64, config)
    assert grid[2] > 1  # the launch had programs for several splits


@pytest.mark.parametrize("scratch_rows", [100, 400])  # B * S * Hq = 144 rows: no split, or 2 splits at most
def test_fused_kernel_splits_less_rather_than_write_past_its_fixed_scratch(monkeypatch, scratch_rows):
    kernel = fused()
    monkeypatch.setattr(kernel, "SCRATCH_ROWS", scratch_rows)
    inputs = make_inputs(9, 8, 2, 32, dtype=torch.float32, past=(200, 300), device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    guard = 64  # rows past the scratch that must stay NaN
    partial = torch.full((scratch_rows + guard, 32), float("nan"), device=DEVICE)
    partial_lse = torch.full((scratch_rows + guard,), float("nan"), device=DEVICE)
    out = kernel.pard_attention_fused(
        *inputs,
        config=kernel.FusedConfig(min_keys_per_split=16),
        sm_count=64,
        scratch=(partial[:scratch_rows], partial_lse[:scratch_rows]),
    )
    assert error(out.float().cpu().numpy(), expected, torch.float32) <= TOLERANCE[torch.float32]
    assert partial[scratch_rows:].isnan().all() and partial_lse[scratch_rows:].isnan().all()
    assert partial_lse[:scratch_rows].isnan().all() == (scratch_rows < 144)  # used only where splitting fits


@pytest.fixture
def shuffled_programs(monkeypatch):
    """Triton's CPU interpreter runs a launch's programs in a fixed order (split 0 first, the last split last), so
    the last split always merges. This runs them in a random order instead, like a GPU may: any split, and any
    group, can be the one that arrives last."""
    if DEVICE != "cpu":
        return  # the GPU picks its own order
    from triton.runtime import interpreter

    builder, rng = interpreter.interpreter_builder, np.random.default_rng(0)
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    order = []

    def grid_dim(nx, ny, nz):
        order[:] = [tuple(int(i) for i in np.unravel_index(k, (nx, ny, nz))) for k in rng.permutation(nx * ny * nz)]
        set_dim(nx, ny, nz)

    monkeypatch.setattr(builder, "set_grid_dim", grid_dim)
    monkeypatch.setattr(builder, "set_grid_idx", lambda x, y, z: set_idx(*order.pop()))


MERGE_OPTIONS = [  # the default merge, then the merge and split options of the tactics, and all of them at once
    {},
    dict(merge_tree=True),
    dict(merge_stages=2),
    dict(merge_tree=True, merge_stages=2, splits_round_down=True),
]


@pytest.mark.parametrize("options", MERGE_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("seq, past", [(3, (300, 40)), (1, (600, 250))])
def test_fused_kernel_merges_splits_finishing_in_any_order(shuffled_programs, options, seq, past):
    """16-key tiles, splits of >= 16 keys, 16 splits offered: the rows use 10, 3, 13 and 16 splits (with merge_tree
    groups of 4+4+2, one group, 5+5+3, 4+4+4+4). The output and the counters must not depend on who is last."""
    kernel = fused()
    config = kernel.FusedConfig(block_n=16, min_keys_per_split=16, **options)
    inputs = make_inputs(seq, 4, 2, 16, dtype=torch.float32, past=past, device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    sync = torch.zeros(kernel.sync_size(2, seq, 2, 2), dtype=torch.int32, device=DEVICE)
    out = kernel.pard_attention_fused(*inputs, config=config, sm_count=64, sync=sync)
    assert error(out.float().cpu().numpy(), expected, torch.float32) <= TOLERANCE[torch.float32]
    assert not sync.any()


def test_fused_kernel_clamps_a_past_len_outside_the_cache():
    """A past_len below 0 or above Smax - S (never from the runtime, but TensorRT may run a plugin on arbitrary
    data while it builds) acts as the nearest valid one: nothing outside the caches is read or written."""
    kernel = fused()
    seq, capacity = 4, 40
    inputs = list(make_inputs(seq, 4, 2, 16, dtype=torch.float32, past=(0, 0), device=DEVICE))
    # off by a few rows, so that without the clamp the kernel would touch the guard rows or the other head's rows
    # (far-off values would be clamped the same way, but unclamped they would crash the interpreter, not fail)
    inputs[5] = torch.tensor([-7, capacity - seq + 5], dtype=torch.int32, device=DEVICE)
    guarded = []  # each cache inside a NaN-filled buffer one batch row longer at each end
    for cache in inputs[3:5]:
        buffer = torch.full((4, 2, capacity, 16), float("nan"), device=DEVICE)
        buffer[1:3] = torch.randn(2, 2, capacity, 16)
        guarded.append(buffer)
    inputs[3], inputs[4] = guarded[0][1:3], guarded[1][1:3]
    expected_inputs = as_numpy(inputs)
    expected_inputs[5] = np.array([0, capacity - seq], dtype=np.int32)
    expected = reference.pard_attention(*expected_inputs)
    out = kernel.pard_attention_fused(*inputs)
    assert error(out.float().cpu().numpy(), expected, torch.float32) <= TOLERANCE[torch.float32]
    np.testing.assert_array_equal(inputs[3].cpu().numpy(), expected_inputs[3])
    for buffer in guarded:
        assert buffer[0].isnan().all() and buffer[3].isnan().all()


def test_fused_kernel_writes_only_the_new_rows_that_fit_a_cache_shorter_than_the_chunk():
    """S 6 into a 4-row cache (a shape TensorRT may try while building): past_len is clamped to 0, the first 4 new
    rows are written, nothing outside the caches is touched, and every query still sees its own new keys."""
    kernel = fused()
    seq, capacity = 6, 4
    inputs = list(make_inputs(seq, 4, 2, 16, dtype=torch.float32, past=(0,), device=DEVICE))
    buffers = [torch.full((3, 2, capacity, 16), float("nan"), device=DEVICE) for _ in range(2)]
    inputs[3], inputs[4] = buffers[0][1:2], buffers[1][1:2]
    inputs[5] = torch.tensor([2], dtype=torch.int32, device=DEVICE)
    out = kernel.pard_attention_fused(*inputs)
    padded = [torch.zeros(1, 2, seq, 16, device=DEVICE) for _ in range(2)]  # the same op on a cache that fits
    expected = reference.pard_attention(*as_numpy(inputs[:3] + padded + [torch.tensor([0], dtype=torch.int32)]))
    assert error(out.float().cpu().numpy(), expected, torch.float32) <= TOLERANCE[torch.float32]
    for buffer, new in zip(buffers, inputs[1:3]):
        assert torch.equal(buffer[1, :, :, :], new[0, :capacity].transpose(0, 1))
        assert buffer[0].isnan().all() and buffer[2].isnan().all()


def test_fused_kernel_refuses_too_few_counters():
    kernel = fused()
    inputs = make_inputs(1, 4, 2, 16, dtype=torch.float32, past=(3, 3), device=DEVICE)
    with pytest.raises(ValueError, match="at least 36 int32 counters"):
        kernel.pard_attention_fused(*inputs, sync=torch.zeros(8, dtype=torch.int32, device=DEVICE))


SPLIT_5 = dict(past=(300, 300), config=dict(min_keys_per_split=16))  # S 1, 301 keys a row: 5 splits of 64 keys


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the 5th split may store its partial before the 4th merges")
def test_fused_kernel_merge_is_what_the_output_comes_from():
    """Counters one off (a broken runtime) make the 4th of 5 splits merge, before the 5th has left its partial (the
    interpreter runs them in order): the output is then not the reference, so the tests above cannot pass without
    the in-kernel merge."""
    kernel = fused()
    inputs = make_inputs(1, 4, 2, 16, dtype=torch.float32, past=SPLIT_5["past"], device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    sync = torch.full((kernel.sync_size(2, 1, 2, 2),), 1001, dtype=torch.int32, device=DEVICE)
    scratch = [torch.zeros_like(t) for t in kernel.new_scratch(16, DEVICE)]
    config = kernel.FusedConfig(**SPLIT_5["config"])
    out = kernel.pard_attention_fused(*inputs, config=config, sm_count=64, sync=sync, scratch=scratch)
    assert error(out.float().cpu().numpy(), expected, torch.float32) > 0.1


@pytest.mark.parametrize("options", MERGE_OPTIONS[:2], ids=["one group", "merge_tree"])
@pytest.mark.parametrize("start", [1001, 7, -7])  # none a multiple of 5 (the splits), 3 or 2 (merge_tree groups)
def test_fused_kernel_merges_once_on_counters_that_start_anywhere(options, start):
    """TensorRT times each tactic on inputs of its own, so the counters may hold anything: each query block must
    still merge (the timing then includes the merge's cost), though the result is not the reference."""
    kernel = fused()
    inputs = make_inputs(1, 4, 2, 16, dtype=torch.float32, past=SPLIT_5["past"], device=DEVICE)
    sync = torch.full((kernel.sync_size(2, 1, 2, 2),), start, dtype=torch.int32, device=DEVICE)
    scratch = [torch.zeros_like(t) for t in kernel.new_scratch(16, DEVICE)]  # a merger may read unwritten partials
    out = torch.full_like(inputs[0], 1e6)  # where the merge never stores, this stays
    config = kernel.FusedConfig(**SPLIT_5["config"], **options)
    kernel.pard_attention_fused(*inputs, config=config, sm_count=64, sync=sync, scratch=scratch, out=out)
    assert (out.abs() < 1e6).all()


def test_launch_grid_and_signature_follow_the_aot_argument_order():
    kernel = fused()
    assert kernel.launch_grid(2, 9, 40, 2, 4, 132) == (4, 1, 1)  # 36 rows: one 64-row block; 40 keys: one split
    assert kernel.launch_grid(3, 20, 1040, 1, 8, 132) == (3, 3, 5)  # 160 rows: three blocks; 1040 keys: 5 splits
    assert kernel.launch_grid(3, 20, 1040, 1, 8, 18) == (3, 3, 2)  # 9 programs, 18 wanted: 2 splits each
    assert kernel.launch_grid(1, 1, 10**6, 1, 4, 10**4)[2] == kernel.MAX_SPLITS
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 132) == (64, 1, 3)  # Llama-8B, batch 8: 192 programs for 132 SMs
    assert kernel.scratch_shapes(64) == ((kernel.SCRATCH_ROWS, 64), (kernel.SCRATCH_ROWS,))
    names = list(kernel.signature("fp16"))
    inputs, scalars, outputs = names[:7], names[7:9], names[9:15]
    assert inputs == ["Q", "KNew", "VNew", "KCache", "VCache", "PastLen", "Sync"]  # the TensorRT node's inputs
    assert scalars == ["seq", "capacity"]
    assert outputs == ["Out", "KCacheOut", "VCacheOut", "SyncOut", "Partial", "PartialLse"]
    assert names == list(kernel.pard_attention_fused_kernel.arg_names)
    assert all(kind == "constexpr" for kind in list(kernel.signature("fp16").values())[15:])


def test_launch_grid_rounds_the_splits_down_when_asked():
    kernel = fused()
    config = kernel.FusedConfig(splits_round_down=True)
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 132, config) == (64, 1, 2)  # 128 programs: no partial second wave
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 128, config) == (64, 1, 2)
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 127, config) == (64, 1, 1)
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 20, config) == (64, 1, 1)  # fewer wanted than blocks: one split
    assert kernel.launch_grid(1, 1, 10**6, 1, 4, 10**4, config)[2] == kernel.MAX_SPLITS
    assert kernel.launch_grid(8, 16, 8208, 8, 4, 132, kernel.FusedConfig(programs_per_sm=2)) == (64, 1, 5)


def test_tactics_are_distinct_configs_with_the_defaults_first():
    kernel = fused()
    assert kernel.TACTICS[0] == kernel.DEFAULT_CONFIG == kernel.FusedConfig()
    assert len(set(kernel.TACTICS)) == len(kernel.TACTICS)
    assert [kernel.tactic_config(t) for t in range(1, len(kernel.TACTICS) + 1)] == list(kernel.TACTICS)
    assert kernel.tactic_config(0) == kernel.DEFAULT_CONFIG  # TensorRT's default tactic
    with pytest.raises(ValueError, match=f"tactics 1 to {len(kernel.TACTICS)}, not {len(kernel.TACTICS) + 1}"):
        kernel.tactic_config(len(kernel.TACTICS) + 1)
    from benchmarks.gpu_checks import FUSED_TUNING_CONFIGS  # the GPU run times every tactic

    tuned = [dataclasses.replace(kernel.DEFAULT_CONFIG, **changes) for changes in FUSED_TUNING_CONFIGS]
    assert tuned[: len(kernel.TACTICS)] == list(kernel.TACTICS)


@pytest.mark.parametrize("tactic", range(1, 1 + TACTIC_COUNT))
def test_every_tactic_matches_the_reference_with_split_k(shuffled_programs, tactic):
    """Each kernel variant the plugin offers TensorRT, with short splits so that it splits and merges (programs in
    a random order)."""
    kernel = fused()
    config = dataclasses.replace(kernel.tactic_config(tactic), min_keys_per_split=16)
    inputs = make_inputs(9, 8, 2, 32, dtype=torch.float32, past=(200, 70), device=DEVICE)
    expected = reference.pard_attention(*as_numpy(inputs))
    sync = torch.zeros(kernel.sync_size(2, 9, 2, 4), dtype=torch.int32, device=DEVICE)
    out = kernel.pard_attention_fused(*inputs, config=config, sm_count=64, sync=sync)
    assert error(out.float().cpu().numpy(), expected, torch.float32) <= TOLERANCE[torch.float32]
    assert not sync.any()
    assert kernel.launch_grid(2, 9, inputs[3].shape[2], 2, 4, 64, config)[2] > 1


def test_plugin_attributes_and_outputs_match_the_onnx_node():
    from plugins import pard_attention

    assert tensorrt_plugin.PLUGIN_ID == "pard::PardAttention"
    assert tensorrt_plugin.ALIASED_OUTPUTS == {1: 3, 2: 4, 3: 6}  # the caches and the counters, in place
    names_in = pard_attention.INPUTS + pard_attention.TRT_INPUTS
    names_out = pard_attention.OUTPUTS + pard_attention.TRT_OUTPUTS
    assert [(names_out[o], names_in[i]) for o, i in tensorrt_plugin.ALIASED_OUTPUTS.items()] == [
        ("k_cache_out", "k_cache"),
        ("v_cache_out", "v_cache"),
        ("sync_out", "sync"),
    ]
    assert tuple(tensorrt_plugin.ATTRIBUTES) == pard_attention.INT_ATTRIBUTES
    assert tensorrt_plugin.triton_dtype_name("float16") == "fp16"


def test_register_without_tensorrt_is_a_clear_error():
    """The op package raises ImportError (it knows nothing of pard_export); the build turns that into its one line."""
    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ImportError, match="pard::PardAttention's TensorRT plugin needs TensorRT >= 10.9"):
        tensorrt_plugin.register()
    from pard_export.export.tensorrt_build import _register_plugins

    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        _register_plugins()


_COMPILE = """
import json, subprocess, sys, tempfile
from triton.backends.nvidia.compiler import get_ptxas
from plugins.pard_attention import tensorrt_plugin, triton_fused
results = {}
tactics = range(1, len(triton_fused.TACTICS) + 1)
llama = [(f"sm90 bf16 Llama-8B tactic {t}", "bf16", (32, 8, 128), 90, t) for t in tactics]
for label, dtype, heads, arch, tactic in [("sm89 fp16", "fp16", (8, 2, 64), 89, 1),
                                          ("sm89 bf16", "bf16", (8, 2, 64), 89, 1)] + llama:
    config = triton_fused.tactic_config(tactic)
    name, ptx, meta = tensorrt_plugin.compile_kernel(dtype, *heads, target=(arch, 32), config=config)
    gpu = f"sm_{arch}" + ("a" if arch >= 90 else "")  # Triton's Hopper PTX targets sm_90a
    with tempfile.NamedTemporaryFile("wb", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        done = subprocess.run([get_ptxas(arch).path, f"-arch={gpu}", f.name, "-o", f.name + ".cubin"],
                              capture_output=True, text=True)
    results[label] = dict(name=name.decode(), params=ptx.decode().count(name.decode() + "_param_"), meta=meta,
                          ptxas=done.returncode, ptxas_error=done.stderr[-300:],
                          target=f".target {gpu}" in ptx.decode(),
                          async_copies=ptx.decode().count("cp.async.cg.shared.global"), arch=arch,
                          num_warps=config.num_warps)
print(json.dumps(results))
"""


def test_aot_kernel_compiles_to_ptx_that_ptxas_accepts_without_a_gpu():
    """What aot_impl hands TensorRT, made for SM89 and SM90 (Hopper, Llama-8B heads: every tactic) on this CPU
    machine (triton.compile with an explicit target, in a process without TRITON_INTERPRET): PTX whose entry takes
    exactly the 15 arguments TensorRT's AOT launcher passes (Triton's unused hidden scratch pointers dropped), whose
    K/V loads are pipelined, which fits the GPU's shared memory, and which ptxas assembles."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    done = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shared_limit = {89: 99 * 1024, 90: 227 * 1024}  # opt-in shared memory per block
    for label, result in json.loads(done.stdout.splitlines()[-1]).items():
        assert result["name"] == "pard_attention_fused_kernel" and result["target"], label
        # each parameter declared once and loaded once (ld.param), but Sync: the kernel counts through SyncOut,
        # the same buffer (aliased), so its input pointer is declared and never read
        assert result["params"] == 15 + 14, label
        assert result["ptxas"] == 0, result["ptxas_error"]
        assert result["meta"]["num_warps"] == result["num_warps"], label
        assert result["meta"]["shared"] <= shared_limit[result["arch"]], label
        # pointers declared 16-byte aligned: 16-byte K/V loads that Triton software-pipelines (cp.async); without
        # the hint it emits scalar loads and no pipeline at all
        assert result["async_copies"] > 0, label


SYNTHETIC_PTX = """.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u32 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u64 .ptr .global .align 1 k_param_3
)
{
	ld.param.u64 	%rd1, [k_param_0];
	ld.param.u32 	%r1, [k_param_1];
{body}}
"""


def test_drop_hidden_params_keeps_the_launcher_arguments_only():
    trimmed = tensorrt_plugin.drop_hidden_params(SYNTHETIC_PTX.replace("{body}", ""), "k", 2)
    assert "k_param_1\n)" in trimmed and "k_param_2" not in trimmed and "k_param_3" not in trimmed
    with pytest.raises(ValueError, match="scratch"):  # a kernel that reads a hidden pointer cannot be trimmed
        tensorrt_plugin.drop_hidden_params(
            SYNTHETIC_PTX.replace("{body}", "\tld.param.u64 \t%rd2, [k_param_3];\n"), "k", 2
        )
    with pytest.raises(ValueError, match="expected 5 parameters"):
        tensorrt_plugin.drop_hidden_params(SYNTHETIC_PTX.replace("{body}", ""), "k", 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_aot_ptx_runs_with_exactly_the_arguments_tensorrt_passes():
    """The PTX aot_impl returns, loaded and launched the way TensorRT's AOT launcher does (the CUDA driver API, the
    shared-memory limit raised, the 7 inputs, the two int32 scalars, the 6 outputs; no hidden scratch pointers),
    with split-K."""
    from plugins.pard_attention.aot_launcher import AotKernel

    seq, q_heads, kv_heads, head_dim, past = 5, 8, 2, 64, (0, 700)
    inputs = make_inputs(seq, q_heads, kv_heads, head_dim, dtype=torch.float16, past=past, device="cuda")
    expected = reference.pard_attention(*as_numpy(inputs))
    kernel = AotKernel(*tensorrt_plugin.compile_kernel("fp16", q_heads, kv_heads, head_dim))
    batch, capacity, group = len(past), inputs[3].shape[2], q_heads // kv_heads
    grid = fused().launch_grid(batch, seq, capacity, kv_heads, group, tensorrt_plugin.current_sm_count())
    assert grid[2] > 1  # the launch splits the 700 keys
    sync = torch.zeros(fused().sync_size(batch, seq, kv_heads, group), dtype=torch.int32, device="cuda")
    out = kernel.attention(*inputs, sync=sync)
    torch.cuda.synchronize()
    assert error(out.float().cpu().numpy(), expected, torch.float16) <= TOLERANCE[torch.float16]
    assert not sync.any()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_registration_is_idempotent_with_tensorrt():
    import tensorrt.plugin as trtp

    tensorrt_plugin.register()
    tensorrt_plugin.register()
    assert tensorrt_plugin.PLUGIN_ID in trtp._lib.QDP_REGISTRY
