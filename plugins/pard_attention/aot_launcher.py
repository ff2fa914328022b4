"""Launch the PTX that `tensorrt_plugin.aot_impl` hands TensorRT the way TensorRT's AOT launcher does: the CUDA driver
API (ctypes on libcuda, nothing else), the PTX loaded as it is, the dynamic shared-memory limit raised to what the
kernel asks for, and exactly the arguments TensorRT passes: the 7 input pointers, the int32 scalars S and Smax, the
6 output pointers.

For GPU checks without TensorRT (benchmarks/gpu_checks.py, tests marked `gpu`): it runs, and times, the very kernel
a plan embeds, where the torch-launched `triton_fused.pard_attention_fused` goes through Triton's JIT. Launches go to
torch's current stream, so they can be captured in a CUDA graph like any torch op.
"""

from __future__ import annotations

import ctypes

_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_DEFAULT_SHARED_LIMIT = 48 * 1024  # a launch may use this much dynamic shared memory without opting in


class AotKernel:
    """One compiled PardAttention node: `AotKernel(*tensorrt_plugin.compile_kernel(...))`."""

    def __init__(self, name: bytes, ptx: bytes, meta: dict):
        self._cuda = ctypes.CDLL("libcuda.so.1")
        self._check(self._cuda.cuInit(0), "cuInit")
        self._module, self._function = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self._cuda.cuModuleLoadData(ctypes.byref(self._module), ctypes.c_char_p(ptx)), "cuModuleLoadData")
        self._check(
            self._cuda.cuModuleGetFunction(ctypes.byref(self._function), self._module, name), "cuModuleGetFunction"
        )
        self.threads, self.shared = meta["num_warps"] * 32, meta["shared"]
        if self.shared > _DEFAULT_SHARED_LIMIT:
            self._check(
                self._cuda.cuFuncSetAttribute(self._function, _MAX_DYNAMIC_SHARED_SIZE_BYTES, self.shared),
                "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
            )

    def __call__(self, grid: tuple[int, int, int], inputs, scalars, outputs, stream: int | None = None) -> None:
        """Launch on `stream` (a CUstream handle; None: torch's current stream): inputs and outputs are torch tensors
        (their data pointers are passed), scalars Python ints (passed as int32)."""
        if stream is None:
            import torch

            stream = torch.cuda.current_stream().cuda_stream
        values = [ctypes.c_uint64(t.data_ptr()) for t in inputs]
        values += [ctypes.c_int32(int(s)) for s in scalars]
        values += [ctypes.c_uint64(t.data_ptr()) for t in outputs]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
        stream = ctypes.c_void_p(stream)
        self._check(
            self._cuda.cuLaunchKernel(
                self._function,
                *(ctypes.c_uint(int(g)) for g in grid),
                ctypes.c_uint(self.threads),
                ctypes.c_uint(1),
                ctypes.c_uint(1),
                ctypes.c_uint(self.shared),
                stream,
                params,
                None,
            ),
            "cuLaunchKernel",
        )

    def attention(self, q, k_new, v_new, k_cache, v_cache, past_len, sync=None, stream: int | None = None, config=None):
        """`triton_fused.pard_attention_fused`'s contract (caches updated in place; returns out) through this PTX,
        with the grid aot_impl gives it on this GPU, and counters (sync, or the per-device zeros buffer), scratch
        and out as TensorRT hands them over; launched on `stream` as __call__ is. config: the FusedConfig this PTX
        was compiled with (None: the defaults), for its grid."""
        import torch

        from . import tensorrt_plugin, triton_fused

        batch, seq, q_heads, head_size = q.shape
        kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
        group = q_heads // kv_heads
        if sync is None:
            sync = triton_fused.zeroed_counters(q.device, triton_fused.sync_size(batch, seq, kv_heads, group))
        scratch = triton_fused.new_scratch(head_size, q.device)
        out = torch.empty_like(q)
        config = config or triton_fused.DEFAULT_CONFIG
        grid = triton_fused.launch_grid(
            batch, seq, capacity, kv_heads, group, tensorrt_plugin.current_sm_count(), config
        )
        self(
            grid,
            (q, k_new, v_new, k_cache, v_cache, past_len, sync),
            (seq, capacity),
            (out, k_cache, v_cache, sync, *scratch),
            stream,
        )
        return out

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self._cuda.cuGetErrorString(status, ctypes.byref(text))
            raise RuntimeError(f"{call} failed: CUDA error {status} ({(text.value or b'?').decode()})")
