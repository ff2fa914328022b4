"""BatchCache (plain flavour) over a fake graph whose KV cache holds each token's id: rejected drafts become holes
(mask bits only), compaction right-aligns each row's real tokens and drops the rows that left the batch, and
compact_if_needed compacts only when holes or departed rows make it pay."""

from __future__ import annotations

import numpy as np
import pytest

from pard_export.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, target_spec
from pard_export.runtime.cache import BatchCache
from pard_export.runtime.decoding import left_pad

HEADS, DIM, VOCAB = 2, 3, 8
SPEC = target_spec(layers=1, kv_heads=HEADS, head_dim=DIM, vocab_rows=VOCAB)
OFFSET = 10 * np.arange(HEADS)[:, None, None] + np.arange(DIM)  # [Hkv, 1, D]: tells heads and dims apart


class TokenKVGraph:
    """A plain-flavour graph without a model: present = past + one column per input token, its key
    100 * id + OFFSET and its value the negation (so a gather that mixed rows, heads, dims or tensors shows)."""

    kv_dtype = np.float32

    def __init__(self):
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds, skip=(), kv=None):
        self.feeds.append(feeds)
        ids = feeds[INPUT_IDS]  # [B, S]
        new = (100 * ids[:, None, :, None] + OFFSET).astype(self.kv_dtype)  # [B, Hkv, S, D]
        past_key, past_value = (feeds[name] for name in SPEC.past_names)
        present_key, present_value = SPEC.present_names
        return {
            LOGITS: np.zeros((*ids.shape, VOCAB), np.float32),
            present_key: np.concatenate([past_key, new], axis=2),
            present_value: np.concatenate([past_value, -new], axis=2),
        }


def new_cache(batch: int) -> BatchCache:
    cache = BatchCache(TokenKVGraph(), SPEC, HEADS, DIM)
    cache.start(batch)
    return cache


def real_tokens(cache: BatchCache, row: int) -> list[int]:
    """The ids in the row's real (unmasked) columns, read off its key and value caches at every head and dim."""
    key, value = (t[row][:, np.flatnonzero(cache.mask[row])] for t in cache.kv)  # [Hkv, n, D]
    ids = (key - OFFSET) / 100
    assert (ids == ids[:1, :, :1]).all() and (value == -key).all()
    return ids[0, :, 0].astype(int).tolist()


def run(cache: BatchCache, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """One call with each row's new tokens, left-padded as the decoding steps feed them; returns its feeds."""
    cache.forward(*left_pad(rows))
    return cache.graph.feeds[-1]


def with_rejected_drafts() -> BatchCache:
    """Two rows: prompts of 2 and 3 tokens, then a verify call of 3 tokens each whose last 2 and last 1 are rejected."""
    cache = new_cache(2)
    run(cache, [[11, 12], [21, 22, 23]])
    run(cache, [[13, 14, 15], [24, 25, 26]])
    cache.forget_last(np.array([2, 1]))
    return cache


def test_forget_last_turns_rejected_drafts_into_holes_and_rewinds_positions():
    cache = with_rejected_drafts()
    assert cache.mask.tolist() == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert [real_tokens(cache, 0), real_tokens(cache, 1)] == [[11, 12, 13], [21, 22, 23, 24, 25]]
    assert cache.lengths.tolist() == [3, 5]
    fed = run(cache, [[16], [26]])
    assert fed[POSITION_IDS].tolist() == [[3], [5]]  # the next tokens take the rejected drafts' positions
    assert fed[ATTENTION_MASK].tolist() == [[0, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 0, 1]]


def test_forget_last_moves_no_kv():
    cache = new_cache(1)
    run(cache, [[11, 12, 13]])
    kv = [t.copy() for t in cache.kv]
    cache.forget_last(np.array([2]))
    assert all(np.array_equal(before, after) for before, after in zip(kv, cache.kv))


def test_compact_right_aligns_each_rows_real_tokens():
    cache = with_rejected_drafts()
    cache.compact(np.arange(2))
    assert cache.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert [real_tokens(cache, 0), real_tokens(cache, 1)] == [[11, 12, 13], [21, 22, 23, 24, 25]]
    assert cache.lengths.tolist() == [3, 5]
    fed = run(cache, [[16], [26]])
    assert fed[POSITION_IDS].tolist() == [[3], [5]]
    assert [real_tokens(cache, 0), real_tokens(cache, 1)] == [[11, 12, 13, 16], [21, 22, 23, 24, 25, 26]]


def test_compact_keeps_only_the_rows_that_stay():
    cache = new_cache(3)
    run(cache, [[11, 12], [21, 22, 23, 24, 25, 26], [31, 32, 33]])
    run(cache, [[13, 14], [27, 28], [34, 35]])
    cache.forget_last(np.array([1, 0, 2]))
    cache.compact(np.array([0, 2]))  # the longest row leaves: the cache narrows to the longest that stays
    assert cache.mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert [real_tokens(cache, 0), real_tokens(cache, 1)] == [[11, 12, 13], [31, 32, 33]]
    assert cache.lengths.tolist() == [3, 3]
    assert cache.kv[0].shape == (2, HEADS, 3, DIM)


def test_compact_if_needed_drops_the_rows_that_left_even_without_holes():
    cache = new_cache(2)
    run(cache, [[11, 12, 13], [21, 22]])
    cache.compact_if_needed(np.array([1]))
    assert cache.mask.tolist() == [[1, 1]] and real_tokens(cache, 0) == [21, 22] and cache.lengths.tolist() == [2]


@pytest.mark.parametrize("keep_rows", [None, np.array([0, 1])])
def test_compact_if_needed_leaves_a_cache_with_few_holes_alone(keep_rows):
    cache = with_rejected_drafts()
    kv, mask = cache.kv, cache.mask.copy()
    cache.compact_if_needed(keep_rows)
    assert cache.kv is kv and np.array_equal(cache.mask, mask)


@pytest.mark.parametrize(
    "width,rejected,compacts", [(80, 64, False), (80, 65, True), (400, 100, False), (400, 101, True)]
)
def test_compact_if_needed_closes_holes_past_64_columns_and_a_quarter_of_the_cache(width, rejected, compacts):
    cache = new_cache(1)
    run(cache, [list(range(width))])
    cache.forget_last(np.array([rejected]))
    cache.compact_if_needed(np.array([0]))
    assert cache.mask.shape[1] == (width - rejected if compacts else width)
    assert real_tokens(cache, 0) == list(range(width - rejected))


def test_unequal_prompts_are_not_compacted_at_every_step():
    cache = new_cache(2)
    run(cache, [[1] * 200, [2] * 10])
    compactions = 0
    for _ in range(5):
        run(cache, [[3], [4]])
        kv = cache.kv
        cache.compact_if_needed(np.arange(2))
        compactions += cache.kv is not kv
    assert compactions <= 1
