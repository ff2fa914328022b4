"""The tensorrt runtime adapter: its pure parts here (profile choice, CUDA graph buckets, which tensors cross PCIe,
the clear error without TensorRT, the slim import), and TrtGraph's calls into TensorRT and cuda-python against
recording fakes (what is bound where, what is copied); running plans needs TensorRT and a GPU (`tensorrt`, `gpu`
markers)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import tiny_models
from pard_export.contract import (
    ATTENTION_SYNC,
    ATTENTION_SYNC_OUT,
    BATCH,
    CAPACITY,
    PAST,
    SEQUENCE,
    TOTAL,
    draft_spec,
    target_spec,
)
from pard_export.errors import BackendUnavailableError, EngineError, GenerationError
from pard_export.runtime import Session, backend_trt
from pard_export.runtime.backend_trt import DeviceKV, IOPlan, TrtGraph, graph_key, io_plan, pick_profile
from pard_export.runtime.plugin_cache import PluginCache
from pard_export.tensorrt_support import TENSORRT_MISSING, tensorrt_available

RANGES = [  # (min, max) per input, as TrtGraph reads them from a plan: the "step" then the "prefill" profile
    {"input_ids": ((1, 1), (8, 5)), "attention_mask": ((1, 1), (8, 1024))},
    {"input_ids": ((1, 1), (8, 128)), "attention_mask": ((1, 1), (8, 1024))},
]


def test_pick_profile_takes_the_first_that_holds_the_call():
    assert pick_profile(RANGES, {"input_ids": (2, 5), "attention_mask": (2, 300)}) == 0  # verify
    assert pick_profile(RANGES, {"input_ids": (1, 60), "attention_mask": (1, 60)}) == 1  # prefill
    with pytest.raises(EngineError, match="input_ids \\[9, 1\\].*--max-batch"):
        pick_profile(RANGES, {"input_ids": (9, 1), "attention_mask": (9, 10)})


def test_cuda_graphs_are_keyed_by_shape_and_only_for_captured_lengths():
    decode = {"input_ids": (2, 1), "attention_mask": (2, 40)}
    assert graph_key(decode, {1, 5}) == (("attention_mask", (2, 40)), ("input_ids", (2, 1)))
    assert graph_key(decode, {1, 5}) != graph_key({"input_ids": (2, 1), "attention_mask": (2, 41)}, {1, 5})
    assert graph_key({"input_ids": (1, 60), "attention_mask": (1, 60)}, {1, 5}) is None  # prefill: not captured
    assert graph_key(decode, None) is None and graph_key(decode, ()) is None


def test_plugin_graphs_move_no_kv_per_call():
    spec = draft_spec(2, 2, 16, 300, 4, attention="plugin")
    plan = io_plan(spec)
    assert plan.uploads == ("input_ids", "position_ids", "past_len")
    assert plan.downloads == ("draft_ids", "draft_logits")
    assert plan.static_kv == tuple(
        (f"kv_cache.{i}.{kind}", f"kv_cache_out.{i}.{kind}") for i in range(2) for kind in ("key", "value")
    )
    assert not {n for n in plan.uploads + plan.downloads if n.startswith("kv_cache")}
    plain = target_spec(2, 2, 16, 300)  # its cache grows every call: no static buffers to bind
    assert io_plan(plain) == IOPlan(tuple(t.name for t in plain.inputs), tuple(t.name for t in plain.outputs), ())


class FakeCuda:
    """The cuda-python runtime calls TrtGraph makes, recorded; device pointers are plain integers."""

    cudaMemcpyKind = SimpleNamespace(
        cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H", cudaMemcpyDeviceToDevice="D2D"
    )
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")

    def __init__(self):
        self.copies, self.launches, self.captures, self.memsets, self.capturing = [], [], 0, [], False
        self.allocated, self._next = {}, 1 << 20
        self.streams, self.graph_execs = set(), set()  # alive: created and not yet destroyed

    def cudaMalloc(self, size):
        pointer, self._next = self._next, self._next + size + 4096
        self.allocated[pointer] = size
        return 0, pointer

    def cudaFree(self, pointer):
        del self.allocated[pointer]
        return (0,)

    def cudaStreamCreate(self):
        self.streams.add("stream")
        return 0, "stream"

    def cudaStreamDestroy(self, stream):
        self.streams.remove(stream)
        return (0,)

    def cudaMemsetAsync(self, pointer, value, count, stream):
        self.memsets.append((pointer, count))
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.copies.append((kind, dst, src, count))
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.captures, self.capturing = self.captures + 1, True
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.capturing = False
        return 0, "graph"

    def cudaGraphInstantiate(self, graph, flags):
        self.graph_execs.add(f"exec{self.captures}")
        return 0, f"exec{self.captures}"

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphLaunch(self, graph, stream):
        self.launches.append(graph)
        return (0,)

    def cudaGraphExecDestroy(self, graph):
        self.graph_execs.remove(graph)
        return (0,)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_optimization_profile_async(self, index, stream):
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer
        return True

    def get_tensor_shape(self, name):
        batch, seq = self.shapes["input_ids"]
        capacity = next((shape[2] for n, shape in self.shapes.items() if n.startswith("kv_cache")), 0)
        sizes = {BATCH: batch, SEQUENCE: seq, CAPACITY: capacity, PAST: 3, TOTAL: 3 + seq}  # plain: past 3
        return tuple(sizes.get(d, d) for d in self.engine.dims[name])

    def execute_async_v3(self, stream):
        assert set(self.addresses) >= set(self.engine.dims), "TensorRT needs an address for every IO tensor"
        self.engine.runs.append((dict(self.shapes), dict(self.addresses), self.engine.cuda.capturing))
        return not (self.engine.fail_under_capture and self.engine.cuda.capturing)


class FakeEngine:
    """A plan with `spec`'s IO and two profiles (S <= 5 and S <= 16; batch <= 2; capacity, past, total <= 64);
    `sync` = N adds the plugin plans' static attention_sync int32 [N] input and its attention_sync_out output
    (those of `sync_io` only)."""

    def __init__(self, spec, cuda, sync=0, sync_io=("in", "out")):
        self.cuda = cuda
        self.io = [(t.name, "in") for t in spec.inputs] + [(t.name, "out") for t in spec.outputs]
        self.dims = {t.name: t.dims for t in spec.inputs + spec.outputs}
        self.dtypes = {
            t.name: {"int64": np.int64, "int32": np.int32}.get(t.dtype, np.float32) for t in spec.inputs + spec.outputs
        }
        for name, mode in ((ATTENTION_SYNC, "in"), (ATTENTION_SYNC_OUT, "out")):
            if sync and mode in sync_io:
                self.io.append((name, mode))
                self.dims[name], self.dtypes[name] = (sync,), np.int32
        self.num_io_tensors, self.num_optimization_profiles, self.runs = len(self.io), 2, []
        self.fail_under_capture = False  # execute_async_v3 returns False while the stream is being captured

    def get_tensor_name(self, index):
        return self.io[index][0]

    def get_tensor_mode(self, name):
        return dict(self.io)[name]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        return self.dims[name]

    def get_tensor_profile_shape(self, name, profile):
        assert name != ATTENTION_SYNC, "a static input: it has no profile shapes"
        top = {BATCH: 2, SEQUENCE: (5, 16)[profile]}  # other symbolic dims (capacity, past, total): up to 64
        return [
            tuple(1 if isinstance(d, str) else d for d in self.dims[name]),
            (),
            tuple(top.get(d, 64) if isinstance(d, str) else d for d in self.dims[name]),
        ]

    def create_execution_context(self):
        return FakeContext(self)


@pytest.fixture
def fake_trt_graph(monkeypatch, tmp_path):
    """fake_trt_graph(spec, **options) -> a TrtGraph over FakeEngine(spec, **options), FakeCuda, capturing S in
    {1, 5}."""

    def make(spec, **options):
        cuda = FakeCuda()
        engine = FakeEngine(spec, cuda, **options)
        trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), nptype=lambda dtype: dtype)
        trt.Logger = lambda level: None
        trt.Logger.WARNING = 2
        trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
        monkeypatch.setattr(backend_trt, "require_tensorrt", lambda: trt)
        monkeypatch.setattr(backend_trt, "_cudart", lambda: cuda)
        (tmp_path / "g.plan").write_bytes(b"plan")
        return TrtGraph(tmp_path / "g.plan", spec, capture={1, 5}), engine, cuda

    return make


def test_trt_graph_keeps_plugin_caches_in_static_device_buffers(fake_trt_graph):
    """KV never crosses PCIe: tokens, positions and lengths go up, logits come down; each cache is one buffer bound as
    kv_cache.* and kv_cache_out.* on every call; rows leaving the batch move on the device."""
    spec = target_spec(2, 2, 4, 11, attention="plugin")
    graph, engine, cuda = fake_trt_graph(spec)
    assert graph.kv_in_place and graph.max_batch == 2
    with pytest.raises(EngineError, match=r"kv_cache.0.key \[1, 2, 100, 4\].*--max-seq-len"):
        graph.kv_store(2, 4, 100)  # more cache rows than the plan's profiles take: refused before allocating
    assert cuda.allocated == {}
    cache = PluginCache(graph, spec, kv_heads=2, head_dim=4, capacity=40)
    kv = cache.kv
    assert isinstance(kv, DeviceKV) and kv is graph.kv_store(2, 4, 40)  # allocated once
    assert sorted(kv.pointers) == sorted(spec.past_names) and len(cuda.memsets) == len(spec.past_names)
    assert kv.row_bytes == 2 * 40 * 4 * 4
    with pytest.raises(GenerationError, match="maximum batch of 2"):
        cache.start(3)
    cache.start(2)
    cache.forward(np.array([[5, 6, 7], [0, 8, 9]]), np.array([[1, 1, 1], [0, 1, 1]]))  # prefill: S = 3, not captured
    for _ in range(2):  # decode: S = 1, captured, then replayed
        cache.forward(np.array([[1], [2]]), np.ones((2, 1), dtype=bool))
    assert cuda.captures == 1 and cuda.launches == ["exec1"]
    copies_before = len(cuda.copies)
    cache.compact_if_needed(np.array([1]))  # row 0 finished: row 1 moves down, on the device
    moved = cuda.copies[copies_before:]
    assert sorted(moved) == sorted(("D2D", p, p + kv.row_bytes, kv.row_bytes) for p in kv.pointers.values())
    cache.forward(np.array([[3]]), np.ones((1, 1), dtype=bool))
    assert cuda.graph_execs == {"exec1", "exec2"}

    buffers = {pointer: name for name, (pointer, _) in graph._buffers.items()}
    assert not {name for name in graph._buffers if name.startswith("kv_cache")}
    uploads = [buffers[dst] for kind, dst, _, _ in cuda.copies if kind == "H2D"]
    downloads = [buffers[src] for kind, _, src, _ in cuda.copies if kind == "D2H"]
    assert uploads == ["input_ids", "position_ids", "past_len"] * 4 and downloads == ["logits"] * 4
    # prefill; B = 2 decode run, then captured; its replay (no run); B = 1 decode run, then captured
    assert [captured for *_, captured in engine.runs] == [False, False, True, False, True]
    for shapes, addresses, _ in engine.runs:
        batch = shapes["input_ids"][0]
        for past, present in zip(spec.past_names, spec.present_names):
            assert addresses[past] == addresses[present] == kv.pointers[past]
            assert shapes[past] == (batch, 2, 40, 4)
    graph.close()
    assert cuda.allocated == {} and cuda.graph_execs == set() and cuda.streams == set()
    graph.close()  # a second close does nothing


def test_trt_graph_runs_a_joiner_on_the_buffer_rows_after_the_batch_uncaptured(fake_trt_graph):
    """Rows that join a running batch are prefilled on the same static buffers, at the rows after the batch's (their
    addresses offset; CUDA graphs hold addresses, so those calls are not captured); absorbing them moves nothing
    when no row left meanwhile."""
    spec = target_spec(2, 2, 4, 11, attention="plugin")
    graph, engine, cuda = fake_trt_graph(spec)
    cache = PluginCache(graph, spec, kv_heads=2, head_dim=4, capacity=40)
    cache.start(1)
    cache.forward(np.array([[1]]), np.ones((1, 1), dtype=bool))
    joiner = cache.joiner(1)
    joiner.forward(np.array([[2]]), np.ones((1, 1), dtype=bool))
    kv = cache.kv
    _, addresses, captured = engine.runs[-1]
    assert not captured and all(addresses[past] == kv.pointers[past] + kv.row_bytes for past in spec.past_names)
    copies_before = len(cuda.copies)
    cache.absorb(joiner)
    assert kv.batch == 2 and not [c for c in cuda.copies[copies_before:] if c[0] == "D2D"]
    cache.forward(np.array([[3], [4]]), np.ones((2, 1), dtype=bool))
    _, addresses, _ = engine.runs[-1]
    assert all(addresses[past] == kv.pointers[past] for past in spec.past_names)
    with pytest.raises(GenerationError, match="maximum batch of 2"):
        cache.joiner(1)
    graph.close()


def test_trt_graph_raises_when_the_captured_enqueue_fails(fake_trt_graph):
    """execute_async_v3 under stream capture returning False is an EngineError, with the capture ended and nothing
    instantiated (the stream stays usable)."""
    spec = target_spec(2, 2, 4, 11, attention="plugin")
    graph, engine, cuda = fake_trt_graph(spec)
    cache = PluginCache(graph, spec, kv_heads=2, head_dim=4, capacity=40)
    cache.start(1)
    engine.fail_under_capture = True
    with pytest.raises(EngineError, match="under CUDA graph capture"):
        cache.forward(np.array([[1]]), np.ones((1, 1), dtype=bool))  # S = 1: captured
    assert not cuda.capturing and cuda.graph_execs == set()


def test_trt_graph_refuses_kv_store_on_a_plain_plan(fake_trt_graph):
    graph, _, _ = fake_trt_graph(target_spec(2, 2, 4, 11, attention="plain"))
    with pytest.raises(EngineError, match="only plugin plans keep them"):
        graph.kv_store(2, 4, 40)


def test_trt_graph_binds_one_zeroed_sync_buffer_as_both_sync_tensors(fake_trt_graph):
    """A plugin plan's split-K counters: one buffer of N int32, allocated and zeroed once, bound as attention_sync and
    attention_sync_out on every call (captured ones too), never copied, freed by close()."""
    spec = target_spec(2, 2, 4, 11, attention="plugin")
    graph, engine, cuda = fake_trt_graph(spec, sync=12)
    assert list(cuda.allocated.values()) == [12 * 4] and len(cuda.memsets) == 1
    (sync,) = cuda.allocated
    assert cuda.memsets == [(sync, 12 * 4)]
    assert all(ATTENTION_SYNC not in profile for profile in graph._ranges)  # static: not part of a profile
    cache = PluginCache(graph, spec, kv_heads=2, head_dim=4, capacity=40)
    cache.start(2)
    cache.forward(np.array([[5, 6, 7], [0, 8, 9]]), np.array([[1, 1, 1], [0, 1, 1]]))  # prefill: profile 1
    for _ in range(3):  # decode, profile 0: run, then captured, then replayed twice
        cache.forward(np.array([[1], [2]]), np.ones((2, 1), dtype=bool))
    assert cuda.captures == 1 and cuda.launches == ["exec1", "exec1"]
    assert [captured for *_, captured in engine.runs] == [False, False, True]
    for _, addresses, _ in engine.runs:
        assert addresses[ATTENTION_SYNC] == addresses[ATTENTION_SYNC_OUT] == sync
    assert [pointer for pointer, _ in cuda.memsets].count(sync) == 1  # never zeroed again
    assert sync in cuda.allocated and ATTENTION_SYNC not in graph._buffers
    assert not [copy for copy in cuda.copies if sync in copy[1:3]]  # neither uploaded nor downloaded
    graph.close()
    assert cuda.allocated == {}


@pytest.mark.parametrize("attention, sync_io", [("plugin", ("in",)), ("plugin", ("out",)), ("plain", ("in", "out"))])
def test_trt_graph_refuses_a_plan_with_stray_sync_io(fake_trt_graph, attention, sync_io):
    """attention_sync comes with attention_sync_out, and only in plugin plans (the plain flavour has no
    PardAttention)."""
    spec = target_spec(1, 1, 4, 11, attention=attention)
    with pytest.raises(EngineError, match="inputs/outputs its manifest declares; rebuild the engine"):
        fake_trt_graph(spec, sync=12, sync_io=sync_io)


def test_trt_graph_downloads_only_what_is_not_skipped(fake_trt_graph):
    spec = draft_spec(1, 1, 4, 11, 4, attention="plugin")
    graph, _, cuda = fake_trt_graph(spec)
    cache = PluginCache(graph, spec, kv_heads=1, head_dim=4, capacity=40)
    cache.start(1)
    outputs = cache.forward(np.array([[5, 6]]), np.ones((1, 2), dtype=bool), skip=("draft_logits",))
    assert set(outputs) == {"draft_ids"} and outputs["draft_ids"].shape == (1, 4)
    assert "draft_logits" in graph._buffers  # bound all the same: TensorRT writes every output
    assert [kind for kind, *_ in cuda.copies].count("D2H") == 1


def test_trt_graph_transfers_plain_caches(fake_trt_graph):
    """The plain flavour's caches are ordinary inputs and outputs (BatchCache feeds them back)."""
    spec = target_spec(1, 1, 4, 11)
    graph, _, cuda = fake_trt_graph(spec)
    assert not graph.kv_in_place
    feeds = {
        "input_ids": np.ones((1, 2), np.int64),
        "position_ids": np.ones((1, 2), np.int64),
        "attention_mask": np.ones((1, 5), np.int64),
    }
    feeds |= {name: np.zeros((1, 1, 3, 4), np.float32) for name in spec.past_names}
    outputs = graph.run(feeds)
    assert set(outputs) == {t.name for t in spec.outputs}
    assert [kind for kind, *_ in cuda.copies] == ["H2D"] * len(spec.inputs) + ["D2H"] * len(spec.outputs)


def test_runtime_import_stays_free_of_tensorrt():
    code = (
        "import sys, pard_export.runtime; "
        "print(','.join(m for m in ('tensorrt', 'pard_export.runtime.backend_trt', 'cuda') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_a_tensorrt_engine_without_tensorrt_is_a_clear_error(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    root = shutil.copytree(engine(target, draft, 4), tmp_path / "trt-engine")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailableError, match="^" + re.escape(TENSORRT_MISSING)):
        Session(root)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_trt_graph_matches_onnxruntime_on_the_plain_target(tiny_pair, engine, tmp_path):
    """On a TensorRT host: the plain fp32 target as a plan, run through TrtGraph (with CUDA graphs), against ORT."""
    import onnxruntime as ort

    from pard_export.export import tensorrt_build as tb
    from pard_export.manifest import read_manifest
    from pard_export.runtime.backend_trt import TrtGraph

    target, draft = tiny_pair("llama")
    root = engine(target, draft, 4)
    io = read_manifest(root).models["target"].io
    settings = tb.TrtBuildSettings(k=4, max_batch=2, prefill_chunk=16, max_seq_len=64, opt_past=8)
    tb.build_plan(root / "target.onnx", tmp_path / "target.plan", tb.optimization_profiles(io, settings), settings)
    graph = TrtGraph(tmp_path / "target.plan", io, capture={1, 5})
    reference = ort.InferenceSession(str(root / "target.onnx"))
    rng = np.random.default_rng(0)
    for seq, past in ((3, 0), (5, 7), (5, 7), (1, 20)):  # the repeated verify call replays its CUDA graph
        feeds = {
            "input_ids": rng.integers(0, 300, (2, seq)),
            "position_ids": np.tile(np.arange(past, past + seq), (2, 1)),
            "attention_mask": np.ones((2, past + seq), dtype=np.int64),
        }
        feeds.update({name: rng.standard_normal((2, 2, past, 16)).astype(np.float32) for name in io.past_names})
        found, expected = graph.run(feeds), dict(zip(graph.output_names, reference.run(None, feeds)))
        for name in graph.output_names:
            np.testing.assert_allclose(found[name], expected[name], atol=2e-3, rtol=2e-3)
    graph.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_is_lossless_end_to_end(tiny_pair, tmp_path):
    """On a TensorRT host: `build --backend tensorrt` (plugin graphs, lowered, PardAttention as an AOT plugin), then
    Session: PARD's greedy output equals the same plan's own AR greedy output, alone and as a batch of two."""
    from pard_export.export import build

    target, draft = tiny_pair("llama")
    root = build(
        str(target),
        4,
        draft=str(draft),
        out=tmp_path / "trt",
        backend="tensorrt",
        dtype="float16",
        max_batch=2,
        prefill_chunk=32,
        max_seq_len=128,
        progress=False,
    )
    session = Session(root)
    prompts = list(tiny_models.PROMPTS[:2])
    own = [session.generate(p, max_new_tokens=tiny_models.NEW_TOKENS, mode="ar").token_ids for p in prompts]
    assert [session.generate(p, max_new_tokens=tiny_models.NEW_TOKENS).token_ids for p in prompts] == own
    batch = session.generate(prompts, max_new_tokens=tiny_models.NEW_TOKENS)
    assert [result.token_ids for result in batch] == own
