"""The sequences that decode together: one step over every row, rows that join between steps (prefilled apart, then
absorbed) and rows that leave. Session runs one batch from its first step to its last; the Scheduler keeps one
running and lets requests in and out of it.

Each row keeps its own sampling settings and generator. How many drafts a step verifies is chosen for the rows
that share the batch's policy (greedy rows: their text does not depend on it), and by a row's own policy where the
row has one (sampled rows under the Scheduler: the draws a row makes then depend on its own steps only, so a seed
gives the same text whoever else is in the batch); no row verifies drafts past its token limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..contract import DRAFT_IDS, DRAFT_LOGITS, LOGITS
from .calibration import Calibration
from .decoding import StatsRecorder, StepResult, ar_draft_step, ar_step, left_pad, pard_step, prefill_plan
from .drafting import AdaptiveDrafts
from .interfaces import KVCache
from .sampling import SamplingParams
from .streaming import RowText

_PREFILL_SKIP = (LOGITS, DRAFT_IDS, DRAFT_LOGITS)  # a prefill call's outputs are never read
MIN_SHARED_PREFIX = 16  # tokens: a shorter prefix that prompts share is not worth keeping


class Row:
    """One sequence: its settings, tokens, text, statistics and why it ended."""

    def __init__(
        self,
        index: int,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        room: int,
        params: SamplingParams,
        recorder: StatsRecorder,
        text: RowText | None,
        started: float | None = None,
    ):
        self.index = index  # its place in the caller's request (StreamEvent.row)
        self.prompt_ids = list(prompt_ids)
        self.limit = min(max_new_tokens, room)
        self.params, self.recorder, self.text = params, recorder, text
        self.rng = np.random.default_rng(None if params.seed is None else [params.seed, index])
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.target_new, self.draft_new = list(prompt_ids), list(prompt_ids)  # tokens each model has not consumed
        self.policy: AdaptiveDrafts | None = None  # its own choice of drafts, where it does not share the batch's
        self.started = time.perf_counter() if started is None else started
        self.ttft_s: float | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def budget(self) -> int:
        return self.limit - len(self.tokens)

    @property
    def context(self) -> int:
        return self.prompt_len + len(self.tokens)

    def take_text(self) -> str:
        """The text the last step made visible (the rest of it once the row has finished); "" when the row's text
        is not followed."""
        return self.text.take_visible(final=self.finish_reason is not None) if self.text is not None else ""

    def accept(self, emitted: list[int], eos: frozenset[int]) -> int:
        """Append a step's tokens up to EOS, a stop string or the limit; returns how many were kept."""
        for count, token in enumerate(emitted, 1):
            self.tokens.append(token)
            if (self.text is not None and self.text.add(token)) or token in eos:
                self.finish_reason = "stop"
            elif len(self.tokens) >= self.limit:
                self.finish_reason = "length"
            if self.finish_reason:
                return count
        return len(emitted)


class SharedPrefix:
    """The KV of a prompt prefix that requests share (a chat template's system turn), on one row of each cache: a
    joining row that starts with it copies it instead of prefilling it (prefix caching, for one prefix)."""

    def __init__(self, caches: Sequence[KVCache], tokens: Sequence[int]):
        self.tokens = tuple(tokens)
        self.caches = [cache.joiner(1) for cache in caches]
        ids, valid = left_pad([list(tokens)])
        for cache in self.caches:
            cache.forward(ids, valid, skip=_PREFILL_SKIP, prefill=True)

    def covers(self, prompt: Sequence[int]) -> bool:
        """The prompt starts with the prefix and has a token after it (the step that follows reads one)."""
        return len(prompt) > len(self.tokens) and tuple(prompt[: len(self.tokens)]) == self.tokens


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


class Joiners:
    """Rows on fresh caches (joiners of the batch's), prefilled a chunk per call, apart from the running rows: a long
    prompt delays the running rows by one chunk at a time. Once prefilled, the batch absorbs them; each row's last
    prompt token (or its few tokens, as a batch of one leaves them) goes in with the batch's next step. A row that
    starts with the shared prefix copies its KV first. Without with_draft only the target reads the prompts now; the
    draft reads them when the batch next drafts (a batch that runs ar steps, as large batches on a CPU do, may
    finish them first)."""

    def __init__(
        self,
        caches: Sequence[KVCache],
        rows: list[Row],
        chunk: int,
        with_draft: bool = True,
        prefix: SharedPrefix | None = None,
    ):
        self.rows = rows
        shared = [prefix is not None and prefix.covers(row.prompt_ids) for row in rows]
        if any(shared):
            self.caches = [_rows_from(cache, kept, shared) for cache, kept in zip(caches, prefix.caches)]
            for row, copied in zip(rows, shared):
                if copied:
                    row.target_new = row.draft_new = row.prompt_ids[len(prefix.tokens) :]
        else:
            self.caches = [cache.joiner(len(rows)) for cache in caches]
        self._prefilling = self.caches if with_draft else self.caches[:1]
        self.chunks, rest = prefill_plan([row.target_new for row in rows], keep=1, chunk=chunk)
        for row, left in zip(rows, rest):
            row.target_new = list(left)
            row.draft_new = list(left) if with_draft else list(row.draft_new)

    @property
    def prefilled(self) -> bool:
        return not self.chunks

    def prefill_next(self) -> None:
        tokens, valid = left_pad(self.chunks.pop(0))
        for cache in self._prefilling:
            cache.forward(tokens, valid, skip=_PREFILL_SKIP, prefill=True)


def _rows_from(cache: KVCache, prefix: KVCache, shared: list[bool]) -> KVCache:
    """A joiner of `cache` whose rows are copies of the prefix's row (where shared) or empty."""
    rows = cache.joiner(0)
    for copied in shared:
        rows.absorb(prefix if copied else cache.joiner(1))
    return rows


class DecodeBatch:
    """The running rows of one mode on its caches (target first, then the draft where the mode has one)."""

    def __init__(
        self,
        caches: Sequence[KVCache],
        mode: str,
        k: int,
        eos: frozenset[int],
        vocab: int,
        calibration: Calibration | None = None,
    ):
        """calibration: adaptive pard's costs and prior (mode "pard"); without it every step verifies all it may."""
        self.caches, self.mode, self.k, self.eos, self.vocab = list(caches), mode, k, eos, vocab
        self.calibration = calibration
        self.policy = AdaptiveDrafts(calibration.costs, calibration.acceptance, rows=()) if calibration else None
        self.rows: list[Row] = []

    @property
    def drafting(self) -> bool:
        """Whether its steps are drafting now (joiners' drafts read their prompts at once only then)."""
        if len(self.caches) < 2:
            return False
        return self.policy is None or self.policy.drafting or not self.rows

    def start(self, rows: list[Row]) -> None:
        """These rows, on caches started afresh; their prompts go in with the first step."""
        for cache in self.caches:
            cache.start(len(rows))
        self.rows = []
        self._enter(rows)

    def absorb(self, joiners: Joiners, own_policy: bool = False) -> None:
        """The prefilled rows join; own_policy: sampled rows choose their drafts alone (see the module's note)."""
        for cache, joined in zip(self.caches, joiners.caches):
            cache.absorb(joined)
        for row in joiners.rows:
            if own_policy and self.calibration and not row.params.greedy:
                row.policy = AdaptiveDrafts(self.calibration.costs, self.calibration.acceptance, rows=[row])
        self._enter(joiners.rows)

    def step(self) -> list[tuple[Row, list[int]]]:
        """One decoding step over every row: (row, the tokens the step added to it)."""
        ns, modelled = self._drafts()
        result = self._run(ns)
        self._observe(ns, result)
        now = time.perf_counter()
        steps = []
        for row, step, expected in zip(self.rows, result.rows, modelled):
            first = row.ttft_s is None
            if first:
                row.ttft_s = now - row.started
            kept = row.accept(step.emitted, self.eos)
            row.recorder.record(step, kept, result, first=first, modelled=expected)
            row.target_new, row.draft_new = [row.tokens[-1]], (step.draft_unseen if len(self.caches) > 1 else [])
            steps.append((row, step.emitted[:kept]))
        return steps

    def leave(self) -> list[Row]:
        """Drop the rows that have a finish reason (finished or cancelled), free their caches and close the caches'
        holes where that pays; returns the rows that left."""
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        gone = [row for row in self.rows if row.finish_reason is not None]
        for cache in self.caches:
            cache.compact_if_needed(np.array(keep, dtype=np.int64))
        self.rows = [self.rows[i] for i in keep]
        if self.policy is not None:
            for row in gone:
                if row.policy is None:
                    self.policy.remove(row)
        return gone

    def _enter(self, rows: list[Row]) -> None:
        self.rows += rows
        if self.policy is not None:
            for row in rows:
                if row.policy is None:
                    self.policy.add(row)

    def _drafts(self) -> tuple[list[int], list[tuple[float, float] | None]]:
        """The drafts each row verifies next, and what the cost model expects of its step (adaptive pard)."""
        most = [min(self.k, row.budget - 1) for row in self.rows]  # never verify drafts past a limit
        if self.mode == "ar":
            return [0] * len(self.rows), [None] * len(self.rows)
        if self.policy is None:
            return most, [None] * len(self.rows)
        ns, modelled = list(most), [None] * len(self.rows)
        shared = [i for i, row in enumerate(self.rows) if row.policy is None]
        if shared:
            context = max(self.rows[i].context for i in shared)
            unseen = max(len(self.rows[i].draft_new) for i in shared)
            rows = [self.rows[i] for i in shared]
            n, seconds = self.policy.choose(rows, context, max(most[i] for i in shared), unseen)
            for i in shared:
                ns[i] = min(n, most[i])
                modelled[i] = self.policy.expected(self.rows[i], ns[i]), seconds[ns[i]]
        for i, row in enumerate(self.rows):
            if row.policy is not None:
                ns[i], seconds = row.policy.choose([row], row.context, most[i], len(row.draft_new))
                modelled[i] = row.policy.expected(row, ns[i]), seconds[ns[i]]
        return ns, modelled  # expected before the step updates the estimates

    def _run(self, ns: list[int]) -> StepResult:
        target_new = [row.target_new for row in self.rows]
        draft_new = [row.draft_new for row in self.rows]
        params, rngs = [row.params for row in self.rows], [row.rng for row in self.rows]
        if max(ns) < 1:
            return ar_step(self.caches[0], target_new, draft_new, params, rngs)
        if self.mode in ("pard", "pard-fixed"):
            return pard_step(self.caches[0], self.caches[1], target_new, draft_new, ns, params, rngs)
        return ar_draft_step(self.caches[0], self.caches[1], target_new, draft_new, ns, params, rngs, self.vocab)

    def _observe(self, ns: list[int], result: StepResult) -> None:
        if self.policy is None:
            return
        accepted = [step.accepted for step in result.rows]
        shared = [i for i, row in enumerate(self.rows) if row.policy is None]
        if shared:
            self.policy.observe([self.rows[i] for i in shared], [ns[i] for i in shared], [accepted[i] for i in shared])
        for i, row in enumerate(self.rows):
            if row.policy is not None:
                row.policy.observe([row], ns[i], [accepted[i]])
