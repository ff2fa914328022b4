"""Session on plugin-attention engines (PardAttention over preallocated KV buffers, on ONNX Runtime through the
onnxruntime-extensions op): greedy output == the target's own greedy decoding, token for token, alone and in a
batch whose rows accept different numbers of drafts. Each Session test runs with both KV stores: HostKV (what ONNX
Runtime needs) and, through InPlaceGraph, the graph-owned store TensorRT uses (static buffers updated in place)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

import tiny_models
from pard_export.contract import INPUT_IDS, draft_spec, target_spec
from pard_export.errors import EngineError, GenerationError
from pard_export.runtime import Session
from pard_export.runtime.decoding import step_lengths
from pard_export.runtime.plugin_cache import GraphKV, HostKV, PluginCache, row_moves

pytest.importorskip("onnxruntime_extensions")

NEW_TOKENS = tiny_models.NEW_TOKENS
K = 4


@pytest.fixture(scope="module")
def near_copy_draft(tmp_path_factory):
    """The llama target's weights plus a little noise: its drafts are right about half the time, so the rows of a
    batch accept different numbers of drafts at the same step (and then feed the draft different numbers of tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = tiny_models.make_model(
        tmp_path_factory.mktemp("near-copy") / "d", "llama", tiny_models.TARGET_SIZE, seed=0
    )
    model = AutoModelForCausalLM.from_pretrained(directory)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.01)
    model.save_pretrained(directory)
    return directory


class NumpyKV(GraphKV):
    """GraphKV over numpy buffers [max_batch, Hkv, C, D]; the rows past the batch are NaN (never written yet, or
    left the batch), so a call that reads one gives NaN logits. Records its row moves."""

    def __init__(self, names, row_shape, dtype, max_batch):
        super().__init__(max_batch, row_shape)
        self.buffers = {name: np.full((max_batch, *row_shape), np.nan, dtype=dtype) for name in names}
        self.moves = []

    def move_row(self, source, target):
        self.moves.append((source, target))
        for buffer in self.buffers.values():
            buffer[target] = buffer[source]

    def keep(self, rows):
        super().keep(rows)
        for buffer in self.buffers.values():
            buffer[self.batch :] = np.nan


class InPlaceGraph:
    """An ONNX Runtime plugin graph behaving like TrtGraph: it owns its caches (a NumpyKV), runs on their first B
    rows and copies the kv_cache_out outputs back into them (TensorRT aliases them). The caller feeds no KV."""

    kv_in_place = True

    def __init__(self, graph, spec, max_batch):
        self.graph, self.spec, self.max_batch, self.kv_dtype = graph, spec, max_batch, graph.kv_dtype
        self.kv = None

    @property
    def busy_s(self):
        return self.graph.busy_s

    @property
    def providers(self):
        return ["InPlaceTestDouble"]

    def close(self):
        self.graph.close()

    def kv_store(self, kv_heads, head_dim, capacity):
        self.kv = NumpyKV(self.spec.past_names, (kv_heads, capacity, head_dim), self.kv_dtype, self.max_batch)
        return self.kv

    def run(self, feeds, skip=(), kv=None):
        assert not set(feeds) & set(self.spec.past_names), "the caller fed KV to an in-place graph"
        batch = len(feeds["past_len"])
        assert batch == self.kv.batch
        views = {name: buffer[:batch] for name, buffer in self.kv.buffers.items()}
        outputs = self.graph.run(feeds | views, skip)
        for past, present in zip(self.spec.past_names, self.spec.present_names):
            views[past][...] = outputs.pop(present)
        return outputs


def keep_kv_in_graphs(session, max_batch=3):
    for role, cache in session._caches.items():
        entry = session.manifest.models[role]
        graph = InPlaceGraph(cache.graph, entry.io, max_batch)
        session._caches[role] = PluginCache(graph, entry.io, entry.kv_heads, entry.head_dim, cache.capacity)


@pytest.fixture(scope="module", params=["host", "in-place"])
def session(request, tiny_pair, engine, near_copy_draft):
    target, _ = tiny_pair("llama")
    with Session(engine(target, near_copy_draft, K, attention="plugin", max_seq_len=96, with_ar_draft=True)) as s:
        if request.param == "in-place":
            keep_kv_in_graphs(s)
        yield s


@pytest.fixture(scope="module")
def plain_session(tiny_pair, engine, near_copy_draft):
    """The same pair with plain attention: its drafts must be the plugin engine's."""
    target, _ = tiny_pair("llama")
    with Session(engine(target, near_copy_draft, K, max_seq_len=96, attention="plain")) as s:
        yield s


def test_plugin_engine_uses_preallocated_buffers(session):
    assert session.manifest.attention == "plugin"
    assert all(isinstance(cache, PluginCache) for cache in session._caches.values())
    for cache in session._caches.values():  # the store the graph asks for
        assert isinstance(cache.kv, NumpyKV if getattr(cache.graph, "kv_in_place", False) else HostKV)


@pytest.mark.parametrize("mode", ["pard", "pard-fixed", "ar", "ar-draft"])
def test_each_prompt_equals_target_greedy(session, references, mode):
    for prompt_ids, expected in references("llama"):
        result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode=mode)
        assert result.token_ids == expected, mode
        if mode == "pard-fixed":
            assert result.stats.mean_accepted_tokens > 1.0  # drafts were accepted, so lengths were lowered and kept


@pytest.mark.parametrize("rows", [(0, 1), (1, 2), (0, 2)])
def test_a_batch_of_two_equals_target_greedy_with_different_acceptance(
    session, plain_session, references, rows, monkeypatch
):
    draft = session._caches["draft"]
    new_per_row = []  # the draft's new tokens per row, call by call: they differ where the rows accepted differently
    forward = draft.forward

    def counting(tokens, valid, **kwargs):
        new_per_row.append(valid.sum(1).tolist())
        return forward(tokens, valid, **kwargs)

    monkeypatch.setattr(draft, "forward", counting)
    cases = [references("llama")[i] for i in rows]  # prompts of different lengths
    results = session.generate_batch([ids for ids, _ in cases], max_new_tokens=NEW_TOKENS, mode="pard-fixed")
    assert [r.token_ids for r in results] == [expected for _, expected in cases]
    assert any(len(set(counts)) > 1 for counts in new_per_row[1:])  # after the prompts: different acceptance
    # Lossless output alone would not notice wrong drafts (they are just rejected): the drafts, as their
    # acceptance shows, must be the plain engine's too.
    plain = plain_session.generate_batch([ids for ids, _ in cases], max_new_tokens=NEW_TOKENS, mode="pard-fixed")
    assert [r.stats.per_position_accepted for r in results] == [r.stats.per_position_accepted for r in plain]


def test_a_batch_of_three_whose_rows_finish_at_different_steps(session, references):
    cases = references("llama")
    results = session.generate_batch([ids for ids, _ in cases], max_new_tokens=NEW_TOKENS, mode="pard-fixed")
    assert [r.token_ids for r in results] == [expected for _, expected in cases]
    assert len({r.stats.target_forwards for r in results}) > 1  # rows left the batch at different steps


def test_rows_leaving_the_batch_take_their_caches_along(session, references):
    """Rows finish in the order 0, 1, 2 (per-row limits): the survivors move down twice, so a store that dropped,
    kept or mixed the wrong rows would change their tokens (or, reading a row that left, make them NaN)."""
    cases = references("llama")
    limits = [5, NEW_TOKENS // 2, NEW_TOKENS]
    results = session.generate_batch([ids for ids, _ in cases], max_new_tokens=limits, mode="pard-fixed")
    assert [r.token_ids for r in results] == [expected[:n] for (_, expected), n in zip(cases, limits)]
    for role in ("target", "draft"):  # the two graphs of pard mode
        kv = session._caches[role].kv
        if isinstance(kv, NumpyKV):
            assert kv.moves[-3:] == [(1, 0), (2, 1), (1, 0)]  # 3 rows -> rows 1, 2 -> row 2


def test_graph_kv_moves_rows_down_in_place():
    kv = NumpyKV(["kv_cache.0.key"], (1, 2, 1), np.float32, max_batch=4)
    kv.start(4)
    kv.buffers["kv_cache.0.key"][:] = np.arange(4)[:, None, None, None]
    kv.keep(np.array([0, 2, 3]))
    kv.keep(np.array([1, 2]))
    assert kv.batch == 2 and kv.feeds() == {}
    assert kv.buffers["kv_cache.0.key"][:2, 0, :, 0].tolist() == [[2, 2], [3, 3]]
    assert np.isnan(kv.buffers["kv_cache.0.key"][2:]).all()
    assert row_moves(np.array([0, 1, 3])) == [(3, 2)] and row_moves(np.array([2])) == [(2, 0)]
    with pytest.raises(GenerationError, match="maximum batch of 4"):
        kv.start(5)


def test_an_in_place_graph_gets_no_kv_from_plugin_cache():
    """PluginCache takes its store from an in-place graph and then feeds it tokens, positions and lengths only."""
    fed = []

    class Graph:
        kv_in_place, kv_dtype = True, np.float32

        def kv_store(self, kv_heads, head_dim, capacity):
            self.kv = NumpyKV(spec.past_names, (kv_heads, capacity, head_dim), np.float32, max_batch=2)
            return self.kv

        def run(self, feeds, skip=(), kv=None):
            fed.append(sorted(feeds))
            return {"logits": np.zeros((*feeds["input_ids"].shape, 10), np.float32)}

    spec = target_spec(2, 1, 2, 10, attention="plugin")
    graph = Graph()
    cache = PluginCache(graph, spec, 1, 2, capacity=32)
    assert cache.kv is graph.kv
    cache.start(2)
    cache.forward(np.array([[5, 6], [0, 7]]), np.array([[1, 1], [0, 1]]))
    cache.compact_if_needed(np.array([1]))
    assert graph.kv.batch == 1 and graph.kv.moves == [(1, 0)] and cache.lengths.tolist() == [1]
    assert fed == [["input_ids", "past_len", "position_ids"]]


def test_draft_cache_refeeds_shorter_rows():
    """Rows with fewer new tokens get their last cached tokens again, from a lower past_len (no right padding
    before the mask slots); rows without enough cached tokens go in two calls."""
    calls = []

    class Graph:
        kv_dtype, kv_in_place = np.float32, False

        def run(self, feeds, skip=(), kv=None):
            calls.append({name: feeds[name].copy() for name in ("input_ids", "position_ids", "past_len")})
            return {
                "draft_ids": np.zeros((len(feeds["past_len"]), K), np.int64),
                "kv_cache_out.0.key": feeds["kv_cache.0.key"],
                "kv_cache_out.0.value": feeds["kv_cache.0.value"],
            }

    cache = PluginCache(Graph(), draft_spec(1, 1, 2, 10, K, attention="plugin"), 1, 2, capacity=32)
    cache.start(2)
    cache.forward(np.array([[5, 6, 7], [0, 0, 8]]), np.array([[1, 1, 1], [0, 0, 1]]))  # prefill: lengths 0 -> split
    assert [c["input_ids"].tolist() for c in calls] == [[[5, 6], [0, 0]], [[7], [8]]]
    assert [c["past_len"].tolist() for c in calls] == [[0, 0], [2, 0]]
    cache.forward(np.array([[0, 9], [3, 4]]), np.array([[0, 1], [1, 1]]))  # row 0 re-feeds its last token, 7
    assert calls[-1]["input_ids"].tolist() == [[7, 9], [3, 4]]
    assert calls[-1]["past_len"].tolist() == [2, 1] and calls[-1]["position_ids"].tolist() == [[2, 3], [1, 2]]
    assert cache.lengths.tolist() == [4, 3]
    cache.forget_last(np.array([1, 0]))
    assert cache.lengths.tolist() == [3, 3]


def test_float16_plugin_engine_is_refused_before_onnx_runtime_runs_it(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    copy = shutil.copytree(engine(target, draft, K, attention="plugin", max_seq_len=96), tmp_path / "e")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | {"dtype": "float16"}))
    with pytest.raises(EngineError, match="float32 only"):
        Session(copy)


def test_an_old_manifest_without_attention_loads_as_plain(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    copy = shutil.copytree(engine(target, draft, K, attention="plain"), tmp_path / "e")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest.pop("attention") == "plain"
    for model in manifest["models"].values():
        assert model["io"].pop("attention") == "plain"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with Session(copy) as s:
        assert s.manifest.attention == "plain"
        assert s.generate([5, 6, 7], max_new_tokens=3).token_ids


def test_every_call_after_the_prefill_has_a_length_the_tensorrt_backend_captures(session, references, monkeypatch):
    """The tensorrt backend captures a CUDA graph for each of step_lengths(k): every decode, draft and verify call
    must have one of those lengths, so that only the prefill goes through TensorRT's enqueue."""
    calls = {role: [] for role in session._caches}
    for role, cache in session._caches.items():

        def run(feeds, skip=(), kv=None, _run=cache.graph.run, _calls=calls[role]):
            _calls.append(feeds[INPUT_IDS].shape[1])
            return _run(feeds, skip, kv=kv)

        monkeypatch.setattr(cache.graph, "run", run)
    # Adaptive pard is left out: after ar steps the draft reads the tokens it missed in one call of up to 9 tokens,
    # which TensorRT runs without a captured graph.
    for mode in ("pard-fixed", "ar", "ar-draft"):
        for prompt_ids, _ in references("llama"):
            for lengths in calls.values():
                lengths.clear()
            session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode=mode)
            steps = [s for lengths in calls.values() for s in lengths[1:]]  # the first call of each graph: prefill
            assert steps and set(steps) <= set(step_lengths(K)), (mode, calls)


def test_a_tensorrt_engine_captures_every_step_length(session, monkeypatch):
    """What Session hands TrtGraph: capture = step_lengths(k), the lengths the test above sees."""
    from pard_export.runtime import backend_trt

    class Built(Exception):
        pass

    def trt_graph(path, spec, *, capture=None):
        raise Built(list(capture))

    monkeypatch.setattr(backend_trt, "TrtGraph", trt_graph)
    monkeypatch.setattr(session, "manifest", dataclasses.replace(session.manifest, backend="tensorrt"))
    with pytest.raises(Built) as built:
        session._cache("target", None, None)
    assert built.value.args[0] == list(step_lengths(K))
