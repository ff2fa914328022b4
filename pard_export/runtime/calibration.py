"""Calibration of adaptive drafting for one engine on one host: the step costs measured here (drafting.StepCosts)
and the draft's acceptance per position on a few prompts. Kept in `calibration.json` beside the engine (or in the
user's cache folder where the engine folder is read-only), one entry per host and settings; an entry of another
engine, host or runtime is measured again, never used."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import GenerationError
from ..files import write_atomic
from ..host import cpu_count, cpu_name
from ..manifest import CALIBRATION_FILE, MANIFEST_FILE
from .decoding import ar_step, pard_step
from .drafting import CATCH_UP_FROM, StepCosts, expected_tokens
from .interfaces import KVCache
from .sampling import SamplingParams

FORMAT = 2  # 2: the catch-up cost per calibrated context
CONTEXTS = (32, 512, 2048)  # context lengths the step costs are measured at (those that fit the engine)
COST_BATCH = 4  # the larger batch measured, at the first context
REPEATS = 5  # timed rounds over n = 0..K at each point (the median is kept); one more warms up
CATCH_UP_TOKENS = 16  # extra unseen draft tokens timed for StepCosts.catch_up (at each context)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    costs: StepCosts
    acceptance: tuple[float, ...]  # P(draft j accepted | drafts before j accepted), j = 1..K, on the prompts
    measured: str = ""  # when (UTC, ISO 8601)
    seconds: float = 0.0  # how long measuring took

    @property
    def k(self) -> int:
        return len(self.acceptance)

    def to_dict(self) -> dict:
        return {
            "costs": self.costs.to_dict(),
            "acceptance": list(self.acceptance),
            "measured": self.measured,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(
            StepCosts.from_dict(data["costs"]),
            tuple(float(a) for a in data["acceptance"]),
            str(data["measured"]),
            float(data["seconds"]),
        )


def settings_key(backend: str, providers: list[str], threads: int | None) -> str:
    """What the measured costs hold for: this machine, the runtime and its settings."""
    import onnxruntime

    return (
        f"{os.uname().nodename} | {cpu_name()} x{cpu_count()} | {backend} {','.join(providers)} threads={threads or 0}"
        f" | onnxruntime {onnxruntime.__version__} | pard-export {__version__}"
    )


def engine_id(engine_dir: Path) -> str:
    """The manifest's hash: it names every file of the engine with its own hash."""
    return hashlib.sha256((engine_dir / MANIFEST_FILE).read_bytes()).hexdigest()


def calibration_paths(engine_dir: Path, engine: str) -> list[Path]:
    """Where a calibration of the engine `engine` (engine_id) is kept, in order: beside it, then the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pard-export" / "calibration"
    return [engine_dir / CALIBRATION_FILE, cache / f"{engine[:32]}.json"]


def load_calibration(engine_dir: Path, key: str, k: int) -> tuple[Calibration, Path] | None:
    """The entry for `key` and its file, or None (with a one-line warning where a file exists but cannot be used)."""
    engine = engine_id(engine_dir)
    for path in calibration_paths(engine_dir, engine):
        data = _read(path, engine, warn=True)
        entry = data["entries"].get(key) if data else None
        if entry is None:
            continue
        try:
            calibration = Calibration.from_dict(entry)
        except (KeyError, TypeError, ValueError):
            log.warning("%s has an unreadable entry for this host; calibrating again", path)
            continue
        if calibration.k == k and calibration.costs.k == k:
            return calibration, path
    return None


def save_calibration(engine_dir: Path, key: str, calibration: Calibration) -> Path | None:
    """Add the entry to the first writable place; None where none is (the calibration then lives in memory only)."""
    engine = engine_id(engine_dir)
    for path in calibration_paths(engine_dir, engine):
        data = _read(path, engine, warn=False) or {"format": FORMAT, "engine": engine, "entries": {}}
        data["entries"][key] = calibration.to_dict()
        try:
            write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
            return path
        except OSError:
            continue
    log.warning(
        "nowhere to keep the calibration of %s (read-only engine folder and cache); it holds for this process only",
        engine_dir,
    )
    return None


def _read(path: Path, engine: str, warn: bool) -> dict | None:
    """The calibration file's contents where it is one of this engine's; else None (said in one line if warn)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data, problem = None, "is not a calibration file (unreadable JSON)"
    else:
        valid = isinstance(data, dict) and isinstance(data.get("entries"), dict) and isinstance(data.get("format"), int)
        problem = None if valid else "is not a calibration file"
        if valid and data.get("format") != FORMAT:
            problem = f"holds calibration format {data.get('format')}, this version keeps format {FORMAT}"
        elif valid and data.get("engine") != engine:
            problem = "was measured for another engine"
    if problem is None:
        return data
    if warn:
        log.warning("%s %s; calibrating again", path, problem)
    return None


def measure_costs(target: KVCache, draft: KVCache, k: int, max_seq_len: int, vocab: int, seed: int = 0) -> StepCosts:
    """Time steps verifying n = 0..K drafts on random tokens at each context of CONTEXTS that fits (batch 1), and at
    COST_BATCH rows at the first; every step is undone after timing, so the context stays put."""
    rng = _Tokens(vocab, seed)
    room = max_seq_len - 4 * (k + 2)  # a step's tokens on top of the context
    contexts = [c for c in CONTEXTS if c <= room] or [max(1, room)]
    seconds, catch_up = [], []
    _start(target, draft, 1)
    filled = 0
    for context in contexts:
        _fill(target, draft, rng, context - filled)
        filled = context
        seconds.append(_time_steps(target, draft, k, rng, batch=1))
        catch_up.append(_catch_up(target, draft, rng, seconds[-1], min(CATCH_UP_TOKENS, room - context)))
    single = StepCosts(tuple(contexts), tuple(tuple(s) for s in seconds), 1, (), tuple(catch_up))
    try:
        _start(target, draft, COST_BATCH)
    except GenerationError:  # an engine built for smaller batches (tensorrt --max-batch): batch-1 costs scale
        return single
    _fill(target, draft, rng, contexts[0], batch=COST_BATCH)
    batch_seconds = tuple(_time_steps(target, draft, k, rng, batch=COST_BATCH))
    return dataclasses.replace(single, batch=COST_BATCH, batch_seconds=batch_seconds)


def _catch_up(target: KVCache, draft: KVCache, rng, usual: list[float], extra: int) -> float:
    """Seconds per token the draft reads beyond the usual CATCH_UP_FROM (extra more: a short max_seq_len leaves
    less room; none: 0). Both timings are taken against an ar step of their own round (usual: [ar, one draft]), so
    the machine's pace changing between them cancels."""
    if extra <= 0:
        return 0.0
    late = _time_steps(target, draft, 1, rng, batch=1, unseen=CATCH_UP_FROM + extra)
    return max(0.0, (late[1] - late[0]) - (usual[1] - usual[0])) / extra


def _start(target: KVCache, draft: KVCache, batch: int) -> None:
    target.start(batch)
    draft.start(batch)


def _fill(target: KVCache, draft: KVCache, rng, tokens: int, batch: int = 1) -> None:
    """Add `tokens` random tokens to every row of both caches (the target's last one stays pending, as in decoding)."""
    if tokens <= 0:
        return
    rows = rng.draw(batch, tokens)
    pard_step(target, draft, rows, rows, [1] * batch, [SamplingParams()] * batch, [None] * batch)


def _time_steps(target: KVCache, draft: KVCache, k: int, rng, batch: int, unseen: int = CATCH_UP_FROM) -> list[float]:
    """Median seconds of a step verifying n drafts, n = 0..K, the draft reading `unseen` tokens first; each step
    is undone after timing."""
    params, rngs = [SamplingParams()] * batch, [None] * batch
    times: list[list[float]] = [[] for _ in range(k + 1)]
    for repeat in range(REPEATS + 1):
        for n in range(k + 1):
            target_new, draft_new = rng.draw(batch, 1), rng.draw(batch, unseen)
            start = time.perf_counter()
            if n == 0:
                result = ar_step(target, target_new, draft_new, params, rngs)
            else:
                result = pard_step(target, draft, target_new, draft_new, [n] * batch, params, rngs)
            if repeat:
                times[n].append(time.perf_counter() - start)
            target.forget_last(np.array([1 + row.accepted for row in result.rows]))
            if n:
                draft.forget_last(np.full(batch, unseen))
            target.compact_if_needed()
            draft.compact_if_needed()
    return [statistics.median(t) for t in times]


class _Tokens:
    """Random token ids: costs do not depend on which tokens run."""

    def __init__(self, vocab: int, seed: int):
        self.vocab, self.rng = vocab, np.random.default_rng(seed)

    def draw(self, batch: int, length: int) -> list[list[int]]:
        return self.rng.integers(0, self.vocab, (batch, length)).tolist()


def modelled_speeds(calibration: Calibration, graph_k: int, candidates) -> dict[int, float]:
    """Tokens per second adaptive pard is modelled to reach with a draft graph of k mask slots, for each candidate
    k, from the calibration of a graph of graph_k slots, averaged over the calibrated contexts (batch 1). A k-slot
    draft forward reads graph_k - k fewer tokens (the catch-up cost each); the acceptance of positions 1..k does not
    depend on the slots after them (a mask attends only to what precedes it). Each step picks its best n <= k."""
    tokens = expected_tokens(np.asarray(calibration.acceptance))  # [graph_k + 1]
    speeds = {}
    for k in candidates:
        rates = []
        for context in calibration.costs.contexts:
            seconds = calibration.costs.at(context)[: k + 1]
            fewer = calibration.costs.catch_up_seconds(CATCH_UP_FROM + graph_k - k, context)
            seconds[1:] = np.maximum(seconds[1:] - fewer, seconds[0])
            rates.append(float(np.max(tokens[: k + 1] / seconds)))
        speeds[k] = float(np.mean(rates))
    return speeds


def conditional_acceptance(accepted: list[int], drafted: list[int]) -> tuple[float, ...]:
    """P(draft j accepted | drafts 1..j-1 accepted) from per-position counts (accepted[j] of drafted[j] steps that
    verified position j): the steps that reached position j are those that accepted j-1."""
    rates, reached = [], drafted[0] if drafted else 0
    for hits, tries in zip(accepted, drafted):
        reached = min(reached, tries)
        rates.append(hits / reached if reached else 0.0)
        reached = hits
    return tuple(rates)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
