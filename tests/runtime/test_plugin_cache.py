"""PluginCache over a fake buffered graph whose KV cache holds each token's id, with either KV store: HostKV (the
caches go in and out of every call) and a GraphKV (the graph owns them, as TensorRT does). Rejecting drafts lowers
lengths only, and the next call overwrites the stale rows; rows leaving the batch take their caches along."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from pard_export.contract import (
    DRAFT_IDS,
    DRAFT_LOGITS,
    INPUT_IDS,
    LOGITS,
    PAST_LEN,
    POSITION_IDS,
    draft_spec,
    target_spec,
)
from pard_export.errors import GenerationError
from pard_export.runtime.decoding import left_pad
from pard_export.runtime.plugin_cache import GraphKV, HostKV, PluginCache, row_moves

HEADS, DIM, VOCAB, CAPACITY, K = 2, 3, 8, 16, 3
OFFSET = 10 * np.arange(HEADS)[:, None, None] + np.arange(DIM)  # [Hkv, 1, D]: tells heads and dims apart
MASK_SLOT = -1.0  # what the fake draft graph writes in its K-1 mask slots


def key_of(ids: np.ndarray) -> np.ndarray:
    """[S] -> [Hkv, S, D]; the value cache holds the negation."""
    return 100 * ids[None, :, None] + OFFSET


class NumpyKV(GraphKV):
    """GraphKV over numpy buffers [max_batch, Hkv, C, D], in past_names order; records its row moves."""

    def __init__(self, max_batch: int, row_shape: tuple[int, int, int], count: int):
        super().__init__(max_batch, row_shape)
        self.buffers = [np.zeros((max_batch, *row_shape), np.float32) for _ in range(count)]
        self.moves: list[tuple[int, int]] = []

    def move_row(self, source: int, target: int) -> None:
        self.moves.append((source, target))
        for buffer in self.buffers:
            buffer[target] = buffer[source]


class TokenKVGraph:
    """A buffered graph without a model that updates its caches as PardAttention does: a call's S tokens land at rows
    past_len[b] .. past_len[b]+S-1 (key_of their ids), the draft graph's K-1 mask slots right after them.
    in_place: it owns its caches (a NumpyKV, on their first B rows); else they come in and go out of every call."""

    kv_dtype = np.float32

    def __init__(self, spec, in_place: bool):
        self.spec, self.kv_in_place = spec, in_place
        self.calls: list[dict[str, list]] = []

    def kv_store(self, kv_heads, head_dim, capacity):
        self.kv = NumpyKV(4, (kv_heads, capacity, head_dim), len(self.spec.past_names))
        return self.kv

    def run(self, feeds, skip=(), kv=None):
        self.calls.append({name: feeds[name].tolist() for name in (INPUT_IDS, POSITION_IDS, PAST_LEN)})
        ids, past = feeds[INPUT_IDS], feeds[PAST_LEN]  # [B, S], [B]
        batch, length = ids.shape
        if self.kv_in_place:
            store = kv or self.kv  # a joiner's rows follow the batch's: from its `first`
            caches = [buffer[store.first : store.first + batch] for buffer in store.buffers]  # views: written in place
        else:
            caches = [feeds[name].copy() for name in self.spec.past_names]
        for cache, sign in zip(caches, (1, -1)):
            for b, start in enumerate(past):
                cache[b, :, start : start + length] = sign * key_of(ids[b])
                cache[b, :, start + length : start + length + self.spec.mask_slots] = MASK_SLOT
        if self.spec.mask_slots:
            outputs = {DRAFT_IDS: np.zeros((batch, K), np.int64), DRAFT_LOGITS: np.zeros((batch, K, VOCAB), np.float32)}
        else:
            outputs = {LOGITS: np.zeros((batch, length, VOCAB), np.float32)}
        return outputs if self.kv_in_place else outputs | dict(zip(self.spec.present_names, caches))


TARGET_SPEC = target_spec(1, HEADS, DIM, VOCAB, attention="plugin")
DRAFT_SPEC = draft_spec(1, HEADS, DIM, VOCAB, K, attention="plugin")


@pytest.fixture(params=["host", "in-place"])
def in_place(request) -> bool:
    return request.param == "in-place"


def new_cache(spec, in_place: bool, batch: int) -> PluginCache:
    cache = PluginCache(TokenKVGraph(spec, in_place), spec, HEADS, DIM, CAPACITY)
    assert isinstance(cache.kv, NumpyKV if in_place else HostKV)
    cache.start(batch)
    return cache


def run(cache: PluginCache, rows: list[list[int]]) -> list[dict[str, list]]:
    """One forward with each row's new tokens, left-padded as the decoding steps feed them; the graph calls it made."""
    made = len(cache.graph.calls)
    cache.forward(*left_pad(rows))
    return cache.graph.calls[made:]


def cached_tokens(cache: PluginCache, row: int) -> list[int]:
    """The ids in the row's KV rows 0 .. lengths[row]-1, read at every head and dim of the key and value caches;
    they must be the tokens the cache says it holds."""
    n = cache.lengths[row]
    key, value = (buffer[row, :, :n] for buffer in cache.kv.buffers)  # [Hkv, n, D]
    ids = (key - OFFSET) / 100
    assert (ids == ids[:1, :, :1]).all() and (value == -key).all()
    assert ids[0, :, 0].tolist() == cache.tokens[row, :n].tolist()
    return ids[0, :, 0].astype(int).tolist()


def test_row_moves_examples():
    assert row_moves(np.array([0, 1, 2])) == []
    assert row_moves(np.array([0, 1, 3])) == [(3, 2)]
    assert row_moves(np.array([2])) == [(2, 0)]
    assert row_moves(np.array([1, 3, 4])) == [(1, 0), (3, 1), (4, 2)]


def test_row_moves_never_overwrite_a_row_still_to_be_copied():
    for kept in (rows for n in range(1, 6) for rows in combinations(range(5), n)):  # every choice of 5 rows
        rows = list(range(5))
        for source, target in row_moves(np.array(kept)):
            rows[target] = rows[source]
        assert rows[: len(kept)] == list(kept), kept


def test_graph_kv_keep_moves_the_kept_rows_down():
    kv = NumpyKV(max_batch=4, row_shape=(1, 2, 1), count=2)
    kv.start(4)
    for buffer in kv.buffers:
        buffer[:] = np.arange(4)[:, None, None, None]
    kv.keep(np.array([0, 2, 3]))
    assert kv.batch == 3 and kv.moves == [(2, 1), (3, 2)]
    assert all(buffer[:3, 0, :, 0].tolist() == [[0, 0], [2, 2], [3, 3]] for buffer in kv.buffers)
    kv.keep(np.array([2]))
    assert kv.batch == 1 and kv.buffers[0][0, 0, :, 0].tolist() == [3, 3]


def test_graph_kv_refuses_a_batch_beyond_its_buffers():
    kv = NumpyKV(max_batch=2, row_shape=(1, 2, 1), count=1)
    with pytest.raises(GenerationError, match="maximum batch of 2"):
        kv.start(3)


def test_host_kv_keep_keeps_the_rows_named_and_feeds_them():
    kv = HostKV(["kv_cache.0.key"], ["kv_cache_out.0.key"], (1, 2, 1), np.float32)
    kv.start(3)
    kv.update({"kv_cache_out.0.key": np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 1, 2, 1))})
    kv.keep(np.array([0, 2]))
    assert kv.feeds()["kv_cache.0.key"][:, 0, :, 0].tolist() == [[0, 0], [2, 2]]


def test_forget_last_lowers_lengths_and_the_next_call_overwrites_the_rejected_rows(in_place):
    cache = new_cache(TARGET_SPEC, in_place, 2)
    run(cache, [[11, 12], [21, 22, 23]])
    run(cache, [[13, 14, 15], [24, 25, 26]])
    cache.forget_last(np.array([2, 1]))  # row 0 keeps draft 13, row 1 keeps 24, 25
    assert cache.lengths.tolist() == [3, 5]
    assert [cached_tokens(cache, 0), cached_tokens(cache, 1)] == [[11, 12, 13], [21, 22, 23, 24, 25]]
    [call] = run(cache, [[16], [27]])
    assert call[PAST_LEN] == [3, 5] and call[POSITION_IDS] == [[3], [5]]
    assert [cached_tokens(cache, 0), cached_tokens(cache, 1)] == [[11, 12, 13, 16], [21, 22, 23, 24, 25, 27]]


def test_a_draft_row_re_fed_after_rejections_gets_its_kept_tokens_again(in_place):
    cache = new_cache(DRAFT_SPEC, in_place, 2)
    run(cache, [[11, 12, 13], [21, 22, 23]])
    run(cache, [[14, 15], [24, 25]])
    cache.forget_last(np.array([2, 0]))  # row 0's 14 and 15 were rejected
    [call] = run(cache, [[16], [26, 27]])  # row 0 has one token fewer: its last kept token, 13, goes in again
    assert call[INPUT_IDS] == [[13, 16], [26, 27]] and call[PAST_LEN] == [2, 5]
    assert call[POSITION_IDS] == [[2, 3], [5, 6]]
    assert [cached_tokens(cache, 0), cached_tokens(cache, 1)] == [[11, 12, 13, 16], [21, 22, 23, 24, 25, 26, 27]]
    assert cache.kv.buffers[0][0, 0, 4 : 4 + K - 1, 0].tolist() == [MASK_SLOT] * (K - 1)  # above the real rows


def test_rows_leaving_the_batch_take_their_caches_and_tokens_along(in_place):
    cache = new_cache(DRAFT_SPEC, in_place, 3)
    run(cache, [[11, 12], [21, 22, 23, 24], [31, 32, 33]])
    cache.compact_if_needed(np.array([0, 2]))
    assert cache.lengths.tolist() == [2, 3]
    assert [cached_tokens(cache, 0), cached_tokens(cache, 1)] == [[11, 12], [31, 32, 33]]
    [call] = run(cache, [[13], [34, 35]])  # row 0 (the first prompt) re-feeds its own last token
    assert call[INPUT_IDS] == [[12, 13], [34, 35]] and call[PAST_LEN] == [1, 3]
    assert [cached_tokens(cache, 0), cached_tokens(cache, 1)] == [[11, 12, 13], [31, 32, 33, 34, 35]]


@pytest.mark.parametrize("keep_rows", [None, np.array([0, 1])])
def test_compact_if_needed_without_departures_changes_nothing(in_place, keep_rows):
    cache = new_cache(TARGET_SPEC, in_place, 2)
    run(cache, [[11, 12], [21, 22, 23]])
    cache.forget_last(np.array([1, 1]))
    buffers, tokens = list(cache.kv.buffers), cache.tokens
    cache.compact_if_needed(keep_rows)
    assert all(a is b for a, b in zip(cache.kv.buffers, buffers)) and cache.tokens is tokens
    assert cache.lengths.tolist() == [1, 2]


def test_rows_prefilled_apart_join_the_batch_after_rows_left_it(in_place):
    """A joiner (fresh rows on the same graph: host buffers of its own, or the graph's buffer rows after the batch's)
    is prefilled while the batch decodes and loses a row; absorbed, every row holds its own tokens, and a step after
    runs all of them."""
    cache = new_cache(TARGET_SPEC, in_place, 2)
    run(cache, [[1, 2], [3, 4, 5]])
    joiner = cache.joiner(2)
    run(joiner, [[7, 8, 9], [10]])
    run(cache, [[11], [12]])
    cache.compact_if_needed(np.array([1]))  # row 0 finished meanwhile
    run(joiner, [[14], [15]])
    cache.absorb(joiner)
    assert [cached_tokens(cache, row) for row in range(3)] == [[3, 4, 5, 12], [7, 8, 9, 14], [10, 15]]
    run(cache, [[16], [17], [18]])
    assert [cached_tokens(cache, row)[-1] for row in range(3)] == [16, 17, 18]
    if in_place:
        assert cache.kv.moves == [(1, 0), (2, 1), (3, 2)] and cache.kv.batch == 3


def test_a_joiner_beyond_the_graphs_rows_is_refused():
    cache = new_cache(TARGET_SPEC, True, 3)
    with pytest.raises(GenerationError, match="maximum batch of 4"):
        cache.joiner(2)
