"""The inplace flavour (KV buffers bound in place with IO binding; TensorScatter or the native kernel) against the
plain flavour: the same logits and drafts (fp32, 1e-4) for prefill, decode, verify and draft calls, alone and in a
batch whose rows accept differently; its caches are bound once per buffer, not allocated per step; its output is
lossless."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models
from pard_export.contract import ATTENTION_KERNELS, DRAFT, DRAFT_IDS, DRAFT_LOGITS, LOGITS, TARGET, cache_capacity
from pard_export.manifest import read_manifest
from pard_export.runtime import Session
from pard_export.runtime.backend_ort import BoundKV, OrtGraph
from pard_export.runtime.cache import BatchCache
from pard_export.runtime.decoding import left_pad
from pard_export.runtime.plugin_cache import PluginCache

K = 3
TOL = 1e-4


@pytest.fixture(scope="module", params=ATTENTION_KERNELS)
def engines(tiny_pair, engine, request):
    """(plain engine, inplace engine) of the same qwen3 pair (qk-norm and grouped heads), for each attention kernel
    of the inplace flavour (its ONNX-op block, the native CachedAttention node)."""
    target, draft = tiny_pair("qwen3")
    inplace = engine(target, draft, K, attention="inplace", max_seq_len=500, attention_kernel=request.param)
    return engine(target, draft, K, attention="plain"), inplace


def _caches(engines, role):
    plain, inplace = engines
    entry, manifest = read_manifest(inplace).models[role], read_manifest(inplace)
    plain_entry = read_manifest(plain).models[role]
    reference = BatchCache(
        OrtGraph(plain / plain_entry.file, plain_entry.io), plain_entry.io, entry.kv_heads, entry.head_dim
    )
    capacity = cache_capacity(manifest.max_seq_len, manifest.k)
    found = PluginCache(OrtGraph(inplace / entry.file, entry.io), entry.io, entry.kv_heads, entry.head_dim, capacity)
    return reference, found


def _rows(rng, lengths):
    return [rng.integers(4, tiny_models.VOCAB, n).tolist() for n in lengths]


def _forward_both(caches, rows, skip=(), prefill=False):
    tokens, valid = left_pad(rows)
    return [cache.forward(tokens, valid, skip, prefill) for cache in caches]


def _assert_close(expected, found, name, rows):
    for b, row in enumerate(rows):  # each row's real positions end it (left-aligned, as the steps read them)
        n = min(len(row), expected[name].shape[1])
        assert np.abs(found[name][b, -n:] - expected[name][b, -n:]).max() <= TOL, (name, b)


@pytest.mark.parametrize("prefill", [True, False])  # how the prompt's call multiplies (contract.PREFILL)
@pytest.mark.parametrize("batch", [1, 2])
def test_target_calls_equal_the_plain_flavour(engines, batch, prefill):
    caches = _caches(engines, TARGET)
    rng = np.random.default_rng(batch)
    for cache in caches:
        cache.start(batch)
    prompts = _rows(rng, [9, 4][:batch])
    _assert_close(*_forward_both(caches, prompts, prefill=prefill), LOGITS, prompts)  # rows of different lengths
    for step, rejected in enumerate(([1, 3], [0, 2], [3, 0])):
        verify = _rows(rng, [K + 1] * batch)
        _assert_close(*_forward_both(caches, verify), LOGITS, verify)
        for cache in caches:
            cache.forget_last(np.array(rejected[:batch]))  # the rows accept differently
        decode = _rows(rng, [1] * batch)
        _assert_close(*_forward_both(caches, decode), LOGITS, decode)


@pytest.mark.parametrize("batch", [1, 2])
def test_draft_calls_equal_the_plain_flavour(engines, batch):
    caches = _caches(engines, DRAFT)
    rng = np.random.default_rng(10 + batch)
    for cache in caches:
        cache.start(batch)
    for lengths in ([7, 3], [1, 4], [K + 1, 2], [2, 2]):  # rows feed the draft different numbers of tokens
        rows = _rows(rng, lengths[:batch])
        expected, found = _forward_both(caches, rows)
        assert np.abs(found[DRAFT_LOGITS] - expected[DRAFT_LOGITS]).max() <= TOL
        assert (found[DRAFT_IDS] == expected[DRAFT_IDS]).all()


def test_a_tokens_step_logits_do_not_depend_on_the_rest_of_the_call(engines):
    """Outside prefill calls each query row is its own product: a token's logits are the same bit for bit decoded
    alone, first of a verify call, or beside another row of a batch (what keeps PARD equal to ar at int8 activations,
    where a low bit can flip a token)."""
    _, found = _caches(engines, TARGET)
    rng = np.random.default_rng(7)
    prompt, other, token, drafts = _rows(rng, [12, 30, 1, K])

    def logits_of(rows):
        found.start(len(rows))
        found.forward(*left_pad([prompt, other][: len(rows)]), prefill=True)
        return found.forward(*left_pad(rows))[LOGITS]

    alone = logits_of([token])[0, -1]
    assert np.array_equal(logits_of([token + drafts])[0, 0], alone)  # verify: the token's logits come first
    assert np.array_equal(logits_of([token, drafts[:1]])[0, -1], alone)


def test_caches_are_bound_once_and_written_in_place(engines, monkeypatch):
    """Every call after the prefill binds the same OrtValues (one allocation per growth, not per step), fetches no
    cache, and the cache's numpy memory is what the graph wrote into."""
    allocations, bound = [], []
    allocate, run = BoundKV._allocate, OrtGraph._run_bound
    monkeypatch.setattr(BoundKV, "_allocate", lambda self, *a: (allocations.append(1), allocate(self, *a))[1])

    def recording_run(self, feeds, skip, kv):
        outputs = run(self, feeds, skip, kv)
        bound.append((self, tuple(id(v) for v in kv.values), tuple(outputs)))
        return outputs

    monkeypatch.setattr(OrtGraph, "_run_bound", recording_run)
    with Session(engines[1]) as session:
        allocations.clear()
        result = session.generate(list(range(5, 25)), max_new_tokens=40, mode="ar")
        target = session._caches[TARGET]
    calls = [(values, names) for graph, values, names in bound if graph is target.graph]
    # the prompt's first 19 tokens go in without logits (decoding.prefill_chunks), then every step's token
    assert len(calls) == result.stats.target_forwards + 1 >= 21
    assert len({values for values, _ in calls}) == 1  # 60 rows fit the first 64: never reallocated
    assert len(allocations) == 2  # start(1), then reserve for the prompt
    assert calls[0][1] == () and all(names == (LOGITS,) for _, names in calls[1:])
    assert np.abs(target.kv._arrays[0][0, :, : 20 + 39]).sum() > 0  # rows written through the bound memory
    assert not target.kv._arrays[0][0, :, 20 + 40 :].any()  # and nothing above the rows it holds


def test_buffers_start_small_and_grow_up_to_the_capacity(engines):
    """Attention reads every buffer row, so a generation's buffers hold what its rows need, in steps of 64 rows and
    by at least an eighth, never more than the engine's capacity."""
    prompt = list(np.random.default_rng(0).integers(4, tiny_models.VOCAB, 450))
    with Session(engines[1]) as session:
        kv = session._caches[TARGET].kv
        rows_seen = []
        for length in (100, 200, 450):
            session.generate(prompt[:length], max_new_tokens=40, mode="pard")
            rows_seen.append(kv.rows)
    # 100: 128 for the prompt, then 144 rounded up once the rows pass 128; 200: 256 for all 243; 450: 512 > capacity
    assert rows_seen == [192, 256, cache_capacity(500, K)]


def test_generation_equals_the_plain_engine_alone_and_in_a_batch(engines, references):
    prompts = [ids for ids, _ in references("qwen3")]
    with Session(engines[0]) as plain, Session(engines[1]) as inplace:
        for mode in ("pard", "ar"):
            expected = [r.token_ids for r in plain.generate_batch(prompts, max_new_tokens=16, mode=mode)]
            assert [r.token_ids for r in inplace.generate_batch(prompts, max_new_tokens=16, mode=mode)] == expected
            assert [inplace.generate(p, max_new_tokens=16, mode=mode).token_ids for p in prompts] == expected
