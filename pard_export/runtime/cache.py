"""A graph and its KV cache for B rows of different lengths.

The cache is the graph's last `present` output, fed back untouched as `past` (contiguous arrays: onnxruntime
binds them without a copy). Rows differ in length and acceptance, so some cache columns are holes
(attention_mask 0): the left padding of shorter prompts and drafts the target rejected. Rejecting a draft
only clears mask bits; no KV moves. When the columns that compaction would free (the cache's width less its
longest row's real tokens: the padding a shorter row needs stays) pass max(64, a quarter of the cache),
`compact` gathers each row's real tokens once, right-aligned: the copy is amortised over many steps, and the
attention over at most that many masked columns costs little. Rows that leave the batch are dropped with one take
per tensor (and the columns on the left that only they used).
"""

from __future__ import annotations

import numpy as np

from ..contract import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, GraphSpec
from .interfaces import Graph

_MAX_HOLE_FRACTION = 0.25
_MIN_HOLE_SLACK = 64


class BatchCache:
    absorb_copies = True  # absorb() copies the other cache's rows and leaves them as they were

    def __init__(self, graph: Graph, spec: GraphSpec, kv_heads: int, head_dim: int):
        self.graph, self.spec = graph, spec
        self.past_names, self.present_names = spec.past_names, spec.present_names
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.start(1)

    def start(self, batch: int) -> None:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.graph.kv_dtype)
        self.kv = [empty] * len(self.past_names)  # each [B, Hkv, T, D]
        self.mask = np.zeros((batch, 0), dtype=np.int64)  # [B, T]: 1 = a real token
        self.lengths = np.zeros(batch, dtype=np.int64)  # real tokens per row = the next position

    def row_bytes(self, tokens: int) -> int:
        return tokens * kv_bytes_per_token(self.graph, self.spec, self.kv_heads, self.head_dim)

    def joiner(self, batch: int) -> BatchCache:
        """`batch` empty rows on the same graph, to prefill apart from this batch and then absorb()."""
        cache = BatchCache(self.graph, self.spec, self.kv_heads, self.head_dim)
        cache.start(batch)
        return cache

    def absorb(self, other: BatchCache) -> None:
        """Append other's rows after these; the narrower side's columns gain holes on the left."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.kv = [_stacked(mine, theirs, width) for mine, theirs in zip(self.kv, other.kv)]
        self.mask = _stacked(self.mask, other.mask, width)
        self.lengths = np.concatenate([self.lengths, other.lengths])

    def forward(
        self, tokens: np.ndarray, valid: np.ndarray, skip: tuple[str, ...] = (), prefill: bool = False
    ) -> dict[str, np.ndarray]:
        """Run tokens [B, S] (valid [B, S] marks real ones; padding is on the left of each row); outputs named in
        `skip` are not computed. prefill: unused (plain graphs attend the same way in every call)."""
        positions = self.lengths[:, None] + np.maximum(np.cumsum(valid, axis=1) - 1, 0)
        mask = np.concatenate([self.mask, valid.astype(np.int64)], axis=1)
        feeds = {
            INPUT_IDS: tokens,
            POSITION_IDS: positions,
            ATTENTION_MASK: mask,
            **dict(zip(self.past_names, self.kv)),
        }
        outputs = self.graph.run(feeds, skip)
        self.kv = [outputs[name] for name in self.present_names]
        self.mask = mask
        self.lengths = self.lengths + valid.sum(axis=1)
        return outputs

    def forget_last(self, counts: np.ndarray) -> None:
        """Turn the last counts[b] columns of row b into holes (rejected drafts): mask bits only."""
        total = self.mask.shape[1]
        for row, count in enumerate(counts):
            if count:
                self.mask[row, total - count :] = 0
        self.lengths = self.lengths - counts

    def compact_if_needed(self, keep_rows: np.ndarray | None = None) -> None:
        if keep_rows is not None and len(keep_rows) < self.mask.shape[0]:
            self._keep_rows(keep_rows)
        batch, width = self.mask.shape
        freeable = width - (int(self.mask.sum(axis=1).max()) if batch else 0)
        if freeable > max(_MIN_HOLE_SLACK, _MAX_HOLE_FRACTION * width):
            self.compact(np.arange(batch))

    def _keep_rows(self, rows: np.ndarray) -> None:
        """Only `rows` stay (one take per tensor), less the columns on the left that none of them uses."""
        mask = self.mask[rows]
        used = np.flatnonzero(mask.any(axis=0))
        first = int(used[0]) if len(used) else mask.shape[1]
        self.kv = [np.take(t[:, :, first:], rows, axis=0) for t in self.kv]
        self.mask, self.lengths = np.ascontiguousarray(mask[:, first:]), self.lengths[rows]

    def compact(self, rows: np.ndarray) -> None:
        """Keep `rows`, each with its real tokens right-aligned (left padding only)."""
        mask = self.mask[rows]
        width = int(mask.sum(axis=1).max()) if len(rows) else 0
        # For each kept row, the source column of each target column; padding reuses column 0 (masked).
        source = np.zeros((len(rows), width), dtype=np.int64)
        new_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(mask):
            real = np.flatnonzero(row)
            source[i, width - len(real) :] = real
            new_mask[i, width - len(real) :] = 1
        index = (
            rows[:, None, None, None],
            np.arange(self.kv_heads)[None, :, None, None],
            source[:, None, :, None],
            np.arange(self.head_dim)[None, None, None, :],
        )  # one gather per tensor -> [B', Hkv, T', D]
        self.kv = [t[index] for t in self.kv]
        self.mask, self.lengths = new_mask, self.lengths[rows]


def kv_bytes_per_token(graph: Graph, spec: GraphSpec, kv_heads: int, head_dim: int) -> int:
    """The KV one token takes in a graph's caches (every kv_cache / past input)."""
    return len(spec.past_names) * kv_heads * head_dim * np.dtype(graph.kv_dtype).itemsize


def _stacked(top: np.ndarray, bottom: np.ndarray, width: int) -> np.ndarray:
    """top's rows then bottom's, each right-aligned in `width` columns of the token axis (axis 2 of KV [B, Hkv, T, D],
    axis 1 of a mask [B, T]); the columns to their left are zero (holes). One allocation, each part copied once."""
    axis = top.ndim - 2 if top.ndim == 4 else 1
    shape = list(top.shape)
    shape[0], shape[axis] = top.shape[0] + bottom.shape[0], width
    out = np.empty(shape, dtype=top.dtype)
    for rows, part in ((slice(0, top.shape[0]), top), (slice(top.shape[0], None), bottom)):
        pad = width - part.shape[axis]
        index = [rows] + [slice(None)] * (top.ndim - 1)
        index[axis] = slice(0, pad)
        out[tuple(index)] = 0
        index[axis] = slice(pad, None)
        out[tuple(index)] = part
    return out
