"""A graph together with its KV cache: callers pass new tokens, the cache grows, rollback moves a length."""

from __future__ import annotations

import numpy as np

from ..contract import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, GraphSpec
from .backend_ort import OrtGraph


class CachedGraph:
    """One sequence (batch 1) running through one graph; the KV cache holds `length` tokens."""

    def __init__(self, graph: OrtGraph, spec: GraphSpec, kv_heads: int, head_dim: int, max_tokens: int):
        self.graph = graph
        self.past_names, self.present_names = spec.past_names, spec.present_names
        self.empty = np.zeros((1, kv_heads, 0, head_dim), dtype=graph.kv_dtype)
        self.ones = np.ones((1, max_tokens), dtype=np.int64)  # attention_mask views: no padding at batch 1
        self.positions = np.arange(max_tokens, dtype=np.int64)[None]
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.kv = [self.empty] * len(self.past_names)

    def forward(self, tokens: list[int]) -> dict[str, np.ndarray]:
        n = len(tokens)
        feeds = {
            INPUT_IDS: np.asarray(tokens, dtype=np.int64)[None],
            POSITION_IDS: self.positions[:, self.length : self.length + n],
            ATTENTION_MASK: self.ones[:, : self.length + n],
            **dict(zip(self.past_names, self.kv)),
        }
        outputs = self.graph.run(feeds)
        self.kv = [outputs[name] for name in self.present_names]
        self.length = self.kv[0].shape[2]
        return outputs

    def rollback(self, length: int) -> None:
        """Forget everything after the first `length` tokens (rejected drafts): a view, no copy."""
        assert length <= self.length
        self.kv = [t[:, :, :length] for t in self.kv]
        self.length = length
