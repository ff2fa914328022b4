"""The TensorRT adapter: one deserialized plan per graph, with OrtGraph's interface, so Session's loop and stats
stay the same. Imported only when a manifest says backend "tensorrt" (it needs tensorrt and cuda-python).

Written against TensorRT 10's Python API (Runtime.deserialize_cuda_engine, create_execution_context,
set_optimization_profile_async, set_input_shape, set_tensor_address, execute_async_v3) and cuda-python's runtime
bindings. Per graph:
- device buffers, one per IO tensor name, allocated once and grown only when a call needs more (IO binding by
  name: the addresses stay put, which CUDA graphs need);
- one execution context per optimization profile (tensorrt_build: "step" for decode/verify, "prefill"); a call
  runs in the first profile whose shape ranges hold its inputs;
- static KV for the plugin flavour: each kv_cache_out.* output is bound to its kv_cache.* input's buffer (the
  plugin aliases them), so the cache is updated in place; feeding back the array this graph returned last time
  skips its upload;
- optional CUDA graph capture per shape bucket (`capture`: the call lengths S to capture, e.g. {1, k + 1}), replayed
  whenever the same input shapes come again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..contract import GraphSpec
from ..errors import BackendUnavailableError, EngineError
from ..tensorrt_support import require_tensorrt

CUDA_PYTHON_MISSING = "cuda-python is not installed; pip install cuda-python (the tensorrt runtime's device buffers)"

Shapes = Mapping[str, tuple[int, ...]]


def graph_key(shapes: Shapes, capture: Iterable[int] | None, sequence_input: str = "input_ids"):
    """The CUDA graph key of a call (its input shapes, sorted by name), or None when this call is not captured:
    capture disabled, or its S (the second dim of `sequence_input`) is not one of the captured buckets."""
    if not capture or sequence_input not in shapes or shapes[sequence_input][1] not in set(capture):
        return None
    return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))


def pick_profile(ranges: list[Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]], shapes: Shapes) -> int:
    """Index of the first profile whose [min, max] box holds every input shape; EngineError if none does."""
    for index, profile in enumerate(ranges):
        if all(len(shape) == len(profile[name][0]) and all(lo <= d <= hi for d, lo, hi in zip(shape, *profile[name]))
               for name, shape in shapes.items()):
            return index
    summary = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    raise EngineError(f"no optimization profile of this plan takes {summary}; rebuild with a larger --max-batch, "
                      "--prefill-chunk or --max-seq-len")


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


class TrtGraph:
    """A TensorRT plan behind OrtGraph's interface: run(feeds, skip) -> {output name: numpy array}."""

    def __init__(self, path: Path, spec: GraphSpec, *, capture: Iterable[int] | None = None):
        trt = require_tensorrt()
        self._trt, self._cuda = trt, _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT cannot load {path} (built by another TensorRT version or for another GPU?); "
                              "rebuild the engine on this host")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if (sorted(inputs), sorted(set(names) - set(inputs))) != (sorted(t.name for t in spec.inputs),
                                                                 sorted(t.name for t in spec.outputs)):
            raise EngineError(f"{path} does not have the inputs/outputs its manifest declares; rebuild the engine")
        self.input_names, self.output_names = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.kv_dtype = self._dtypes[spec.past_names[0]] if spec.past_names else np.float32
        # plugin flavour: kv_cache_out.* share their kv_cache.* buffers (in place); plain: present.* are new tensors
        in_place = getattr(spec, "attention", "plain") == "plugin"
        self._aliases = dict(zip(spec.present_names, spec.past_names)) if in_place else {}
        self._ranges = [{n: tuple(self.engine.get_tensor_profile_shape(n, p))[0::2] for n in inputs}
                        for p in range(self.engine.num_optimization_profiles)]
        self._stream = _check(self._cuda.cudaStreamCreate())
        self._contexts = []
        for index in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self._stream)
            self._contexts.append(context)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._resident: dict[str, np.ndarray] = {}  # inputs whose device copy equals this host array
        self._capture = set(capture or ())
        self._graphs: dict = {}  # graph_key -> instantiated CUDA graph
        self.busy_s = 0.0

    def run(self, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Outputs by name (`skip` is accepted for OrtGraph's interface; TensorRT computes every output)."""
        start = time.perf_counter()
        shapes = {name: tuple(feeds[name].shape) for name in self.input_names}
        context = self._contexts[pick_profile(self._ranges, shapes)]
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            context.set_input_shape(name, array.shape)
            pointer = self._bind(context, name, array.nbytes)
            if self._resident.get(name) is not feeds[name]:
                self._copy(pointer, array.ctypes.data, array.nbytes, self._cuda.cudaMemcpyKind.cudaMemcpyHostToDevice)
        outputs = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            if name in self._aliases:
                context.set_tensor_address(name, self._buffers[self._aliases[name]][0])
            else:
                self._bind(context, name, outputs[name].nbytes)
        self._execute(context, graph_key(shapes, self._capture))
        for name, array in outputs.items():
            pointer = self._buffers[self._aliases.get(name, name)][0]
            self._copy(array.ctypes.data, pointer, array.nbytes, self._cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        _check(self._cuda.cudaStreamSynchronize(self._stream))
        self._resident = {self._aliases[n]: outputs[n] for n in self._aliases}  # fed back untouched: no upload
        self.busy_s += time.perf_counter() - start
        return outputs

    def close(self) -> None:
        for graph in self._graphs.values():
            self._cuda.cudaGraphExecDestroy(graph)
        for pointer, _ in self._buffers.values():
            self._cuda.cudaFree(pointer)
        self._graphs, self._buffers, self._contexts = {}, {}, []

    def _bind(self, context, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if nbytes > size:  # grow (rarely: sizes only rise); captured graphs hold the old addresses
            if pointer:
                _check(self._cuda.cudaFree(pointer))
            size = max(nbytes, 2 * size, 256)
            pointer = _check(self._cuda.cudaMalloc(size))
            self._buffers[name] = (pointer, size)
            self._resident.pop(name, None)
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
            context.execute_async_v3(self._stream)
            graph = _check(self._cuda.cudaStreamEndCapture(self._stream))
            self._graphs[key] = _check(self._cuda.cudaGraphInstantiate(graph, 0))
            _check(self._cuda.cudaGraphDestroy(graph))
            return  # the first, uncaptured run already computed this call
        _check(self._cuda.cudaGraphLaunch(self._graphs[key], self._stream))

    def _drop_graphs(self) -> None:
        for graph in self._graphs.values():
            self._cuda.cudaGraphExecDestroy(graph)
        self._graphs = {}
