"""What Session's loop asks of a backend's graph and of a KV cache, written down once (every backend and cache
implements these; nothing probes for attributes)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class KVStore(Protocol):
    """Where a buffered graph's caches [B, Hkv, C, D] live (one per kv_cache.* input)."""

    absorb_copies: bool  # absorb() copies the other store's rows, leaving them as they were (not: moves them)

    def start(self, batch: int) -> None:
        """B fresh rows (their old contents are never read: past_len starts at 0)."""

    def reserve(self, rows: int) -> None:
        """Room for `rows` rows per sequence before a call (stores of a fixed capacity have it already)."""

    def row_tokens(self, tokens: int) -> int:
        """The cache rows a sequence of `tokens` tokens occupies (a fixed store: its capacity)."""

    def feeds(self) -> dict[str, np.ndarray]:
        """The cache inputs a call needs from the host ({} where the graph keeps them)."""

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        """Take a call's updated caches from its outputs (nothing to do where the graph updated them in place)."""

    def keep(self, rows: np.ndarray) -> None:
        """Keep only `rows` (ascending), as rows 0 .. len(rows)-1."""

    def joiner(self, batch: int) -> KVStore:
        """A store of `batch` fresh rows for sequences that join this batch (prefilled apart, then absorbed)."""

    def absorb(self, other: KVStore) -> None:
        """Append the rows of `other` (a joiner of this store) after this batch's."""


class Graph(Protocol):
    """One compiled graph (OrtGraph, TrtGraph)."""

    kv_dtype: type  # numpy dtype of its KV caches
    kv_in_place: bool  # it owns its caches and updates them in place (kv_store); else they go in and out of run
    max_batch: int | None  # the most rows a call may have (a TensorRT plan's profiles); None: no limit
    busy_s: float  # time spent inside the backend so far

    @property
    def providers(self) -> list[str]:
        """Where it runs (ONNX Runtime's execution providers, or ["TensorRT"])."""

    def run(
        self, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = (), kv: KVStore | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name, less those in `skip` (not computed where the backend can avoid it). kv: the store an
        in-place graph updates (default: the one kv_store() made)."""

    def kv_store(self, kv_heads: int, head_dim: int, capacity: int) -> KVStore:
        """The caches it owns (only where kv_in_place)."""

    def close(self) -> None:
        """Free what it holds (the backend's session, device buffers, CUDA graphs, stream); it is not run again."""


class KVCache(Protocol):
    """A graph and its KV cache for B rows (BatchCache, PluginCache): what the decoding steps call."""

    graph: Graph
    absorb_copies: bool  # absorb() copies the other cache's rows, leaving them as they were (a shared prefix)

    def start(self, batch: int) -> None:
        """B empty rows."""

    def forward(
        self, tokens: np.ndarray, valid: np.ndarray, skip: tuple[str, ...] = (), prefill: bool = False
    ) -> dict[str, np.ndarray]:
        """Run tokens [B, S] (valid marks real ones, padding on the left); per-position outputs come back with each
        row's real positions last. prefill: the tokens are a prompt chunk (the graph's prefill input, where it has
        one: contract.py)."""

    def forget_last(self, counts: np.ndarray) -> None:
        """Drop the last counts[b] tokens of row b (rejected drafts)."""

    def compact_if_needed(self, keep_rows: np.ndarray | None = None) -> None:
        """Keep only `keep_rows` (ascending) and tidy the cache where that pays."""

    def row_bytes(self, tokens: int) -> int:
        """The KV memory one row of `tokens` tokens takes."""

    def joiner(self, batch: int) -> KVCache:
        """`batch` empty rows on the same graph for sequences that join this batch: prefilled apart (their prompts
        cost the running rows nothing), then absorbed."""

    def absorb(self, other: KVCache) -> None:
        """Append the rows of `other` (a joiner of this cache) after this batch's."""
