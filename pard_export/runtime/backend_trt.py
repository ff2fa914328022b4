"""The TensorRT adapter: one deserialized plan per graph, with OrtGraph's interface, so Session's loop and stats
stay the same. Imported only when a manifest says backend "tensorrt" (it needs tensorrt and cuda-python).

Written against TensorRT 10's Python API (Runtime.deserialize_cuda_engine, create_execution_context,
set_optimization_profile_async, set_input_shape, get_tensor_shape, set_tensor_address, execute_async_v3) and
cuda-python's runtime bindings (cudaMalloc, cudaMemsetAsync, cudaMemcpyAsync, stream capture, cudaGraphLaunch).
Per graph:
- IO bound by name (`io_plan`): device buffers, one per uploaded or downloaded tensor, allocated once and grown only
  when a call needs more (the addresses stay put, which CUDA graphs need);
- one execution context per optimization profile (tensorrt_build: "step" for decode/verify, "prefill"); a call
  runs in the first profile whose shape ranges hold its inputs;
- static KV for the plugin flavour (`kv_in_place`): PluginCache takes its store from `kv_store()`, a DeviceKV of
  one buffer [max_batch, Hkv, C, D] per cache, allocated once. Each buffer is bound as its kv_cache.* input and as
  the aliased kv_cache_out.* output (the plugin writes the new rows in place), with batch B = the call's rows, so
  a call uploads only input_ids, position_ids and past_len and downloads only logits / draft_ids / draft_logits
  (less those skipped): no KV crosses PCIe. Rows leaving the batch are moved down on the device, one
  device-to-device cudaMemcpyAsync per moved row and buffer. The plain flavour's past_key_values.* / present.*
  still go up and come down every call (BatchCache: a growing cache, not aliased);
- the plugin flavour's split-K counters (attention_sync, a static int32 [N] the manifest does not list): one device
  buffer per plan, zeroed once (the kernels leave it at zero), bound as attention_sync and attention_sync_out on
  every call, never copied;
- optional CUDA graph capture per shape bucket (`capture`: the call lengths S to capture; Session passes every
  decode, draft and verify length, decoding.step_lengths(k)), replayed whenever the same input shapes come again;
  valid because no bound address changes (the KV buffers never move, and a growing IO buffer drops the captured
  graphs). Several graphs share a context, each replayed after set_input_shape for its shapes, as NVIDIA's
  TensorRT-Edge-LLM EngineExecutor does; that TensorRT keeps no per-shape device state a replay depends on is
  assumed. A replay calls no enqueue, so shape changes reach TensorRT about once per prefill, not every step
  (NVIDIA/TensorRT#4849 reports AOT plugins leaking a CUDA module per change in 11.1 / 11.2.1; unverified here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import ATTENTION_SYNC, ATTENTION_SYNC_OUT, INPUT_IDS, PLUGIN, GraphSpec
from ..errors import BackendUnavailableError, EngineError
from ..tensorrt_support import require_tensorrt
from .plugin_cache import GraphKV

CUDA_PYTHON_MISSING = "cuda-python is not installed; pip install cuda-python (the tensorrt runtime's device buffers)"

Shapes = Mapping[str, tuple[int, ...]]


def graph_key(shapes: Shapes, capture: Iterable[int] | None, sequence_input: str = INPUT_IDS):
    """The CUDA graph key of a call (its input shapes, sorted by name), or None when this call is not captured:
    capture disabled, or its S (the second dim of `sequence_input`) is not one of the captured buckets."""
    if not capture or sequence_input not in shapes or shapes[sequence_input][1] not in set(capture):
        return None
    return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))


@dataclass(frozen=True)
class IOPlan:
    """Where a graph's tensors live. `uploads` go host -> device before every call and `downloads` come back after
    it (less those the caller skips); each `static_kv` pair (kv_cache.*, kv_cache_out.*) is one buffer of the
    graph's DeviceKV, bound as both and never copied."""

    uploads: tuple[str, ...]
    downloads: tuple[str, ...]
    static_kv: tuple[tuple[str, str], ...]


def io_plan(spec: GraphSpec) -> IOPlan:
    """Plugin flavour: the caches stay on the device; plain flavour: they are ordinary inputs and outputs (present.*
    is a new, longer tensor every call)."""
    if spec.attention != PLUGIN:
        return IOPlan(tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs), ())
    kv = set(spec.past_names) | set(spec.present_names)
    return IOPlan(
        tuple(t.name for t in spec.inputs if t.name not in kv),
        tuple(t.name for t in spec.outputs if t.name not in kv),
        tuple(zip(spec.past_names, spec.present_names)),
    )


def pick_profile(ranges: list[Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]], shapes: Shapes) -> int:
    """Index of the first profile whose [min, max] box holds every input shape; EngineError if none does."""
    for index, profile in enumerate(ranges):
        if all(
            len(shape) == len(profile[name][0]) and all(lo <= d <= hi for d, lo, hi in zip(shape, *profile[name]))
            for name, shape in shapes.items()
        ):
            return index
    summary = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    raise EngineError(
        f"no optimization profile of this plan takes {summary}; rebuild with a larger --max-batch, "
        "--prefill-chunk or --max-seq-len"
    )


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailableError(CUDA_PYTHON_MISSING) from e
    return cudart


def _check(result):
    """cuda-python returns (error, *values): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA error {err}; is an NVIDIA GPU visible to this process?")
    return values[0] if len(values) == 1 else values


class DeviceKV(GraphKV):
    """The plugin caches of one plan: a device buffer [max_batch, Hkv, C, D] per kv_cache.* input, allocated (and
    zeroed) once; the plan runs on its first `batch` rows. Moving a row is one device-to-device copy per buffer."""

    def __init__(
        self, cuda, stream, names: Sequence[str], row_shape: tuple[int, int, int], itemsize: int, max_batch: int
    ):
        super().__init__(max_batch, row_shape)
        self._cuda, self._stream = cuda, stream
        self.row_bytes = math.prod(row_shape) * itemsize
        self.pointers: dict[str, int] = {}  # kv_cache.* name -> device pointer
        for name in names:
            self.pointers[name] = _check(cuda.cudaMalloc(max_batch * self.row_bytes))
            _check(cuda.cudaMemsetAsync(self.pointers[name], 0, max_batch * self.row_bytes, stream))

    def address(self, name: str) -> int:
        """Where this store's row 0 of cache `name` is (rows are contiguous: row b starts b * row_bytes in)."""
        return self.pointers[name] + self.first * self.row_bytes

    def move_row(self, source: int, target: int) -> None:
        kind = self._cuda.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for pointer in self.pointers.values():  # rows are contiguous: row b starts b * row_bytes into the buffer
            _check(
                self._cuda.cudaMemcpyAsync(
                    pointer + target * self.row_bytes,
                    pointer + source * self.row_bytes,
                    self.row_bytes,
                    kind,
                    self._stream,
                )
            )

    def free(self) -> None:
        for pointer in self.pointers.values():
            self._cuda.cudaFree(pointer)
        self.pointers = {}


class TrtGraph:
    """A TensorRT plan behind OrtGraph's interface: run(feeds, skip) -> {output name: numpy array}; plugin-flavour
    plans keep their caches on the device (`kv_in_place`, `kv_store`)."""

    def __init__(self, path: Path, spec: GraphSpec, *, capture: Iterable[int] | None = None):
        trt = require_tensorrt()
        self._trt, self._cuda = trt, _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineError(
                f"TensorRT cannot load {path} (built by another TensorRT version or for another GPU?); "
                "rebuild the engine on this host"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = set(names) - set(inputs)
        sync = spec.attention == PLUGIN and ATTENTION_SYNC in inputs and ATTENTION_SYNC_OUT in outputs
        extra_in, extra_out = ([ATTENTION_SYNC], [ATTENTION_SYNC_OUT]) if sync else ([], [])
        if (sorted(inputs), sorted(outputs)) != (
            sorted([t.name for t in spec.inputs] + extra_in),
            sorted([t.name for t in spec.outputs] + extra_out),
        ):
            raise EngineError(f"{path} does not have the inputs/outputs its manifest declares; rebuild the engine")
        self.input_names, self.output_names = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        self.io = io_plan(spec)
        self.kv_in_place = bool(self.io.static_kv)  # PluginCache then takes its store from kv_store()
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.kv_dtype = self._dtypes[spec.past_names[0]] if spec.past_names else np.float32
        self._ranges = [
            {n: tuple(self.engine.get_tensor_profile_shape(n, p))[0::2] for n in inputs if n != ATTENTION_SYNC}
            for p in range(self.engine.num_optimization_profiles)
        ]
        self.max_batch = max(profile[INPUT_IDS][1][0] for profile in self._ranges)
        self._stream = _check(self._cuda.cudaStreamCreate())
        self._contexts = []
        for index in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self._stream)
            self._contexts.append(context)
        self._sync = self._sync_buffer(path) if sync else 0  # device pointer of attention_sync(_out)
        self._buffers: dict[str, tuple[int, int]] = {}  # uploaded/downloaded name -> (device pointer, bytes)
        self.kv: DeviceKV | None = None
        self._capture = set(capture or ())
        self._graphs: dict = {}  # graph_key -> instantiated CUDA graph
        self.busy_s = 0.0

    def _sync_buffer(self, path: Path) -> int:
        """The split-K counters: allocated and zeroed once; the kernels leave them at zero after every call."""
        shape = tuple(self.engine.get_tensor_shape(ATTENTION_SYNC))
        if not shape or min(shape) < 0:
            raise EngineError(f"{path}: {ATTENTION_SYNC} has no static shape ({list(shape)}); rebuild the engine")
        nbytes = math.prod(shape) * self._dtypes[ATTENTION_SYNC].itemsize
        pointer = _check(self._cuda.cudaMalloc(nbytes))
        _check(self._cuda.cudaMemsetAsync(pointer, 0, nbytes, self._stream))
        return pointer

    @property
    def providers(self) -> list[str]:
        return ["TensorRT"]

    def kv_store(self, kv_heads: int, head_dim: int, capacity: int) -> DeviceKV:
        """The static device caches [max_batch, Hkv, C, D] (plugin flavour), allocated on the first call."""
        if not self.kv_in_place:
            raise EngineError(
                "plain-attention plans take their caches as inputs; only plugin plans keep them (kv_store)"
            )
        row_shape = (kv_heads, capacity, head_dim)
        if self.kv is None or self.kv.row_shape != row_shape:
            pick_profile(self._ranges, {past: (1, *row_shape) for past, _ in self.io.static_kv})  # a clear error now
            if self.kv is not None:
                self._drop_graphs()
                self.kv.free()
            past_names = [past for past, _ in self.io.static_kv]
            self.kv = DeviceKV(
                self._cuda, self._stream, past_names, row_shape, self._dtypes[past_names[0]].itemsize, self.max_batch
            )
        return self.kv

    def run(
        self, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = (), kv: DeviceKV | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name, less those in `skip` (TensorRT computes every output; skipped ones stay on the device).
        Plugin flavour: no cache is fed or returned; they stay in kv_store()'s buffers, on the `batch` rows from
        `first` of `kv` (default: kv_store()'s own; a joiner's rows follow them)."""
        start = time.perf_counter()
        kv = kv or self.kv
        hosted = [np.ascontiguousarray(feeds[name], dtype=self._dtypes[name]) for name in self.io.uploads]
        shapes = {name: array.shape for name, array in zip(self.io.uploads, hosted)}
        if self.io.static_kv:
            if kv is None or kv.batch != shapes[INPUT_IDS][0]:
                raise EngineError(
                    f"a plugin plan ran {shapes[INPUT_IDS][0]} rows, but its caches were started for "
                    f"{None if kv is None else kv.batch} (PluginCache starts kv_store())"
                )
            shapes |= {past: (kv.batch, *kv.row_shape) for past, _ in self.io.static_kv}
        context = self._contexts[pick_profile(self._ranges, shapes)]
        to_device = self._cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in zip(self.io.uploads, hosted):
            context.set_input_shape(name, array.shape)
            self._copy(self._bind(context, name, array.nbytes), array.ctypes.data, array.nbytes, to_device)
        for past, present in self.io.static_kv:  # one buffer bound as both: the plugin updates it in place
            context.set_input_shape(past, shapes[past])
            context.set_tensor_address(past, kv.address(past))
            context.set_tensor_address(present, kv.address(past))
        if self._sync:  # the same address every call, so captured graphs stay valid
            context.set_tensor_address(ATTENTION_SYNC, self._sync)
            context.set_tensor_address(ATTENTION_SYNC_OUT, self._sync)
        outputs = {}
        for name in self.io.downloads:  # every output needs an address, skipped or not
            shape = tuple(context.get_tensor_shape(name))
            self._bind(context, name, math.prod(shape) * self._dtypes[name].itemsize)
            if name not in skip:
                outputs[name] = np.empty(shape, dtype=self._dtypes[name])
        # Captured graphs hold the caches' addresses: a joiner's rows (first > 0) run uncaptured.
        self._execute(context, None if kv is not None and kv.first else graph_key(shapes, self._capture))
        to_host = self._cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in outputs.items():
            self._copy(array.ctypes.data, self._buffers[name][0], array.nbytes, to_host)
        _check(self._cuda.cudaStreamSynchronize(self._stream))
        self.busy_s += time.perf_counter() - start
        return outputs

    def close(self) -> None:
        """Free the CUDA graphs, device buffers, caches, counters and stream; drop the contexts and the engine."""
        if self._stream is None:
            return
        self._cuda.cudaStreamSynchronize(self._stream)  # nothing in flight may use what is freed next
        self._drop_graphs()
        for pointer, _ in self._buffers.values():
            self._cuda.cudaFree(pointer)
        if self.kv is not None:
            self.kv.free()
        if self._sync:
            self._cuda.cudaFree(self._sync)
        self._cuda.cudaStreamDestroy(self._stream)
        self._buffers, self._contexts, self.kv, self._sync, self._stream = {}, [], None, 0, None
        self.engine = None

    def _bind(self, context, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if nbytes > size:  # grow (rarely: sizes only rise); captured graphs hold the old addresses
            if pointer:
                _check(self._cuda.cudaFree(pointer))
            size = max(nbytes, 2 * size, 256)
            pointer = _check(self._cuda.cudaMalloc(size))
            self._buffers[name] = (pointer, size)
            self._drop_graphs()
        context.set_tensor_address(name, pointer)
        return pointer

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        if nbytes:
            _check(self._cuda.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def _execute(self, context, key) -> None:
        if key is None:
            if not context.execute_async_v3(self._stream):
                raise EngineError("TensorRT failed to run the plan (its log says why)")
            return
        if key not in self._graphs:
            # TensorRT: run once outside capture so deferred work (shape updates) is done, then capture the same call
            if not context.execute_async_v3(self._stream):
                raise EngineError("TensorRT failed to run the plan (its log says why)")
            mode = self._cuda.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(self._cuda.cudaStreamBeginCapture(self._stream, mode))
            enqueued = context.execute_async_v3(self._stream)
            graph = _check(self._cuda.cudaStreamEndCapture(self._stream))  # end the capture even when that failed
            if not enqueued:
                self._cuda.cudaGraphDestroy(graph)
                raise EngineError("TensorRT failed to enqueue the plan under CUDA graph capture (its log says why)")
            self._graphs[key] = _check(self._cuda.cudaGraphInstantiate(graph, 0))
            _check(self._cuda.cudaGraphDestroy(graph))
            return  # the first, uncaptured run already computed this call
        _check(self._cuda.cudaGraphLaunch(self._graphs[key], self._stream))

    def _drop_graphs(self) -> None:
        for graph in self._graphs.values():
            self._cuda.cudaGraphExecDestroy(graph)
        self._graphs = {}
