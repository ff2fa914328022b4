"""A buffered graph (plugin or inplace flavour, contract.py) and its preallocated KV buffers for B rows: BatchCache's
methods, no holes.

Each row's real tokens fill cache rows 0 .. lengths[b]-1; PardAttention writes a call's S new tokens at
past_len[b] .. past_len[b]+S-1 and query i sees rows 0 .. past_len[b]+i. Rejecting drafts only lowers lengths:
the stale rows above are overwritten by the next call. A call feeds every row the same S, so rows with fewer new
tokens than the longest are evened out (the graphs have no attention mask):
- right padding, where nothing follows the inputs (target and AR-draft graphs): a real query never sees the pads
  after it, and the pads' KV lands above the row's real tokens; the logits are rolled back to the left-padded
  layout the decoding steps read.
- re-feeding, for the draft graph (its K-1 mask slots must follow the real tokens directly, and its drafts come
  off the last K positions): a shorter row is given its last cached tokens again in front of its new ones, from
  past_len lowered by as many. Their KV is recomputed from the same prefix, so it is rewritten with the same values
  (to the last bit where both calls attend alike; drafts never change the output).
- split, when a row has too few cached tokens to re-feed (a batch's first draft call): every row's new tokens but
  the last go in right-padded (outputs dropped), then all last tokens together (S = 1).

PluginCache keeps the tokens and lengths (the bookkeeping above); where the buffers [B, Hkv, C, D] live is a KV
store's business, chosen by the graph (one code path for both):
- HostKV, for graphs that return the updated caches as new arrays (ONNX Runtime: kv_cache_out.*): numpy buffers fed
  as the kv_cache.* inputs of every call and replaced by its kv_cache_out.* outputs.
- graph-owned stores, for graphs that update their caches in place (`graph.kv_in_place`); no KV goes in or comes
  out of a call:
  - backend_ort.BoundKV (ONNX Runtime's inplace flavour): OrtValues bound as input and output, grown with the rows;
  - GraphKV (TensorRT: backend_trt.DeviceKV): static buffers [max_batch, Hkv, C, D]; the graph runs on the first B
    rows, `start` only sets B, and rows leaving the batch are moved down inside the buffers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from ..contract import DRAFT_IDS, DRAFT_LOGITS, INPUT_IDS, LOGITS, PAD_ID, PAST_LEN, POSITION_IDS, PREFILL, GraphSpec
from ..errors import GenerationError
from .cache import kv_bytes_per_token
from .interfaces import Graph, KVStore


class PluginCache:
    def __init__(
        self, graph: Graph, spec: GraphSpec, kv_heads: int, head_dim: int, capacity: int, kv: KVStore | None = None
    ):
        """kv: the store to use (a joiner's); by default an in-place graph's own (TensorRT, ONNX Runtime's inplace
        flavour), or host buffers that go in and out of every call."""
        self.graph, self.spec = graph, spec
        self.kv_heads, self.head_dim, self.capacity = kv_heads, head_dim, capacity
        if kv is None:
            kv = (
                graph.kv_store(kv_heads, head_dim, capacity)
                if graph.kv_in_place
                else HostKV(spec.past_names, spec.present_names, (kv_heads, capacity, head_dim), graph.kv_dtype)
            )
        self.kv: KVStore = kv
        # The draft graph appends K-1 mask slots and reads its K drafts off the last K positions, so every row's
        # real tokens must end its input (no right padding).
        self.ends_aligned = any(t.name == DRAFT_IDS for t in spec.outputs)
        self.mask_slots = spec.mask_slots
        self.takes_prefill = any(t.name == PREFILL for t in spec.inputs)  # inplace graphs built since it exists
        self.start(1)

    def start(self, batch: int) -> None:
        self.kv.start(batch)
        self.tokens = np.zeros((batch, self.capacity), dtype=np.int64)  # [B, C]: the token at each cache row
        self.lengths = np.zeros(batch, dtype=np.int64)  # real tokens per row = the next position

    @property
    def absorb_copies(self) -> bool:
        """absorb() copies the other cache's rows and leaves them as they were (not where the graph's buffers hold
        them: it moves them there)."""
        return self.kv.absorb_copies

    def row_bytes(self, tokens: int) -> int:
        per_token = kv_bytes_per_token(self.graph, self.spec, self.kv_heads, self.head_dim)
        return self.kv.row_tokens(min(tokens, self.capacity)) * per_token

    def joiner(self, batch: int) -> PluginCache:
        """`batch` empty rows on the same graph, to prefill apart from this batch and then absorb(); their buffers
        are the store's joiner (for a graph's static buffers, the rows after this batch's)."""
        cache = PluginCache(
            self.graph, self.spec, self.kv_heads, self.head_dim, self.capacity, kv=self.kv.joiner(batch)
        )
        cache.start(batch)
        return cache

    def absorb(self, other: PluginCache) -> None:
        """Append other's rows (a joiner of this cache) after these."""
        self.kv.absorb(other.kv)
        self.tokens = np.concatenate([self.tokens, other.tokens])
        self.lengths = np.concatenate([self.lengths, other.lengths])

    def forward(
        self, tokens: np.ndarray, valid: np.ndarray, skip: tuple[str, ...] = (), prefill: bool = False
    ) -> dict[str, np.ndarray]:
        """Run tokens [B, S] (valid [B, S] marks real ones; padding is on the left of each row); outputs named in
        `skip` are not computed; prefill: a prompt chunk (contract.PREFILL). Outputs per position come back
        left-padded, as BatchCache gives them."""
        rows = [row[keep] for row, keep in zip(tokens, valid.astype(bool))]
        counts = np.array([len(row) for row in rows], dtype=np.int64)
        short = counts.max() - counts  # tokens each row lacks to the longest
        if not self.ends_aligned or not short.any():
            outputs = _left_aligned(self._run(_right_pad(rows), self.lengths, skip, prefill), short)
        elif (self.lengths >= short).all():
            again = [self.tokens[b, n - s : n] for b, (n, s) in enumerate(zip(self.lengths, short))]
            outputs = self._run(
                np.stack([np.concatenate(pair) for pair in zip(again, rows)]), self.lengths - short, skip, prefill
            )
        else:
            if counts.max() > 1:
                self._run(_right_pad([row[:-1] for row in rows]), self.lengths, (DRAFT_LOGITS,), prefill)
            outputs = self._run(np.stack([row[-1:] for row in rows]), self.lengths + counts - 1, skip, prefill)
        for b, row in enumerate(rows):
            self.tokens[b, self.lengths[b] : self.lengths[b] + len(row)] = row
        self.lengths = self.lengths + counts
        return outputs

    def forget_last(self, counts: np.ndarray) -> None:
        """Drop the last counts[b] tokens of row b (rejected drafts): a length, no KV moves."""
        self.lengths = self.lengths - counts

    def compact_if_needed(self, keep_rows: np.ndarray | None = None) -> None:
        """Rows that left the batch go (keep_rows ascending, as Session passes them); there are no holes to close."""
        if keep_rows is not None and len(keep_rows) < len(self.lengths):
            self.kv.keep(keep_rows)
            self.tokens, self.lengths = self.tokens[keep_rows], self.lengths[keep_rows]

    def _run(self, ids: np.ndarray, past: np.ndarray, skip: tuple[str, ...], prefill: bool) -> dict[str, np.ndarray]:
        rows = int((past + ids.shape[1] + self.mask_slots).max())  # the cache rows this call writes up to
        if rows > self.capacity:  # the op would answer NaN, not fail
            raise AssertionError(
                f"a row outgrows the {self.capacity}-row KV cache; Session limits lengths so it cannot"
            )
        self.kv.reserve(rows)
        positions = past[:, None] + np.arange(ids.shape[1])  # [B, S]
        feeds = {INPUT_IDS: ids, POSITION_IDS: positions, PAST_LEN: past.astype(np.int32)}
        if self.takes_prefill:
            feeds[PREFILL] = np.array(prefill)
        outputs = self.graph.run(feeds | self.kv.feeds(), skip, kv=self.kv if self.graph.kv_in_place else None)
        self.kv.update(outputs)
        return outputs


class HostKV:
    """Numpy buffers fed to every call and replaced by its kv_cache_out.* outputs (ONNX Runtime)."""

    absorb_copies = True

    def __init__(self, past_names: Sequence[str], present_names: Sequence[str], row_shape: tuple[int, int, int], dtype):
        self.past_names, self.present_names = list(past_names), list(present_names)
        self.row_shape, self.dtype = row_shape, dtype  # (Hkv, C, D)
        self.start(1)

    def start(self, batch: int) -> None:
        self.buffers = [np.zeros((batch, *self.row_shape), dtype=self.dtype) for _ in self.past_names]  # [B, Hkv, C, D]

    def reserve(self, rows: int) -> None:
        pass  # allocated at full capacity

    def row_tokens(self, tokens: int) -> int:
        return self.row_shape[1]  # every row holds the full capacity

    def feeds(self) -> dict[str, np.ndarray]:
        return dict(zip(self.past_names, self.buffers))

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        self.buffers = [outputs[name] for name in self.present_names]

    def keep(self, rows: np.ndarray) -> None:
        self.buffers = [t[rows] for t in self.buffers]

    def joiner(self, batch: int) -> HostKV:
        store = HostKV(self.past_names, self.present_names, self.row_shape, self.dtype)
        store.start(batch)
        return store

    def absorb(self, other: HostKV) -> None:
        self.buffers = [np.concatenate([mine, theirs]) for mine, theirs in zip(self.buffers, other.buffers)]


class GraphKV:
    """Static buffers [max_batch, Hkv, C, D] owned by an in-place graph, which runs on their first `batch` rows:
    nothing to feed, nothing to take back. Subclasses own the memory and move a row (`move_row`)."""

    absorb_copies = False  # a joiner's rows are the buffers' own, moved into place

    def __init__(self, max_batch: int, row_shape: tuple[int, int, int]):
        self.max_batch, self.row_shape = max_batch, row_shape  # row_shape (Hkv, C, D)
        self.first = 0  # the buffers' row this store's row 0 is (a joiner's rows follow the batch's)
        self.batch = 1

    def start(self, batch: int) -> None:
        if self.first + batch > self.max_batch:
            raise GenerationError(
                f"a batch of {self.first + batch} prompts exceeds this engine's maximum batch of "
                f"{self.max_batch}; pass fewer prompts or rebuild with a larger --max-batch"
            )
        self.batch = batch

    def joiner(self, batch: int) -> GraphKV:
        """The same buffers' rows after this batch's (the graph runs on a joiner's rows at its `first`)."""
        store = copy.copy(self)
        store.first = self.first + self.batch
        store.start(batch)
        return store

    def absorb(self, other: GraphKV) -> None:
        """Other's rows (a joiner's, after this batch's; rows may have left this batch since) follow these."""
        for i in range(other.batch):
            source, target = other.first + i, self.first + self.batch + i
            if source != target:
                self.move_row(source, target)
        self.batch += other.batch

    def reserve(self, rows: int) -> None:
        pass  # allocated at full capacity

    def row_tokens(self, tokens: int) -> int:
        return self.row_shape[1]  # allocated once for max_batch rows; a row's share is the full capacity

    def feeds(self) -> dict[str, np.ndarray]:
        return {}

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        pass

    def keep(self, rows: np.ndarray) -> None:
        for source, target in row_moves(rows):
            self.move_row(self.first + source, self.first + target)
        self.batch = len(rows)

    def move_row(self, source: int, target: int) -> None:
        """Copy row `source` of every buffer over row `target` (target < source; rows of the whole buffers)."""
        raise NotImplementedError


def row_moves(rows: np.ndarray) -> list[tuple[int, int]]:
    """(source, target) row copies that make `rows` rows 0 .. len(rows)-1 in place, in an order that never overwrites
    a row still to be copied: with rows ascending, target t lies below every later source (rows[j] > rows[t] >= t)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not ((np.diff(rows) > 0).all() and (rows >= 0).all()):
        raise GenerationError(f"rows to keep must be ascending and non-negative, got {rows.tolist()}")
    return [(int(source), target) for target, source in enumerate(rows) if source != target]


def _right_pad(rows: list[np.ndarray]) -> np.ndarray:
    ids = np.full((len(rows), max(len(row) for row in rows)), PAD_ID, dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
    return ids


def _left_aligned(outputs: dict[str, np.ndarray], short: np.ndarray) -> dict[str, np.ndarray]:
    """Roll each row's per-position logits so its real positions end the row (pads move to the front)."""
    if LOGITS not in outputs or not short.any():
        return outputs
    logits = outputs[LOGITS]  # [B, S, V]
    source = (np.arange(logits.shape[1])[None, :] - short[:, None]) % logits.shape[1]  # [B, S]
    return outputs | {LOGITS: np.take_along_axis(logits, source[:, :, None], axis=1)}
