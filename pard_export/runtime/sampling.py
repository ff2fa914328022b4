"""Token choice: greedy, or sampling with temperature / top-k / top-p, and speculative (rejection) sampling
that keeps the target's distribution exactly (pard-method.md §4; Leviathan et al. 2023, Chen et al. 2023).

p = the target's warped distribution, q = the draft's proposal distribution (one-hot for argmax drafts).
Draft i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the token is drawn
from norm(max(p_i - q_i, 0)); when every draft is accepted, a bonus token is drawn from p_{n+1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GenerationError

_TOP_P_CANDIDATES = 1024  # top-p usually needs far fewer ids; sort only these when they hold enough mass


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None
    draft_sampling: bool = False  # sample drafts from the draft's distribution instead of taking its argmax

    def __post_init__(self):
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise GenerationError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k}")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise GenerationError(f"seed must be an integer >= 0 (or None: a fresh one), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def warp(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities (float64, last axis) after temperature, top-k and top-p."""
    scaled = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -params.top_k, axis=-1)[..., -params.top_k, None]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if params.top_p < 1:
        probs = np.apply_along_axis(_top_p, -1, probs, params.top_p)
    return probs


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely ids whose mass reaches top_p (the first id always stays)."""
    candidates = (
        np.argpartition(probs, -_TOP_P_CANDIDATES)[-_TOP_P_CANDIDATES:] if probs.size > _TOP_P_CANDIDATES else None
    )
    if candidates is None or probs[candidates].sum() < top_p:
        candidates = np.arange(probs.size)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    mass_before = np.cumsum(probs[order]) - probs[order]
    kept = order[mass_before < top_p]
    out = np.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One id from a probability vector (inverse CDF: one uniform draw)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def propose(draft_logits: np.ndarray, argmax_ids: np.ndarray, params: SamplingParams, rng: np.random.Generator):
    """Drafts for one row and their proposal distributions q ([n, V]); q is None for argmax (one-hot) drafts."""
    if params.greedy or not params.draft_sampling or not len(argmax_ids):
        return argmax_ids, None
    q = warp(draft_logits, params)
    return np.array([sample(qi, rng) for qi in q], dtype=np.int64), q


def verify_greedy(drafts: np.ndarray, target_logits: np.ndarray) -> tuple[int, int]:
    """(accepted drafts, the target's next token) for greedy decoding; target_logits is [n+1, V]."""
    target_ids = target_logits.argmax(-1)
    mismatches = np.flatnonzero(drafts != target_ids[: len(drafts)])
    a = int(mismatches[0]) if len(mismatches) else len(drafts)
    return a, int(target_ids[a])


def verify_sampled(
    drafts: np.ndarray,
    q: np.ndarray | None,
    target_logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
) -> tuple[int, int]:
    """(accepted drafts, the next token) by speculative sampling. Target probabilities are computed only for
    the positions the acceptance walk reaches."""
    for i, d in enumerate(drafts):
        p = warp(target_logits[i], params)
        q_d = 1.0 if q is None else q[i, d]
        if rng.random() * q_d < p[d]:  # accept with probability min(1, p(d) / q(d))
            continue
        residual = p.copy()
        if q is None:
            residual[d] = 0.0
        else:
            residual[: q.shape[1]] = np.maximum(residual[: q.shape[1]] - q[i], 0.0)
        return i, sample(residual, rng)
    return len(drafts), sample(warp(target_logits[len(drafts)], params), rng)
