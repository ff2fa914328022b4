"""`pard::PardAttention` as a TensorRT "quickly deployable" Python plugin (`tensorrt.plugin`, TensorRT >= 10.9).

- `register` describes the outputs from the inputs' TensorDescs: out like q, and k_cache_out / v_cache_out
  *aliased* to the k_cache / v_cache inputs (`TensorDesc.aliased()`), so TensorRT hands the plugin one buffer per
  cache and the update is in place (the builder needs PreviewFeature.ALIASED_PLUGIN_IO_10_03). The TensorRT form
  of the node also takes `sync` (split-K counters, int32 zeros; sync_out aliases it) and gives two float32
  scratch outputs, partial and partial_lse (package TRT_INPUTS / TRT_OUTPUTS): an AOT plugin has no workspace,
  so the split-K partials live in outputs nobody reads. pard_export.export.tensorrt_lowering wires them.
- `aot_impl` compiles the one-launch Triton kernel (`triton_fused.py`) to PTX; TensorRT embeds it in the plan, so
  running the plan needs no Python (Triton Inference Server's C++ TensorRT backend, trtexec, CUDA graphs).
- `autotune` offers one type combination (the strongly typed network fixes every dtype; LINEAR, the contiguous
  layout the kernel indexes) and, as custom tactics, the kernel variants `triton_fused.TACTICS` whose shared memory
  the build GPU has: the builder times each at every optimization profile's opt shape and keeps the fastest
  (`aot_impl` compiles the one it asks for).
- `impl` runs the same kernel from Python at every enqueue (JIT): for debugging only. With both present, networks
  are created with NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS (pard_export.export.tensorrt_build).

The ONNX node (schema.py) carries plugin_namespace="pard" and plugin_version="1", which TensorRT's ONNX parser
uses to find this plugin, and the int attributes num_q_heads, num_kv_heads, head_size, which become the plugin's
attributes below. Nothing here imports tensorrt, triton or torch at module import: call `register()` explicitly
(idempotent) before parsing a plugin graph.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the decorated functions' annotations as classes
# (issubclass(annotation, TensorDesc)), which string annotations would break.
import functools

from . import DOMAIN, INT_ATTRIBUTES, OP_TYPE
from .dtypes import triton_dtype_name

PLUGIN_ID = f"{DOMAIN}::{OP_TYPE}"
ATTRIBUTES = INT_ATTRIBUTES  # num_q_heads, num_kv_heads, head_size: typed `int` plugin attributes
ALIASED_OUTPUTS = {1: 3, 2: 4, 3: 6}  # output index -> the input index it aliases (k/v caches, sync counters)
_TRT_TYPE_NAMES = {"*fp16": "FP16", "*bf16": "BF16", "*fp32": "FP32", "*i32": "INT32"}  # AutoTuneCombination's

_registered = False


def io_types(dtype) -> str:
    """AutoTuneCombination's type string for the node's 7 inputs and 6 outputs when q has `dtype`: the kernel's
    pointer arguments (triton_fused.signature), which are the node's inputs then outputs, in TensorRT's names."""
    from . import triton_fused

    kinds = triton_fused.signature(triton_dtype_name(dtype)).values()
    return ",".join(_TRT_TYPE_NAMES[kind] for kind in kinds if kind.startswith("*"))


def compile_kernel(
    dtype_name: str, q_heads: int, kv_heads: int, head_size: int, target: tuple[int, int] | None = None, config=None
):
    """Compile the fused kernel for one node (pointers 16-byte aligned): (kernel name, PTX, metadata dict with
    num_warps and shared bytes).

    target=(compute capability, warp size) compiles for that GPU without one present; None: the current GPU.
    config: a triton_fused.FusedConfig (None: its defaults)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from . import triton_fused

    config = config or triton_fused.DEFAULT_CONFIG
    signature = triton_fused.signature(dtype_name)
    source = triton.compiler.ASTSource(
        fn=triton_fused.pard_attention_fused_kernel,
        signature=signature,
        constexprs=triton_fused.constexprs(q_heads, kv_heads, head_size, dtype_name, config),
        attrs=aligned_pointers(signature),
    )
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if target is None:
        compiled = triton.compile(source, options=options)
    else:
        compiled = triton.compile(source, target=GPUTarget("cuda", target[0], target[1]), options=options)
    meta = {"num_warps": compiled.metadata.num_warps, "shared": compiled.metadata.shared}
    name = compiled.metadata.name
    ptx = drop_hidden_params(compiled.asm["ptx"], name, len(triton_fused.RUNTIME_ARGS))
    return name.encode(), ptx.encode(), meta


@functools.lru_cache(maxsize=None)
def fitting_tactics(dtype_name: str, q_heads: int, kv_heads: int, head_size: int, shared_limit: int) -> tuple[int, ...]:
    """The tactics (1 .. len(TACTICS)) whose kernel for this node needs at most shared_limit bytes of shared memory
    a program; (1,) if none does, so that aot_impl names the problem. Compiled once per process and node kind."""
    from . import triton_fused

    fitting = tuple(
        tactic
        for tactic, config in enumerate(triton_fused.TACTICS, start=1)
        if compile_kernel(dtype_name, q_heads, kv_heads, head_size, config=config)[2]["shared"] <= shared_limit
    )
    return fitting or (1,)


def aligned_pointers(signature: dict[str, str]) -> dict:
    """Triton attrs declaring every pointer argument 16-byte aligned, as Triton's JIT specialises an aligned one.

    TensorRT's I/O addresses are at least 256-byte aligned (IExecutionContext::setTensorAddress); that the tensors
    it allocates between layers are too (at least 16 bytes) is assumed, not documented. Without the hint Triton must
    assume 2-byte alignment: scalar loads that it cannot software-pipeline (no cp.async; num_stages would change
    nothing), where the JIT-launched kernel that benchmarks/gpu_checks.py times gets 16-byte, pipelined loads."""
    pointers = [index for index, kind in enumerate(signature.values()) if kind.startswith("*")]
    return {(index,): [["tt.divisibility", 16]] for index in pointers}


def current_sm_count() -> int:
    """Streaming multiprocessors of the GPU the plan is built on (and, TensorRT plans being per-GPU, runs on)."""
    import triton

    return triton.runtime.driver.active.utils.get_device_properties(0)["multiprocessor_count"]


def current_max_shared_memory() -> int:
    """Bytes of shared memory one program (thread block) may use on the build GPU, opting in beyond 48 KiB."""
    import triton

    return triton.runtime.driver.active.utils.get_device_properties(0)["max_shared_mem"]


def drop_hidden_params(ptx: str, kernel_name: str, count: int) -> str:
    """The PTX with only the kernel's first `count` parameters declared.

    Triton (>= 3.3) appends hidden pointer parameters (global and profile scratch) after the user's arguments, but
    TensorRT's AOT launcher passes exactly inputs + extra scalars + outputs. Parameters the kernel body never
    reads can be dropped so the two agree; one it does read (a kernel that needs scratch memory) cannot, and is
    refused."""
    import re

    declared = re.findall(rf"\.param\s+[^\n]*?\b({re.escape(kernel_name)}_param_(\d+))", ptx)
    extra = [param for param, index in declared if int(index) >= count]
    if len(declared) - len(extra) != count:
        raise ValueError(f"{kernel_name}: expected {count} parameters in its PTX, found {len(declared)}")
    for param in extra:
        if len(re.findall(rf"\b{param}\b", ptx)) != 1:
            raise ValueError(
                f"{kernel_name} reads its hidden parameter {param} (scratch memory), which TensorRT's AOT "
                "launcher does not pass"
            )
        ptx = re.sub(rf",?\s*\.param[^\n,]*\b{param}\b", "", ptx, count=1)
    return ptx


def register() -> None:
    """Register pard::PardAttention with TensorRT's plugin registry (once per process)."""
    global _registered
    if _registered:
        return
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as e:  # PyPI's stub packages raise ImportError or OSError for the missing libraries
        raise ImportError(
            f"{PLUGIN_ID}'s TensorRT plugin needs TensorRT >= 10.9, which does not load here ({e})"
        ) from e
    _define()
    _registered = True


def _define() -> None:
    from typing import List, Tuple, Union

    import tensorrt.plugin as trtp

    from . import triton_fused

    @trtp.register(PLUGIN_ID)
    def pard_attention_desc(
        q: trtp.TensorDesc,
        k_new: trtp.TensorDesc,
        v_new: trtp.TensorDesc,
        k_cache: trtp.TensorDesc,
        v_cache: trtp.TensorDesc,
        past_len: trtp.TensorDesc,
        sync: trtp.TensorDesc,
        num_q_heads: int,
        num_kv_heads: int,
        head_size: int,
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        import tensorrt as trt

        partial, partial_lse = triton_fused.scratch_shapes(head_size)
        return (
            q.like(),
            k_cache.aliased(),
            v_cache.aliased(),
            sync.aliased(),
            trtp.from_shape_expr(partial, dtype=trt.float32),
            trtp.from_shape_expr(partial_lse, dtype=trt.float32),
        )

    @trtp.autotune(PLUGIN_ID)
    def pard_attention_tactics(
        q: trtp.TensorDesc,
        k_new: trtp.TensorDesc,
        v_new: trtp.TensorDesc,
        k_cache: trtp.TensorDesc,
        v_cache: trtp.TensorDesc,
        past_len: trtp.TensorDesc,
        sync: trtp.TensorDesc,
        num_q_heads: int,
        num_kv_heads: int,
        head_size: int,
        outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        tactics = fitting_tactics(
            triton_dtype_name(q.dtype), num_q_heads, num_kv_heads, head_size, current_max_shared_memory()
        )
        return [trtp.AutoTuneCombination(io_types(q.dtype), "LINEAR", list(tactics))]

    @trtp.aot_impl(PLUGIN_ID)
    def pard_attention_aot(
        q: trtp.TensorDesc,
        k_new: trtp.TensorDesc,
        v_new: trtp.TensorDesc,
        k_cache: trtp.TensorDesc,
        v_cache: trtp.TensorDesc,
        past_len: trtp.TensorDesc,
        sync: trtp.TensorDesc,
        num_q_heads: int,
        num_kv_heads: int,
        head_size: int,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        config = triton_fused.tactic_config(tactic)
        name, ptx, meta = compile_kernel(
            triton_dtype_name(q.dtype), num_q_heads, num_kv_heads, head_size, config=config
        )
        limit = current_max_shared_memory()
        if meta["shared"] > limit:  # else every launch in the plan would fail
            raise ValueError(
                f"PardAttention (head size {head_size}) needs {meta['shared']} bytes of shared memory a "
                f"program; this GPU allows {limit}: lower num_stages in triton_fused.TACTICS"
            )
        batch, seq, capacity = q.shape_expr[0], q.shape_expr[1], k_cache.shape_expr[2]
        grid = triton_fused.launch_grid(
            batch,
            seq,
            capacity,
            num_kv_heads,
            num_q_heads // num_kv_heads,
            current_sm_count(),
            config,
            cdiv=trtp.cdiv,
            minimum=trtp.min,
            maximum=trtp.max,
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y, launch.grid_z = grid
        launch.block_x = meta["num_warps"] * 32
        launch.shared_mem = meta["shared"]
        # the kernel's int32 scalars, between the input and the output pointers: S and the cache capacity Smax
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(seq), trtp.SymInt32(capacity)])
        return name, ptx, launch, extra_args

    @trtp.impl(PLUGIN_ID)
    def pard_attention_jit(
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        past_len,
        sync,
        num_q_heads: int,
        num_kv_heads: int,
        head_size: int,
        outputs,
        stream: int,
        tactic: int,
    ) -> None:
        # Debugging only: Python at every enqueue. The caches and counters are aliased, so updates are in place.
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            inputs = [torch.as_tensor(t, device="cuda") for t in (q, k_new, v_new, k_cache, v_cache, past_len, sync)]
            out, _, _, _, partial, partial_lse = (torch.as_tensor(t, device="cuda") for t in outputs)
            triton_fused.pard_attention_fused(
                *inputs[:6],
                config=triton_fused.tactic_config(tactic),
                sync=inputs[6],
                scratch=(partial, partial_lse),
                out=out,
            )
