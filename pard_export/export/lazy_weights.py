"""Weights made when they are written: name -> a function that makes the tensor, called on every access and never
kept, so transformed weights (fused, transposed) and weights read from a checkpoint exist one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Maker = Callable[[], "torch.Tensor"]


class LazyWeights(Mapping):
    def __init__(self, makers: Mapping[str, Maker]):
        self._makers = dict(makers)

    @classmethod
    def over(cls, weights: Mapping) -> LazyWeights:
        """Each of `weights`' names, read from it when asked for (a checkpoint reads it then)."""
        return cls({name: _reader(weights, name) for name in weights})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._makers[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def add(self, name: str, make: Maker) -> None:
        self._makers[name] = make

    def replace(self, parts: Sequence[str], name: str, make: Maker) -> None:
        """`name` (made by `make`) where the first of `parts` was; the parts are gone."""
        makers = {}
        for old, maker in self._makers.items():
            if old == parts[0]:
                makers[name] = make
            elif old not in parts:
                makers[old] = maker
        self._makers = makers


def _reader(weights: Mapping, name: str) -> Maker:
    return lambda: weights[name]
