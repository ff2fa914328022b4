"""The ONNX Runtime adapter: one InferenceSession per graph, created once per Session.

An inplace-flavour graph (contract.py) owns its caches (BoundKV): one OrtValue [B, Hkv, C, D] per kv_cache.* input
(on the device under the CUDA execution provider), bound with IO binding as that input and as its kv_cache_out.*
output, so TensorScatter writes the new rows into the buffer that attention reads. A call binds only input_ids,
position_ids and past_len and fetches only the other outputs: no KV is copied or allocated per step. Attention
reads all C rows, so C starts small and grows (one copy each time, geometrically: amortised) as the rows need.
Graphs of the native attention kernel (contract.py) register the compiled library beside them and run on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import INPLACE, NATIVE_KERNEL_LIBRARY, PLUGIN, GraphSpec
from ..errors import EngineError
from .plugin_cache import row_moves

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_ONLY = ("CPUExecutionProvider",)


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in _PREFERRED_PROVIDERS if p in available]


class OrtGraph:
    def __init__(
        self, path: Path, spec: GraphSpec, *, threads: int | None = None, providers: Sequence[str] | None = None
    ):
        native = native_kernel(path) is not None  # its op runs on the CPU provider only
        providers = list(providers or (CPU_ONLY if native else default_providers()))
        if native and providers[0] != CPU_ONLY[0]:
            raise EngineError(
                f"{path.parent} runs its attention in a CPU kernel (attention_kernel native), not on {providers[0]}; "
                "rebuild it with --attention-kernel onnx to run it there"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Draft and target alternate: a session's threads must stop spinning when its run returns, or they fight
        # the other session's threads for the cores (2 cores: PARD 19.4 -> 32.3 tok/s, ar unchanged).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = inference_session(path, spec, options, providers)
        except ImportError as e:
            raise EngineError(
                f"{path} holds PardAttention nodes, which ONNX Runtime runs through onnxruntime-extensions ({e}); "
                "pip install onnx onnxruntime-extensions"
            ) from e
        except Exception as e:  # onnxruntime's exceptions share no base class
            raise EngineError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}; rebuild the engine") from e
        _check_io(path, self.session, spec)
        self.output_names = [o.name for o in self.session.get_outputs()]
        past = next(i for i in self.session.get_inputs() if i.name in spec.past_names)
        if past.type not in _NUMPY_DTYPES:
            raise EngineError(
                f"{path}: KV cache type {past.type} is not supported by the onnxruntime runtime on this host"
            )
        self.kv_dtype = _NUMPY_DTYPES[past.type]
        self.kv_in_place = spec.attention == INPLACE
        self.max_batch = None
        self._spec, self._kv = spec, None
        self.busy_s = 0.0  # time inside onnxruntime, for measuring the runtime's own overhead

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(
        self, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = (), kv: BoundKV | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name; those in `skip` are left out (ONNX Runtime then skips the nodes only they need). kv: the
        caches an inplace graph updates (default: those kv_store() made)."""
        start = time.perf_counter()
        if self.kv_in_place:
            outputs = self._run_bound(feeds, skip, kv or self._kv)
        else:
            names = [n for n in self.output_names if n not in skip]
            outputs = dict(zip(names, self.session.run(names, feeds)))
        self.busy_s += time.perf_counter() - start
        return outputs

    def kv_store(self, kv_heads: int, head_dim: int, capacity: int) -> BoundKV:
        """The inplace flavour's caches, up to `capacity` rows per sequence."""
        if not self.kv_in_place:
            raise EngineError(
                f"{self._spec.attention}-attention graphs take their caches as inputs; only inplace "
                "graphs keep them (kv_store)"
            )
        self._kv = BoundKV(self._spec.past_names, (kv_heads, head_dim), capacity, self.kv_dtype, self._device())
        return self._kv

    def close(self) -> None:
        """Drop the ONNX Runtime session, its IO bindings and the caches (ONNX Runtime frees them with the last
        reference)."""
        self.session, self._kv = None, None

    def _run_bound(self, feeds: dict[str, np.ndarray], skip: tuple[str, ...], kv: BoundKV | None):
        if kv is None:
            raise EngineError("an inplace graph ran before kv_store() made its caches")
        binding, fetched = self._binding(skip, kv)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in fetched:  # again every call: a bound output keeps its last shape, which S changes
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()  # in binding order: the caches, then the fetched outputs (rebound last)
        values = values[len(values) - len(fetched) :]
        return {name: value.numpy() for name, value in zip(fetched, values)}

    def _binding(self, skip: tuple[str, ...], kv: BoundKV):
        """One IO binding per store and set of fetched outputs, its caches bound once (the same OrtValues every call;
        the store forgets its bindings when it makes new buffers)."""
        if skip not in kv.bindings:
            binding = self.session.io_binding()
            kv_outputs = set(self._spec.present_names)
            fetched = [n for n in self.output_names if n not in skip and n not in kv_outputs]
            for past, present, value in zip(self._spec.past_names, self._spec.present_names, kv.values):
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            kv.bindings[skip] = (binding, fetched)
        return kv.bindings[skip]

    def _device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"


def native_kernel(path: Path) -> Path | None:
    """The compiled CachedAttention library beside a graph: engines of the native attention kernel have one."""
    library = path.parent / NATIVE_KERNEL_LIBRARY
    return library if library.is_file() else None


def inference_session(path: Path, spec: GraphSpec, options: ort.SessionOptions, providers: list[str]):
    """The ONNX Runtime session of one graph, the PardAttention op registered where the graph has it and the native
    attention kernel where its library lies beside it (the one factory: the build's load check uses it too)."""
    library = native_kernel(path)
    if library is not None:
        options.register_custom_ops_library(str(library))
    if spec.attention == PLUGIN:  # the op and the graph pass need onnx and onnxruntime-extensions: plugin engines only
        from plugins.pard_attention.onnxruntime_op import inference_session

        return inference_session(path, options, providers)
    return ort.InferenceSession(str(path), options, providers=providers)


def _check_io(path: Path, session: ort.InferenceSession, spec: GraphSpec) -> None:
    found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    expected = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if found != expected:
        raise EngineError(f"{path} does not have the inputs/outputs its manifest declares; rebuild the engine")


class BoundKV:
    """The caches of one inplace graph (a KVStore): an OrtValue [B, Hkv, C, D] per kv_cache.* input, bound by the
    graph as both that input and its kv_cache_out.* output. C grows with the rows (`reserve`), up to `capacity`.
    On the CPU the buffers hold room for more rows than the batch has (grown by doubling) and the OrtValues wrap
    their first B rows: rows that join are copied in and rows that leave are moved down, the other rows stay put
    (in-flight batching: a join or a leave copies its own rows, not the whole cache)."""

    absorb_copies = True

    def __init__(self, names: Sequence[str], head_shape: tuple[int, int], capacity: int, dtype, device: str):
        self.names, self.head_shape, self.capacity = list(names), head_shape, capacity  # head_shape (Hkv, D)
        self.dtype, self.device = dtype, device
        self.start(1)

    @property
    def rows(self) -> int:
        return self._arrays[0].shape[2]

    def start(self, batch: int) -> None:
        self._allocate([np.zeros((batch, self.head_shape[0], 0, self.head_shape[1]), self.dtype)] * len(self.names))

    def reserve(self, rows: int) -> None:
        """Room for `rows` rows per sequence, grown to a multiple of _GROWTH_ROWS and by at least 1/_GROWTH_SHARE:
        attention reads every row, so rows held beyond the tokens cost every step (at most 1/_GROWTH_SHARE of it),
        while growing copies the cache (every C/_GROWTH_SHARE tokens, C the rows held)."""
        if rows > self.rows:
            self._allocate(self._host_arrays(), self.row_tokens(max(rows, self.rows + self.rows // _GROWTH_SHARE)))

    def row_tokens(self, tokens: int) -> int:
        return min(self.capacity, -(-tokens // _GROWTH_ROWS) * _GROWTH_ROWS)

    def feeds(self) -> dict[str, np.ndarray]:
        return {}

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        pass

    def keep(self, rows: np.ndarray) -> None:
        if self.device != "cpu":
            self._allocate([a[rows] for a in self._host_arrays()])
            return
        for source, target in row_moves(rows):
            for array in self._arrays:
                array[target] = array[source]
        self._wrap(len(rows))

    def joiner(self, batch: int) -> BoundKV:
        store = BoundKV(self.names, self.head_shape, self.capacity, self.dtype, self.device)
        store.start(batch)
        return store

    def absorb(self, other: BoundKV) -> None:
        batch, joined = self.batch + other.batch, other._host_arrays()
        if self.device == "cpu" and other.rows <= self.rows and batch <= len(self._arrays[0]):
            for mine, theirs in zip(self._arrays, joined):
                mine[self.batch : batch, :, : other.rows] = theirs
            self._wrap(batch)
            return
        rows = max(self.rows, other.rows)
        grown = [
            np.concatenate([_with_rows(a, rows), _with_rows(b, rows)]) for a, b in zip(self._host_arrays(), joined)
        ]
        self._allocate(grown, room=2 * batch if self.device == "cpu" else batch)

    def _allocate(self, contents: list[np.ndarray], rows: int | None = None, room: int | None = None) -> None:
        """New buffers holding `contents` (their rows first), `rows` rows each (default: as many as they hold), with
        room for `room` sequences (default: as many as they hold)."""
        batch, heads, held, dim = contents[0].shape
        shape = (max(batch, room or 0), heads, max(held, rows or 0), dim)
        self._arrays = []
        for old in contents:
            new = np.zeros(shape, dtype=self.dtype)  # zeroed pages are only touched once written
            new[:batch, :, :held] = old
            self._arrays.append(new)
        self._wrap(batch)

    def _wrap(self, batch: int) -> None:
        """OrtValues over the buffers' first `batch` sequences. On the CPU an OrtValue wraps the numpy array (the same
        memory; the first rows of a C-contiguous array are contiguous); elsewhere it is a device copy."""
        self.batch = batch
        self.values = [ort.OrtValue.ortvalue_from_numpy(a[:batch], self.device, 0) for a in self._arrays]
        self.bindings: dict = {}  # the graph's IO bindings of these buffers, per set of fetched outputs

    def _host_arrays(self) -> list[np.ndarray]:
        if self.device == "cpu":
            return [a[: self.batch] for a in self._arrays]
        return [v.numpy() for v in self.values]


# SmolLM2 int4, chat prompts: 64 rows instead of 256 decode 4-6 % faster (less masked attention over unused rows)
_GROWTH_ROWS = 64
_GROWTH_SHARE = 8


def _with_rows(cache: np.ndarray, rows: int) -> np.ndarray:
    """cache [B, Hkv, C, D] with C = rows (zero rows added at the end: never read before they are written)."""
    return np.pad(cache, [(0, 0), (0, 0), (0, rows - cache.shape[2]), (0, 0)])
