"""How many drafts each step verifies (adaptive PARD): the engine's step costs on this host, each row's acceptance
so far, and the n in 0..K with the most expected tokens per second. n = 0 is an ar step.

The draft graph always proposes K tokens in one forward; verifying only n of them makes the target's forward
shorter (n + 1 tokens). Where the draft agrees rarely, or the target's forward of several tokens costs much more
than one (quantized weights on a CPU, long contexts), fewer drafts, or none, are faster.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Tuned by replaying the SmolLM2 engines' measured per-position agreement (chat, documents, random tokens; fp32 and
# int4) through this policy with their calibrated costs (docs/benchmarks.md, "Adaptive drafting").
PRIOR_WEIGHT = 1.0  # the calibrated rates count as this many observations of each position
FORGET = 0.95  # per observation of a position: the estimate follows about the last 20 steps of this row
DRIFT = 0.9  # per step where a position goes unverified: it returns towards the calibrated rate
FIRST_PROBE = 16  # ar steps before one step verifies a single draft again (a probe)
LAST_PROBE = 64  # the wait doubles after each probe whose accepted drafts did not pay for it, up to this
PROBE_SCALE = 150.0  # where drafting is modelled only a little slower, a probe comes after 150 x the shortfall ar steps
SOONEST_PROBE = 4  # but not before this many
PROBE_SHARE = 0.03  # and a probe's modelled loss, catch-up included, within 3 % of the ar steps' time before it
WORTH_TRYING = 0.95  # below this speed of ar steps at the calibrated rates, a request does not try drafting
HYSTERESIS = 0.05  # a row that drafts keeps drafting until that is modelled 5 % slower than ar steps (estimate noise)
CATCH_UP_FROM = 2  # tokens the draft reads in a step that follows a step with one accepted draft


@dataclass(frozen=True)
class StepCosts:
    """Seconds per decoding step that verifies n drafts (index n = 0..K; 0 is an ar step, n >= 1 one draft forward
    plus a target forward of n + 1 tokens), measured at batch 1 at a few context lengths, and at a larger batch at
    the first of them (its ratio to batch 1 scales every context)."""

    contexts: tuple[int, ...]  # ascending
    seconds: tuple[tuple[float, ...], ...]  # [contexts][K + 1]
    batch: int = 1  # the larger batch measured (1: none)
    batch_seconds: tuple[float, ...] = ()  # [K + 1] at contexts[0]
    # [contexts] seconds per token the draft has not seen beyond CATCH_UP_FROM (after ar steps); () where not measured
    catch_up: tuple[float, ...] = ()

    def __post_init__(self):
        # [C, K+2]: the catch-up cost rides along as the last column, interpolated in the context like the steps
        table = np.column_stack([self.seconds, self.catch_up or [0.0] * len(self.contexts)]).astype(np.float64)
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_floor", table.min(axis=0))
        object.__setattr__(self, "_slopes", np.diff(table, axis=0) / np.diff(self.contexts)[:, None])  # [C-1, K+2]
        per_row = (np.asarray(self.batch_seconds) / table[0, :-1] - 1) / (self.batch - 1) if self.batch > 1 else None
        object.__setattr__(self, "_per_row", per_row)

    @property
    def k(self) -> int:
        return len(self.seconds[0]) - 1

    def at(self, context: int, batch: int = 1) -> np.ndarray:
        """Seconds per step for n = 0..K at this context length and batch: piecewise linear in the context (and
        beyond the ends along the nearest segment), linear in the batch."""
        seconds = self._at(context)[:-1]
        seconds[1:] = np.maximum.accumulate(seconds[1:])  # verifying more drafts never costs less (timing noise)
        if batch > 1 and self._per_row is not None:
            seconds *= 1 + self._per_row * (batch - 1)
        return seconds

    def catch_up_seconds(self, unseen: int, context: int) -> float:
        """What a drafting step costs beyond seconds[n] when the draft has `unseen` tokens to read first (after ar
        steps, every one of them) at this context length."""
        if unseen <= CATCH_UP_FROM:  # every drafting step after a drafting step: no second lookup
            return 0.0
        return (unseen - CATCH_UP_FROM) * float(self._at(context)[-1])

    def _at(self, context: int) -> np.ndarray:
        """The table's row at this context (called before every step: plain Python for the segment)."""
        contexts, i = self.contexts, 0
        while i < len(contexts) - 2 and context > contexts[i + 1]:
            i += 1
        row = self._table[i] if len(contexts) == 1 else self._table[i] + self._slopes[i] * (context - contexts[i])
        return np.maximum(row, self._floor)  # never below what was measured

    def to_dict(self) -> dict:
        return {
            "contexts": list(self.contexts),
            "seconds": [list(row) for row in self.seconds],
            "batch": self.batch,
            "batch_seconds": list(self.batch_seconds),
            "catch_up": list(self.catch_up),
        }

    @classmethod
    def from_dict(cls, data: dict) -> StepCosts:
        return cls(
            tuple(int(c) for c in data["contexts"]),
            tuple(tuple(float(s) for s in row) for row in data["seconds"]),
            int(data["batch"]),
            tuple(float(s) for s in data["batch_seconds"]),
            tuple(float(s) for s in data["catch_up"]),
        )


def expected_tokens(rates: np.ndarray) -> np.ndarray:
    """[..., K+1]: the tokens a step emits on average when it verifies n = 0..K drafts: the target's own, plus
    draft i when drafts 1..i are all accepted (rates[..., i-1] = P(draft i accepted | drafts before it accepted))."""
    reach = np.cumsum(np.cumprod(rates, axis=-1), axis=-1)
    return 1.0 + np.concatenate([np.zeros_like(reach[..., :1]), reach], axis=-1)


def step_speeds(step_seconds: Sequence[float], rows_rates: Sequence[np.ndarray]) -> np.ndarray:
    """Expected tokens per second over all rows of a step verifying n = 0..len(step_seconds)-1 drafts."""
    return _speeds(step_seconds, expected_tokens(np.asarray(rows_rates, dtype=np.float64)))


def _speeds(step_seconds: Sequence[float], rows_tokens: Sequence[np.ndarray]) -> np.ndarray:
    """step_speeds from each row's expected_tokens."""
    tokens = rows_tokens[0] if len(rows_tokens) == 1 else np.sum(rows_tokens, axis=0)
    return tokens[: len(step_seconds)] / step_seconds


def choose_drafts(step_seconds: Sequence[float], rows_rates: Sequence[np.ndarray]) -> int:
    """The n in 0..len(step_seconds)-1 with the most expected tokens per second over all rows, one n for the batch
    (ties: the fewer drafts)."""
    return best_drafts(step_speeds(step_seconds, rows_rates))


def best_drafts(speeds: np.ndarray) -> int:
    """The n with the most expected tokens per second (ties: the fewer drafts)."""
    return int(np.argmax(speeds))


class Acceptance:
    """One row's estimate of P(draft j accepted | drafts before j accepted), j = 1..K: forgetful counts of its own
    steps over a prior at the calibrated rates."""

    def __init__(self, prior: np.ndarray):
        self.prior = np.asarray(prior, dtype=np.float64)
        self.hits = np.zeros_like(self.prior)
        self.tries = np.zeros_like(self.prior)
        self._estimate()

    def _estimate(self) -> None:
        """rates, and tokens (expected_tokens of them): kept between observations, as a step reads them every time."""
        first = (self.hits[0] + PRIOR_WEIGHT * self.prior[0]) / (self.tries[0] + PRIOR_WEIGHT)
        # Deeper positions are verified less often: their prior is the calibrated profile, scaled by how this row's
        # first draft fares against the calibration's.
        prior = np.clip(self.prior * (first / max(self.prior[0], 1e-3)), 0.0, 1.0)
        prior[0] = self.prior[0]
        self.rates = (self.hits + PRIOR_WEIGHT * prior) / (self.tries + PRIOR_WEIGHT)
        self.tokens = expected_tokens(self.rates)
        # the first rate's standard error, relative to the tokens a one-draft step expects: the modelled speed's noise
        self.noise = float(np.sqrt(first * (1 - first) / (self.tries[0] + PRIOR_WEIGHT)) / (1 + first))

    def observe(self, drafted: int, accepted: int) -> None:
        """A step verified `drafted` drafts and accepted the first `accepted`: positions 1..accepted were accepted,
        position accepted + 1 (if drafted) was rejected, later ones were not decided."""
        decided = min(accepted + 1, drafted)
        self.hits[:decided] *= FORGET
        self.tries[:decided] *= FORGET
        self.hits[:accepted] += 1
        self.tries[:decided] += 1
        self.hits[decided:] *= DRIFT
        self.tries[decided:] *= DRIFT
        self._estimate()


class AdaptiveDrafts:
    """The choice of n for each step of one request (a batch of rows): the best n by the costs and every row's
    estimate, with three amendments:
    - the first step always drafts, so the draft reads the prompt with the target's prefill, not in a later probe;
    - a step after a drafting step keeps drafting unless that is modelled HYSTERESIS slower than an ar step (a few
      rejections pull an estimate under the line more often than the text changes), or less where the estimate is
      surer (_band);
    - after FIRST_PROBE ar steps in a row one step verifies a single draft (a probe), so a change of text (code
      after prose) is noticed. Each probe whose accepted drafts did not pay for its longer step (one row: nothing
      accepted) doubles the wait, up to LAST_PROBE; one that paid probes again at once; where drafting is modelled
      only a little slower, the probe comes after PROBE_SCALE x the shortfall ar steps (at least SOONEST_PROBE); and
      a probe whose modelled loss exceeds PROBE_SHARE of the ar time before it waits longer."""

    def __init__(self, costs: StepCosts, prior: Sequence[float], rows: int | Iterable[Hashable] = 1):
        """rows: the keys of the rows (or a count: keys 0 .. rows-1); rows that join later are add()ed."""
        self.costs = costs
        self.prior = np.asarray(prior, dtype=np.float64)
        self.rows: dict[Hashable, Acceptance] = {}
        for key in range(rows) if isinstance(rows, int) else rows:
            self.add(key)
        self.ar_steps = 0
        self.probe_after = FIRST_PROBE
        self.started = self.drafting = self.probing = False
        self.probe_seconds = np.ones(2)  # the modelled step seconds when the last probe was chosen
        self.trying = True  # drafting is worth trying at all (decided at the first step)

    def add(self, key: Hashable) -> None:
        self.rows[key] = Acceptance(self.prior)

    def remove(self, key: Hashable) -> None:
        del self.rows[key]

    def choose(
        self, rows: Sequence[Hashable], context: int, most: int, unseen: int = CATCH_UP_FROM
    ) -> tuple[int, np.ndarray]:
        """(n <= most, the modelled seconds of each n) for the next step of `rows` (indices into the request) at
        this context length, where the draft has `unseen` tokens to read before it drafts (the most of any row).
        After ar steps that catch-up is part of what drafting costs: resuming pays it, a probe pays it."""
        plain = self.costs.at(context, len(rows))[: most + 1]
        seconds = plain.copy()
        seconds[1:] += self.costs.catch_up_seconds(unseen, context)
        speeds = _speeds(seconds, [self.rows[r].tokens for r in rows])
        n = best_drafts(speeds)
        self.probing = False
        if most >= 1:
            drafting_best = 1 + int(np.argmax(speeds[1:]))
            if not self.started:
                self.started, self.trying = True, self._worth_trying(plain, len(rows))
                n = max(n, drafting_best) if self.trying else n
            elif n == 0 and self.drafting and speeds[drafting_best] >= (1 - self._band(rows)) * speeds[0]:
                n = drafting_best
            if n:
                self.ar_steps, self.probe_after = 0, FIRST_PROBE
            elif self.trying:
                n = self._probe_due(speeds, seconds)
                self.probe_seconds = plain
        self.drafting = n > 0
        return n, seconds

    def _band(self, rows: Sequence[Hashable]) -> float:
        """How much slower drafting may be modelled and a drafting step still go on: HYSTERESIS, or less where the
        rows' first-draft estimates are surer than that (a draft that always agrees: none)."""
        return min(HYSTERESIS, float(np.mean([self.rows[r].noise for r in rows])))

    def _worth_trying(self, seconds: np.ndarray, rows: int) -> bool:
        """Whether drafting at the calibrated rates is at least WORTH_TRYING x as fast as ar steps here; where it
        is not, a request drafts only where its estimates say so, and never probes."""
        speeds = step_speeds(seconds, [self.prior] * rows)
        return bool(speeds[1:].max() >= WORTH_TRYING * speeds[0])

    def _probe_due(self, speeds: np.ndarray, seconds: np.ndarray) -> int:
        """1 where this ar step should verify a draft after all (a probe), else 0. Besides the wait, a probe's
        modelled loss against ar steps (its catch-up included) must fit PROBE_SHARE of the ar steps' time since the
        last drafting step: where the draft costs much (as large as the target), probes stay rare or stop."""
        self.ar_steps += 1
        soon = PROBE_SCALE * (1.0 - speeds[1:].max() / speeds[0])
        if self.ar_steps <= (max(soon, SOONEST_PROBE) if soon < FIRST_PROBE else self.probe_after):
            return 0
        loss = seconds[1] * (1.0 - speeds[1] / speeds[0])
        if loss > PROBE_SHARE * self.ar_steps * seconds[0]:
            return 0
        self.ar_steps, self.probing = 0, True
        self.probe_after = min(2 * self.probe_after, LAST_PROBE)  # kept only if nothing is accepted
        return 1

    def observe(self, rows: Sequence[Hashable], drafted: int | Sequence[int], accepted: Sequence[int]) -> None:
        """A step verified `drafted` drafts (one count, or one per row) and each row accepted its first accepted[i]."""
        counts = [drafted] * len(rows) if isinstance(drafted, (int, np.integer)) else list(drafted)
        if not any(counts):
            return
        for r, n, a in zip(rows, counts, accepted):
            if n:
                self.rows[r].observe(n, a)
        if self.probing and self._probe_paid(accepted):  # probe again at once, unless the estimates now draft
            self.ar_steps = self.probe_after = FIRST_PROBE

    def _probe_paid(self, accepted: Sequence[int]) -> bool:
        """Whether the probe's tokens came at least as fast as an ar step's would have, its catch-up aside (paid
        already): for one row, any accepted draft; for a batch, enough of them (one row in 16 agreeing does not pay
        for a batch's longer step)."""
        seconds = self.probe_seconds
        return (len(accepted) + sum(accepted)) * seconds[0] >= len(accepted) * seconds[1]

    def expected(self, row: Hashable, n: int) -> float:
        return float(self.rows[row].tokens[n])
