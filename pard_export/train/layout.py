"""The PARD training layout (pard-method.md §5): P blocks, the 4-D attention rule, labels and COD.

Block 0 holds the real tokens x_0..x_{n-1}; block b >= 1 holds the mask id. Every block uses positions 0..n-1.
Token (block b, index j) sees the real tokens x_0..x_{j-b} and the mask chain (1, j-b+1) .. (b, j): exactly the
causal view of the inference input [x_0..x_{j-b}, MASK x b], so it learns to predict x_{j+1}.
COD keeps every real token and, at depth b, max(r^b, r_min)*n mask positions whose predecessor (b-1, j-1) was
kept, so a kept mask always sees its whole chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # the label of a position that is not trained


@dataclass(frozen=True)
class CodSettings:
    blocks: int = 8  # P: the depth of the deepest mask is P - 1
    keep_rate: float = 0.7  # r
    min_keep_rate: float = 0.2  # r_min

    def fraction(self, depth: int) -> float:
        return 1.0 if depth == 0 else max(self.keep_rate**depth, self.min_keep_rate)


FULL = CodSettings(keep_rate=1.0, min_keep_rate=1.0)  # no dropping: every (block, index) with index >= block


def keep_sets(length: int, cod: CodSettings, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Sorted kept indices per depth 0..P-1; depth b only among indices whose (b-1, j-1) was kept."""
    kept = [torch.arange(length)]
    for depth in range(1, cod.blocks):
        candidates = kept[-1][kept[-1] >= depth - 1] + 1
        candidates = candidates[candidates < length - 1]  # the last index has no next token to learn
        count = min(round(cod.fraction(depth) * length), len(candidates))
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        kept.append(chosen.sort().values)
    return kept


@dataclass(frozen=True)
class Layout:
    """One sequence in the training layout: N kept tokens."""

    input_ids: torch.Tensor  # [N]
    position_ids: torch.Tensor  # [N]
    block: torch.Tensor  # [N] depth b
    index: torch.Tensor  # [N] j
    labels: torch.Tensor  # [N] x_{j+1} or IGNORE

    def visible(self) -> torch.Tensor:
        """[N, N] bool: may query q attend to key k."""
        bq, jq = self.block[:, None], self.index[:, None]
        bk, jk = self.block[None, :], self.index[None, :]
        real = (bk == 0) & (jk <= jq - bq)
        chain = (bk >= 1) & (bk <= bq) & (jk == jq - bq + bk)
        return real | chain


def build_layout(
    tokens: torch.Tensor,
    kept: list[torch.Tensor],
    mask_id: int,
    *,
    first_label: int = 0,
    ignore_ids: tuple[int, ...] = (),
) -> Layout:
    """tokens [n]; labels only for targets x_{j+1} with j+1 >= first_label (e.g. skip the prompt) not in ignore_ids."""
    n = len(tokens)
    index = torch.cat(kept)
    block = torch.cat([torch.full((len(k),), depth) for depth, k in enumerate(kept)])
    input_ids = torch.where(block == 0, tokens[index], mask_id)
    target = index + 1
    labels = torch.full_like(index, IGNORE)
    trained = (target < n) & (index >= block) & (target >= first_label)
    labels[trained] = tokens[target[trained]]
    for ignored in ignore_ids:
        labels[labels == ignored] = IGNORE
    return Layout(input_ids, index.clone(), block, index, labels)


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, N]
    position_ids: torch.Tensor  # [B, N]
    attention_mask: torch.Tensor  # [B, 1, N, N] bool: True = visible (a 4-D mask transformers passes to SDPA as is)
    labels: torch.Tensor  # [B, N]

    def to(self, device) -> Batch:
        return Batch(
            *(
                t.to(device, non_blocking=True)
                for t in (self.input_ids, self.position_ids, self.attention_mask, self.labels)
            )
        )


def collate(layouts: list[Layout]) -> Batch:
    """Right-pad to the longest layout; a padding slot sees only itself and nothing real sees it."""
    width = max(len(x.input_ids) for x in layouts)
    B = len(layouts)
    ids = torch.zeros(B, width, dtype=torch.long)
    positions = torch.zeros(B, width, dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    visible = torch.eye(width, dtype=torch.bool).repeat(B, 1, 1)
    for row, x in enumerate(layouts):
        n = len(x.input_ids)
        ids[row, :n], positions[row, :n], labels[row, :n] = x.input_ids, x.position_ids, x.labels
        visible[row, :n, :n] = x.visible()
    return Batch(ids, positions, visible[:, None], labels)
