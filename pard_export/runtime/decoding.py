"""The decoding steps (pard-method.md §2-3) over CachedGraphs, and the statistics they produce.

A PARD step: the draft sees the tokens it has not seen plus K-1 masks and proposes K tokens in one forward;
the target verifies [pending, d_1..d_n] in one forward; the longest agreeing prefix d_1..d_a is kept with the
target's own token t_a. The target-only baseline is the same step with no drafts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..contract import DRAFT_IDS, LOGITS
from .cache import CachedGraph


@dataclass(frozen=True)
class Step:
    emitted: list[int]  # tokens this step adds to the output: accepted drafts, then the target's token
    drafted: int  # drafts verified this step
    accepted: int  # drafts the target agreed with


def accepted_prefix(drafts: np.ndarray, target_tokens: np.ndarray) -> int:
    """Largest a with drafts[:a] == target_tokens[:a] (target_tokens has one more entry than drafts)."""
    mismatches = np.flatnonzero(drafts != target_tokens[: len(drafts)])
    return int(mismatches[0]) if len(mismatches) else len(drafts)


def pard_step(target: CachedGraph, draft: CachedGraph, target_new: list[int], draft_new: list[int], n_drafts: int) -> Step:
    drafts = draft.forward(draft_new)[DRAFT_IDS][0, :n_drafts]  # [n]
    verified_from = target.length + len(target_new) - 1  # cache position of the pending token
    logits = target.forward(target_new + drafts.tolist())[LOGITS][0, -(n_drafts + 1) :]  # [n+1, V]
    target_tokens = logits.argmax(-1)
    a = accepted_prefix(drafts, target_tokens)
    target.rollback(verified_from + 1 + a)  # keep pending + d_1..d_a; t_a becomes the next pending token
    return Step(drafts[:a].tolist() + [int(target_tokens[a])], n_drafts, a)


def ar_step(target: CachedGraph, target_new: list[int]) -> Step:
    logits = target.forward(target_new)[LOGITS][0, -1]
    return Step([int(logits.argmax())], 0, 0)


@dataclass
class GenerationStats:
    mode: str
    k: int
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    drafted_tokens: int = 0
    accepted_drafts: int = 0
    mean_accepted_tokens: float = 0.0  # tokens per target forward, bonus included (tau)
    acceptance_rate: float = 0.0  # accepted / drafted
    per_position_acceptance: list[float] = field(default_factory=list)  # P(draft i accepted), i = 1..k
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_second: float = 0.0  # after the first step (prefill excluded)
    finish_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class StatsRecorder:
    def __init__(self, mode: str, k: int, uses_draft: bool):
        self.stats = GenerationStats(mode=mode, k=k)
        self.uses_draft = uses_draft
        self.position_hits = np.zeros(k, dtype=np.int64)
        self.position_tries = np.zeros(k, dtype=np.int64)

    def record(self, step: Step, emitted: int) -> None:
        s = self.stats
        s.target_forwards += 1
        s.draft_forwards += int(self.uses_draft)
        s.new_tokens += emitted
        s.drafted_tokens += step.drafted
        s.accepted_drafts += step.accepted
        self.position_tries[: step.drafted] += 1
        self.position_hits[: step.accepted] += 1

    def finish(self, reason: str, ttft_s: float, total_s: float, first_step_tokens: int) -> GenerationStats:
        s = self.stats
        s.finish_reason = reason
        s.mean_accepted_tokens = s.new_tokens / max(s.target_forwards, 1)
        s.acceptance_rate = s.accepted_drafts / s.drafted_tokens if s.drafted_tokens else 0.0
        tries = np.maximum(self.position_tries, 1)
        s.per_position_acceptance = [float(x) for x in self.position_hits / tries] if self.uses_draft else []
        s.ttft_ms, s.total_ms = ttft_s * 1e3, total_s * 1e3
        after_first = total_s - ttft_s
        later_tokens = s.new_tokens - first_step_tokens
        s.tokens_per_second = later_tokens / after_first if later_tokens > 0 and after_first > 0 else s.new_tokens / total_s
        return s
