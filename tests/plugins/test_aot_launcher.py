"""The ctypes launcher of the AOT PTX (plugins/pard_attention/aot_launcher.py) against a recording fake of libcuda:
what it loads, the shared-memory opt-in, and the exact argument block cuLaunchKernel receives. The real driver runs
it in the `gpu` test of tests/plugins/test_tensorrt_plugin.py."""

from __future__ import annotations

import ctypes

import pytest
import torch

from plugins.pard_attention import aot_launcher


class _FakeCuda:
    """Records the driver calls; every call succeeds unless `fail` names it."""

    def __init__(self, fail: str | None = None):
        self.calls, self.fail, self.launch_params = [], fail, []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args))
            if name == "cuLaunchKernel":  # read the argument block now: the driver copies it during the call
                self.launch_params = [
                    (
                        ctypes.cast(p, ctypes.POINTER(ctypes.c_uint64)).contents.value,
                        ctypes.cast(p, ctypes.POINTER(ctypes.c_int32)).contents.value,
                    )
                    for p in args[9]
                ]
            if name == "cuGetErrorString":
                ctypes.cast(args[1], ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_INVALID_VALUE"
                return 0
            return 1 if name == self.fail else 0

        return call

    def named(self, name):
        return [args for called, args in self.calls if called == name]


def _kernel(monkeypatch, shared, fail=None):
    fake = _FakeCuda(fail)
    monkeypatch.setattr(aot_launcher.ctypes, "CDLL", lambda path: fake if path == "libcuda.so.1" else None)
    return aot_launcher.AotKernel(
        b"pard_attention_fused_kernel", b".version 8.0 // ptx", {"num_warps": 4, "shared": shared}
    ), fake


def test_launch_passes_pointers_then_int32_scalars_then_outputs(monkeypatch):
    kernel, fake = _kernel(monkeypatch, shared=114688)
    assert [args[0:1] for args in fake.named("cuInit")] == [(0,)]
    ((_, ptx),) = fake.named("cuModuleLoadData")
    assert ptx.value == b".version 8.0 // ptx"
    assert fake.named("cuModuleGetFunction")[0][2] == b"pard_attention_fused_kernel"
    ((_, attribute, value),) = fake.named("cuFuncSetAttribute")  # over 48 KiB: the launch must opt in
    assert (attribute, value) == (8, 114688)

    inputs = [torch.zeros(4) for _ in range(7)]
    outputs = [torch.zeros(4) for _ in range(6)]
    kernel((16, 1, 3), inputs, (9, 4104), outputs, stream=1234)
    (args,) = fake.named("cuLaunchKernel")
    assert [a.value for a in args[1:8]] == [16, 1, 3, 128, 1, 1, 114688]  # grid, block (4 warps), shared bytes
    assert args[8].value == 1234 and args[10] is None
    params = fake.launch_params
    assert len(params) == 15
    assert [params[i][0] for i in (*range(7), *range(9, 15))] == [t.data_ptr() for t in inputs + outputs]
    assert [params[i][1] for i in (7, 8)] == [9, 4104]  # S and Smax, as int32


def test_small_kernels_need_no_shared_memory_opt_in(monkeypatch):
    _, fake = _kernel(monkeypatch, shared=48 * 1024)
    assert not fake.named("cuFuncSetAttribute")


def test_a_failing_driver_call_names_itself_and_the_cuda_error(monkeypatch):
    with pytest.raises(RuntimeError, match=r"cuModuleLoadData failed: CUDA error 1 \(CUDA_ERROR_INVALID_VALUE\)"):
        _kernel(monkeypatch, shared=1024, fail="cuModuleLoadData")


def test_attention_launches_the_grid_and_buffers_aot_impl_gives(monkeypatch):
    pytest.importorskip("triton")
    from plugins.pard_attention import tensorrt_plugin, triton_fused

    from .test_pard_attention import make_inputs

    monkeypatch.setattr(tensorrt_plugin, "current_sm_count", lambda: 132)
    kernel, fake = _kernel(monkeypatch, shared=1024)
    inputs = make_inputs(9, 8, 2, 64, past=(0, 700))  # capacity 709 + spare rows
    out = kernel.attention(*inputs, stream=0)
    (args,) = fake.named("cuLaunchKernel")
    capacity = inputs[3].shape[2]
    assert tuple(a.value for a in args[1:4]) == triton_fused.launch_grid(2, 9, capacity, 2, 4, 132)
    pointers = [value for value, _ in fake.launch_params]
    sync = pointers[6]
    assert pointers[:6] == [t.data_ptr() for t in inputs] and pointers[9] == out.data_ptr()
    assert pointers[10:13] == [inputs[3].data_ptr(), inputs[4].data_ptr(), sync]  # caches and counters in place
    assert [low for _, low in fake.launch_params[7:9]] == [9, capacity]
    assert out.shape == inputs[0].shape and out.dtype == inputs[0].dtype


def test_attention_launches_the_grid_of_the_config_the_ptx_was_compiled_with(monkeypatch):
    pytest.importorskip("triton")
    from plugins.pard_attention import tensorrt_plugin, triton_fused

    from .test_pard_attention import make_inputs

    monkeypatch.setattr(tensorrt_plugin, "current_sm_count", lambda: 6)  # 6 programs wanted for 4 blocks
    kernel, fake = _kernel(monkeypatch, shared=1024)
    inputs = make_inputs(9, 8, 2, 64, past=(0, 700))
    kernel.attention(*inputs, stream=0)
    kernel.attention(*inputs, stream=0, config=triton_fused.FusedConfig(splits_round_down=True))
    assert [args[3].value for args in fake.named("cuLaunchKernel")] == [2, 1]  # 2 splits, or 1 rounded down
