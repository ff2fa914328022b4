"""The decoding steps over a batch (pard-method.md §2-4), and the statistics they produce.

pard     : the PARD draft sees the tokens it has not seen plus K-1 masks and proposes n <= K tokens in ONE forward.
ar-draft : the same draft run autoregressively, n sequential forwards (ordinary speculative decoding).
ar       : the target alone.
The target then verifies [pending, d_1..d_n] in one forward and keeps the longest accepted prefix plus one
token of its own; rejected drafts become holes in the caches (BatchCache.forget_last).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..contract import DRAFT_IDS, DRAFT_LOGITS, LOGITS, PAD_ID
from .cache import BatchCache
from .sampling import SamplingParams, propose, sample, verify_greedy, verify_sampled, warp


def step_lengths(k: int) -> range:
    """The lengths S of every call after the prefill: decode 1, the draft's unseen tokens 1..k+1 (its k-1 masks are
    inside the graph), verify [pending, d_1..d_n] with n <= k. The tensorrt backend captures a CUDA graph for each."""
    return range(1, k + 2)


@dataclass(frozen=True)
class RowStep:
    emitted: list[int]  # accepted drafts, then the target's own token
    drafted: int
    accepted: int
    draft_unseen: list[int]  # tokens the draft has not consumed yet, after this step


@dataclass(frozen=True)
class StepResult:
    rows: list[RowStep]
    draft_forwards: int
    draft_s: float
    verify_s: float


# The target's prompt tokens but the last go in prefill calls however few they are, the rest in step calls: the two
# attend differently (contract.PREFILL), each row-invariantly, so every token's logits come out the same whatever the
# mode, the batch or a shared prefix (PARD stays exact). The draft needs no such care: fewer tokens than this before
# the ones it keeps are not worth another call.
DRAFT_CHUNKED_FROM = 8
PREFILL_CHUNK = 512


def tail_logits(cache: BatchCache, rows, keep: int | Sequence[int], chunked_from: int = 1) -> np.ndarray:
    """Run each row's new tokens; logits [B, S, V] with at least each row's last `keep` positions (left-padded rows,
    so every row's own positions are last). The tokens before those go in first without logits (prefill_chunks):
    ONNX Runtime then skips the LM head there, whose cost grows with tokens x vocabulary (SmolLM2, 5,000 tokens:
    ~280 GFLOP and 1 GB of float32 logits)."""
    rows = prefill_chunks(cache, rows, keep, (LOGITS,), chunked_from)
    return cache.forward(*left_pad(rows))[LOGITS]


def prefill_chunks(
    cache: BatchCache, rows, keep: int | Sequence[int], skip: tuple[str, ...], chunked_from: int = 1
) -> list[list[int]]:
    """Run all but each row's last `keep` new tokens (prefill_plan's chunks) as prefill calls, fetching none of the
    outputs in `skip`; returns the tokens left."""
    chunks, rest = prefill_plan(rows, keep, PREFILL_CHUNK, chunked_from)
    for pieces in chunks:
        cache.forward(*left_pad(pieces), skip=skip, prefill=True)
    return rest


def prefill_plan(
    rows, keep: int | Sequence[int], chunk: int = PREFILL_CHUNK, chunked_from: int = 1
) -> tuple[list[list[list[int]]], list[list[int]]]:
    """(the calls that run all but each row's last `keep` new tokens, each a piece per row; the tokens left), in
    chunks of about `chunk` tokens (a long prompt). Attention over a cache that grows with the chunks costs about
    half of one call's tokens x all rows, and each call's attention bias stays small (SmolLM2, 5,000 tokens: time to
    first token 30 -> 19 s). With fewer than `chunked_from` tokens before the kept ones there is no chunk."""
    rows = [list(row) for row in rows]
    keeps = [keep] * len(rows) if isinstance(keep, int) else list(keep)
    before = [row[: len(row) - kept] for row, kept in zip(rows, keeps)]
    lengths = [len(row) for row in before]
    if max(lengths) < chunked_from:  # every step after the prefill
        return [], rows
    # Every row gets a piece of every chunk (the draft graph's calls need a token per row), in proportion to its length.
    chunks = min(-(-max(lengths) // chunk), min(lengths))
    if not chunks:
        return [], rows
    plan = [[row[n * j // chunks : n * (j + 1) // chunks] for row, n in zip(before, lengths)] for j in range(chunks)]
    return plan, [row[n:] for row, n in zip(rows, lengths)]


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, S] and valid [B, S] with each row right-aligned."""
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    valid = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = row
        valid[i, width - len(row) :] = True
    return tokens, valid


def ar_step(target: BatchCache, target_new, draft_new, params: Sequence[SamplingParams], rngs) -> StepResult:
    start = time.perf_counter()
    logits = tail_logits(target, target_new, 1)[:, -1]  # [B, V]
    chosen = [_choose(row, p, rng) for row, p, rng in zip(logits, params, rngs)]
    rows = [RowStep([t], 0, 0, list(unseen) + [t]) for t, unseen in zip(chosen, draft_new)]
    return StepResult(rows, 0, 0.0, time.perf_counter() - start)


def pard_step(
    target: BatchCache,
    draft: BatchCache,
    target_new,
    draft_new,
    ns: Sequence[int],
    params: Sequence[SamplingParams],
    rngs,
) -> StepResult:
    """ns[b]: the drafts row b verifies (<= K; 0 makes the row's step an ar step, its drafts unused)."""
    start = time.perf_counter()
    sampled = [p.draft_sampling and not p.greedy for p in params]
    # the drafts follow the last token
    draft_new = prefill_chunks(draft, draft_new, 1, (DRAFT_IDS, DRAFT_LOGITS), DRAFT_CHUNKED_FROM)
    out = draft.forward(*left_pad(draft_new), skip=() if any(sampled) else (DRAFT_LOGITS,))  # argmax: no logits
    proposals = [
        propose(out[DRAFT_LOGITS][b, :n] if sampled[b] else None, out[DRAFT_IDS][b, :n], params[b], rngs[b])
        for b, n in enumerate(ns)
    ]
    drafted = time.perf_counter()
    verdicts = _verify(target, target_new, proposals, params, rngs)
    emitted = [d[:a].tolist() + [t] for (d, _), (a, t) in zip(proposals, verdicts)]
    rows = [RowStep(e, n, a, e) for e, n, (a, _) in zip(emitted, ns, verdicts)]  # the draft saw none of them as input
    return StepResult(rows, 1, drafted - start, time.perf_counter() - drafted)


def ar_draft_step(
    target: BatchCache,
    draft: BatchCache,
    target_new,
    draft_new,
    ns: Sequence[int],
    params: Sequence[SamplingParams],
    rngs,
    vocab: int,
) -> StepResult:
    start = time.perf_counter()
    batch, most = len(draft_new), max(ns)
    drafts = np.zeros((batch, most), dtype=np.int64)
    qs = [[] for _ in range(batch)]
    logits = tail_logits(draft, draft_new, 1, DRAFT_CHUNKED_FROM)[:, -1, :vocab]  # [B, V]
    for j in range(most):
        for b, rng in enumerate(rngs):
            # A draft past the row's own n is never verified: its argmax takes none of the row's draws, so a row's
            # sampled text depends on its own drafts only, not on how far other rows of the batch draft.
            chosen = params[b] if j < ns[b] else _ARGMAX
            ids, q = propose(logits[b][None], logits[b].argmax()[None], chosen, rng)
            drafts[b, j] = ids[0]
            qs[b].append(q)
        if j < most - 1:
            logits = draft.forward(drafts[:, j : j + 1], np.ones((batch, 1), dtype=bool))[LOGITS][:, -1, :vocab]
    drafted = time.perf_counter()
    proposals = [
        (drafts[b, :n], None if not n or qs[b][0] is None else np.concatenate(qs[b][:n])) for b, n in enumerate(ns)
    ]
    verdicts = _verify(target, target_new, proposals, params, rngs)
    # The draft consumed d_1..d_{most-1}; those the target rejected (or its row did not verify) become holes there too.
    seen = [min(a, most - 1) for a, _ in verdicts]
    draft.forget_last(np.array([most - 1 - s for s in seen]))
    rows = []
    for (d, _), n, (a, t), s in zip(proposals, ns, verdicts, seen):
        emitted = d[:a].tolist() + [t]
        rows.append(RowStep(emitted, n, a, emitted[s:]))
    return StepResult(rows, most, drafted - start, time.perf_counter() - drafted)


def _verify(target: BatchCache, target_new, proposals, params: Sequence[SamplingParams], rngs) -> list[tuple[int, int]]:
    """Run [pending.., d_1..d_n] through the target (n per row); (accepted, next token) per row; forget rejected
    drafts."""
    tokens = [list(new) + d.tolist() for new, (d, _) in zip(target_new, proposals)]
    logits = tail_logits(target, tokens, [len(d) + 1 for d, _ in proposals])
    verdicts = []
    for (d, q), row, p, rng in zip(proposals, logits, params, rngs):
        own = row[-len(d) - 1 :]  # the row's pending token, then its drafts (left-padded rows end aligned)
        verdicts.append(verify_greedy(d, own) if p.greedy else verify_sampled(d, q, own, p, rng))
    target.forget_last(np.array([len(d) - a for (d, _), (a, _) in zip(proposals, verdicts)]))
    return verdicts


_ARGMAX = SamplingParams()


def _choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    return int(logits.argmax()) if params.greedy else sample(warp(logits, params), rng)


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
    per_position_accepted: list[int] = field(default_factory=list)  # the counts behind it
    per_position_drafted: list[int] = field(default_factory=list)
    drafts_per_step: list[int] = field(default_factory=list)  # [n] = steps that verified n drafts, n = 0..k
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_second: float = 0.0  # after the first step (prefill excluded)
    draft_step_ms: float = 0.0  # mean per step, over steps after the first
    verify_step_ms: float = 0.0
    modelled_tokens_per_second: float = 0.0  # adaptive pard: what its cost model and estimates expected
    finish_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class StatsRecorder:
    """Statistics of one row."""

    def __init__(self, mode: str, k: int):
        self.stats = GenerationStats(mode=mode, k=k)
        self.hits = np.zeros(k, dtype=np.int64)
        self.tries = np.zeros(k, dtype=np.int64)
        self.draft_s = self.verify_s = 0.0
        self.timed_steps = 0
        self.first_step_tokens = 0
        self.steps_by_drafts = np.zeros(k + 1, dtype=np.int64)
        self.modelled_tokens = self.modelled_s = 0.0

    def record(
        self, step: RowStep, emitted: int, result: StepResult, first: bool, modelled: tuple[float, float] | None = None
    ) -> None:
        """modelled: (expected tokens, expected seconds) of this step, where a cost model chose its drafts."""
        s = self.stats
        self.steps_by_drafts[step.drafted] += 1
        s.target_forwards += 1
        s.draft_forwards += result.draft_forwards
        s.new_tokens += emitted
        s.drafted_tokens += step.drafted
        s.accepted_drafts += step.accepted
        self.tries[: step.drafted] += 1
        self.hits[: step.accepted] += 1
        if first:
            self.first_step_tokens = emitted
        else:
            self.draft_s += result.draft_s
            self.verify_s += result.verify_s
            self.timed_steps += 1
            if modelled is not None:
                self.modelled_tokens += modelled[0]
                self.modelled_s += modelled[1]

    def finish(self, reason: str, ttft_s: float, total_s: float) -> GenerationStats:
        s = self.stats
        s.finish_reason = reason
        s.mean_accepted_tokens = s.new_tokens / max(s.target_forwards, 1)
        s.acceptance_rate = s.accepted_drafts / s.drafted_tokens if s.drafted_tokens else 0.0
        if self.tries.any():
            s.per_position_acceptance = [float(x) for x in self.hits / np.maximum(self.tries, 1)]
            s.per_position_accepted, s.per_position_drafted = self.hits.tolist(), self.tries.tolist()
        s.drafts_per_step = self.steps_by_drafts.tolist()
        if self.modelled_s:
            s.modelled_tokens_per_second = self.modelled_tokens / self.modelled_s
        s.ttft_ms, s.total_ms = ttft_s * 1e3, total_s * 1e3
        later_tokens, later_s = s.new_tokens - self.first_step_tokens, total_s - ttft_s
        s.tokens_per_second = later_tokens / later_s if later_tokens > 0 and later_s > 0 else s.new_tokens / total_s
        if self.timed_steps:
            s.draft_step_ms = 1e3 * self.draft_s / self.timed_steps
            s.verify_step_ms = 1e3 * self.verify_s / self.timed_steps
        return s
