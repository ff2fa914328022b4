"""`Session`: load an engine directory once, then generate with PARD or a baseline, one prompt or a batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import DRAFT, DRAFT_AR, MODES, PLUGIN, TARGET, GraphSpec, cache_capacity
from ..errors import EngineError, GenerationError
from ..manifest import TOKENIZER_DIR, Manifest, read_manifest, verify_hashes
from ..prompts import CALIBRATION_PROMPTS, load_prompts
from .backend_ort import OrtGraph
from .batch import DecodeBatch, Row
from .cache import BatchCache
from .calibration import (
    Calibration,
    conditional_acceptance,
    load_calibration,
    measure_costs,
    now_iso,
    save_calibration,
    settings_key,
)
from .decoding import GenerationStats, StatsRecorder, step_lengths
from .interfaces import Graph, KVCache
from .plugin_cache import PluginCache
from .sampling import SamplingParams
from .streaming import RowText
from .text import TextCodec

_IN_USE = (
    "this Session is already generating (an unfinished stream, or another thread); finish or close that "
    "stream first, batch the prompts with generate_batch, or give each thread its own Session"
)
CALIBRATION_TOKENS = 48  # new tokens per calibration prompt (the acceptance the estimates start from)

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]  # the new tokens only
    text: str
    stats: GenerationStats

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason

    def to_dict(self) -> dict:
        return {"token_ids": self.token_ids, "text": self.text, "stats": self.stats.to_dict()}


@dataclass(frozen=True)
class StreamEvent:
    """What one row of a batch produced in one step; `result` is set on the row's last event."""

    row: int
    text: str  # newly visible text (may be empty while a character or a possible stop string is incomplete)
    token_ids: list[int]  # the tokens this step added to the row
    result: GenerationResult | None = None
    error: str | None = None  # set instead of result on the last event of a request the Scheduler failed to finish


@dataclass(frozen=True)
class DecodeRequest:
    """A generation's checked settings."""

    max_new_tokens: tuple[int, ...]  # per row
    mode: str
    params: SamplingParams
    stop: tuple[str, ...]


class Session:
    """The compiled draft and target of one engine directory (numpy + onnxruntime; no torch).

    One generation at a time: a Session owns its KV caches, so a second generation while one is unfinished (an
    open stream, another thread) raises GenerationError instead of sharing them. Serve concurrent requests with a
    batch (generate_batch) or one Session per worker. close() frees the graphs (device memory included); a closed
    Session refuses work."""

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        verify: bool = False,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        calibration: Calibration | None = None,
    ):
        """calibration: the step costs and acceptance adaptive pard starts from (default: measured on first use and
        kept beside the engine, see calibrate())."""
        self.engine_dir = Path(engine_dir)
        self.manifest: Manifest = read_manifest(self.engine_dir)
        if verify:
            verify_hashes(self.engine_dir, self.manifest)
        if self.manifest.backend not in ("onnxruntime", "tensorrt"):
            raise EngineError(
                f"{self.engine_dir} was built for {self.manifest.backend!r}; this runtime runs onnxruntime "
                "and tensorrt engines"
            )
        self.codec = TextCodec(self.engine_dir / TOKENIZER_DIR)
        self._caches = {role: self._cache(role, threads, providers) for role in self.manifest.models}
        self._eos = frozenset(self.manifest.eos_token_ids)
        self._threads = threads
        self._calibration = calibration
        self.calibration_file: Path | None = None  # where calibrate() found or kept it
        self._in_use = threading.Lock()  # held by the generation (or calibration) that owns the caches
        self._closed = False

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in MODES if m != "ar-draft" or DRAFT_AR in self._caches)

    @property
    def backend_seconds(self) -> float:
        """Time spent inside the backend (ONNX Runtime or TensorRT) so far, all graphs together; the rest of a
        generation's time is this runtime's own."""
        return sum(cache.graph.busy_s for cache in self._caches.values())

    onnxruntime_seconds = backend_seconds  # the name before TensorRT engines ran here too

    @property
    def max_batch(self) -> int | None:
        """The most rows one generation may decode together (a TensorRT plan's profiles); None: no limit."""
        limits = [cache.graph.max_batch for cache in self._caches.values() if cache.graph.max_batch]
        return min(limits, default=None)

    @property
    def providers(self) -> list[str]:
        return self._caches[TARGET].graph.providers

    @property
    def calibration(self) -> Calibration:
        """What adaptive pard decides from: loaded, or measured now (seconds to a minute, once per engine and host)."""
        if self._calibration is None:
            self._calibration = self.calibrate()
        return self._calibration

    def calibrate(self, *, force: bool = False, prompts: str | Path | None = None) -> Calibration:
        """Measure the step costs on this host and the draft's acceptance on `prompts` (default: the bundled
        calibration prompts), keep them (calibration.py) and use them from now on. Without force, a kept calibration
        of this engine, host and settings is loaded instead."""
        self._check_open()
        key = settings_key(self.manifest.backend, self.providers, self._threads)
        kept = None if force or prompts else load_calibration(self.engine_dir, key, self.manifest.k)
        if kept is None:
            self._check_idle()
            measured = self._measure_calibration(Path(prompts) if prompts else CALIBRATION_PROMPTS)
            kept = measured, save_calibration(self.engine_dir, key, measured)
        self._calibration, self.calibration_file = kept
        return self._calibration

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        mode: str = "pard",
        chat: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        draft_sampling: bool = False,
        stop: Sequence[str] = (),
    ):
        """One prompt -> GenerationResult; a list of prompts -> a list (as generate_batch).

        Temperature 0 (default) is greedy and equals the target's own greedy decoding token for token."""
        settings = dict(
            max_new_tokens=max_new_tokens,
            mode=mode,
            chat=chat,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            draft_sampling=draft_sampling,
            stop=stop,
        )
        if _is_batch(prompt):
            return self.generate_batch(prompt, **settings)
        return self.generate_batch([prompt], **settings)[0]

    def generate_batch(self, prompts: Sequence[Prompt], **settings) -> list[GenerationResult]:
        """B prompts decoded together; at temperature 0 each row equals its own batch-1 output.
        max_new_tokens may be one limit or one per prompt."""
        ids, request = self._prepare(prompts, **settings)
        results: list[GenerationResult | None] = [None] * len(ids)
        for event in self._decode(ids, request, with_text=bool(request.stop)):
            if event.result is not None:
                results[event.row] = event.result
        return results

    def stream(self, prompt: Prompt, **settings) -> Iterator[str]:
        """Text pieces as soon as tokens are accepted (never half a character, never part of a stop string)."""
        for event in self.stream_batch([prompt], **settings):
            if event.text:
                yield event.text

    def stream_batch(self, prompts: Sequence[Prompt], **settings) -> Iterator[StreamEvent]:
        """generate_batch as it happens: a StreamEvent per row and step; a row's last one carries its result.
        Everything is checked before the first event, so bad input raises before any work."""
        ids, request = self._prepare(prompts, **settings)
        return self._decode(ids, request, with_text=True)

    def close(self) -> None:
        """Free every graph (sessions, device buffers, CUDA graphs and streams); later calls raise GenerationError.
        A stream still open raises GenerationError at its next step."""
        for cache in self._caches.values():
            cache.graph.close()
        self._caches, self._closed = {}, True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def kv_bytes(self, mode: str, tokens: int) -> int:
        """The KV memory a row of `tokens` tokens takes in `mode`'s caches."""
        return sum(cache.row_bytes(tokens) for cache in self._mode_caches(mode))

    def _mode_caches(self, mode: str) -> list[KVCache]:
        """The caches `mode` decodes with: the target's, then the draft's where the mode has one."""
        drafts = [] if mode == "ar" else [self._caches[DRAFT_AR if mode == "ar-draft" else DRAFT]]
        return [self._caches[TARGET], *drafts]

    def _cache(self, role: str, threads, providers) -> KVCache:
        entry = self.manifest.models[role]
        self._check_attention(role)
        graph = self._graph(entry.file, entry.io, threads, providers)
        if entry.io.buffered:
            capacity = cache_capacity(self.manifest.max_seq_len, self.manifest.k)
            return PluginCache(graph, entry.io, entry.kv_heads, entry.head_dim, capacity)
        return BatchCache(graph, entry.io, entry.kv_heads, entry.head_dim)

    def _graph(self, file: str, io: GraphSpec, threads, providers) -> Graph:
        if self.manifest.backend == "tensorrt":  # imported only here: the slim runtime never loads tensorrt otherwise
            from .backend_trt import TrtGraph

            return TrtGraph(self.engine_dir / file, io, capture=step_lengths(self.manifest.k))
        return OrtGraph(self.engine_dir / file, io, threads=threads, providers=providers)

    def _measure_calibration(self, prompts: Path) -> Calibration:
        started = time.perf_counter()
        items = load_prompts(prompts)
        m = self.manifest
        with self.exclusive():
            costs = measure_costs(self._caches[TARGET], self._caches[DRAFT], m.k, m.max_seq_len, m.vocab_size)
        chat = self.codec.chat_template is not None
        texts = [item.get("prompt_ids") or item["prompt"] for item in items]
        encode = self.codec.encode_chat if chat else self.codec.encode
        ids = [
            (encode(text) if isinstance(text, str) else list(text))[-(m.max_seq_len // 2) :]  # room for answers
            for text in texts
        ]
        try:
            results = self.generate_batch(ids, max_new_tokens=CALIBRATION_TOKENS, mode="pard-fixed")
        except GenerationError:  # more prompts than the engine's largest batch (tensorrt --max-batch)
            results = [self.generate(row, max_new_tokens=CALIBRATION_TOKENS, mode="pard-fixed") for row in ids]
        accepted, drafted = np.zeros(m.k, dtype=np.int64), np.zeros(m.k, dtype=np.int64)
        for stats in (r.stats for r in results if r.stats.per_position_drafted):
            accepted += stats.per_position_accepted
            drafted += stats.per_position_drafted
        acceptance = conditional_acceptance(accepted.tolist(), drafted.tolist())
        return Calibration(costs, acceptance, now_iso(), time.perf_counter() - started)

    def _check_attention(self, role: str) -> None:
        m, io = self.manifest, self.manifest.models[role].io
        if io.attention != m.attention:
            raise EngineError(
                f"{self.engine_dir}: the {role} graph has {io.attention} attention but the manifest says "
                f"{m.attention}; rebuild the engine"
            )
        # onnxruntime-extensions would abort on a float16 plugin graph
        if io.attention == PLUGIN and m.dtype != "float32" and m.backend == "onnxruntime":
            raise EngineError(
                f"{self.engine_dir} is a {m.dtype} plugin-attention engine; ONNX Runtime runs those in "
                "float32 only: rebuild with --dtype float32 or --attention plain"
            )

    def _prepare(self, prompts: Sequence[Prompt], **settings) -> tuple[list[list[int]], DecodeRequest]:
        """Check everything before any work, so bad input generates nothing."""
        self._check_idle()
        return self.check_request(prompts, **settings)

    def check_request(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int | Sequence[int] = 128,
        mode: str = "pard",
        chat: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        draft_sampling: bool = False,
        stop: Sequence[str] = (),
    ) -> tuple[list[list[int]], DecodeRequest]:
        """The prompts' token ids and the checked settings; GenerationError names what is wrong (any thread)."""
        self._check_open()
        if mode not in MODES:
            raise GenerationError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise GenerationError("this engine has no AR draft graph (draft_ar.onnx); rebuild it with --with-ar-draft")
        limits = _token_limits(max_new_tokens, len(prompts))
        if isinstance(stop, str):
            stop = (stop,)
        params = SamplingParams(float(temperature), float(top_p), top_k, seed, draft_sampling)
        if not prompts:
            raise GenerationError("no prompts given; pass a prompt or a non-empty list of prompts")
        ids = [self._prompt_ids(p, chat, i if len(prompts) > 1 else None) for i, p in enumerate(prompts)]
        return ids, DecodeRequest(limits, mode, params, tuple(stop))

    def _prompt_ids(self, prompt: Prompt, chat: bool, index: int | None) -> list[int]:
        which = "the prompt" if index is None else f"prompt {index}"
        if isinstance(prompt, str):
            ids = (self.codec.encode_chat(prompt) if chat else self.codec.encode(prompt)) if prompt else []
        else:
            ids = [int(i) for i in prompt]
            rows = self.manifest.models[TARGET].vocab_rows
            if any(not 0 <= i < rows for i in ids):
                raise GenerationError(f"{which}'s token ids must lie in 0..{rows - 1}")
        if not ids:
            raise GenerationError(f"{which} is empty; pass some text or token ids")
        if len(ids) >= self.manifest.max_seq_len:
            raise GenerationError(
                f"{which} has {len(ids)} tokens but the engine's max_seq_len is {self.manifest.max_seq_len}; "
                "shorten it or rebuild with a larger --max-seq-len"
            )
        return ids

    def _decode(self, prompt_ids: list[list[int]], request: DecodeRequest, with_text: bool) -> Iterator[StreamEvent]:
        """A StreamEvent per active row and step; the text is tracked only when with_text. The caches are this
        generation's from its first step to its last (or until the caller drops the iterator)."""
        calibration = self.calibration if request.mode == "pard" else None  # may generate itself: before taking over
        with self.exclusive():
            yield from self._decode_exclusive(prompt_ids, request, with_text, calibration)

    def _decode_exclusive(
        self, prompt_ids: list[list[int]], request: DecodeRequest, with_text: bool, calibration: Calibration | None
    ) -> Iterator[StreamEvent]:
        start = time.perf_counter()
        batch = self.decode_batch(request.mode, calibration)
        batch.start(
            [
                self.row(i, ids, limit, request.mode, request.params, request.stop if with_text else None, start)
                for i, (ids, limit) in enumerate(zip(prompt_ids, request.max_new_tokens))
            ]
        )
        while True:
            self._check_open()  # close() may come between two steps of a stream
            for row, emitted in batch.step():
                done = row.finish_reason is not None
                yield StreamEvent(row.index, row.take_text(), emitted, self.result(row) if done else None)
            if all(row.finish_reason for row in batch.rows):
                break  # the caches keep the last rows until the next generation starts them afresh
            batch.leave()

    def decode_batch(self, mode: str, calibration: Calibration | None) -> DecodeBatch:
        """A batch of `mode` on this Session's caches (for whoever holds them: a generation, the Scheduler)."""
        m = self.manifest
        caches = self._mode_caches(mode)
        return DecodeBatch(caches, mode, m.k, self._eos, m.vocab_size, calibration if mode == "pard" else None)

    def row(
        self,
        index: int,
        prompt_ids: list[int],
        max_new_tokens: int,
        mode: str,
        params: SamplingParams,
        stop: Sequence[str] | None,
        started: float | None = None,
    ) -> Row:
        """One sequence to decode; stop None: its text is not followed (decoded once at the end)."""
        m = self.manifest
        text = RowText(self.codec, stop) if stop is not None else None
        room = m.max_seq_len - len(prompt_ids)
        return Row(index, prompt_ids, max_new_tokens, room, params, StatsRecorder(mode, m.k), text, started)

    def result(self, row: Row) -> GenerationResult:
        """A finished row's tokens, text and statistics."""
        text = row.text.text if row.text is not None else self.codec.decode(row.tokens)
        total = time.perf_counter() - row.started
        ttft = row.ttft_s if row.ttft_s is not None else total
        return GenerationResult(row.tokens, text, row.recorder.finish(row.finish_reason, ttft, total))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The caches for the caller alone until the block ends (a generation, calibration, or a Scheduler for its
        lifetime), or GenerationError if another holds them."""
        self._check_open()
        if not self._in_use.acquire(blocking=False):
            raise GenerationError(_IN_USE)
        try:
            yield
        finally:
            self._in_use.release()

    def _check_idle(self) -> None:
        """Refuse before any work (a stream's own check comes only at its first step)."""
        self._check_open()
        if self._in_use.locked():
            raise GenerationError(_IN_USE)

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("this Session is closed; create a new Session(engine_dir) to generate again")


def _token_limits(max_new_tokens: int | Sequence[int], rows: int) -> tuple[int, ...]:
    limits = [max_new_tokens] * rows if isinstance(max_new_tokens, (int, np.integer)) else list(max_new_tokens)
    if len(limits) != rows:
        raise GenerationError(
            f"max_new_tokens has {len(limits)} limits for {rows} prompts; pass one, or one per prompt"
        )
    for limit in limits:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
            raise GenerationError(f"max_new_tokens must be a positive integer, got {limit!r}")
    return tuple(int(limit) for limit in limits)


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and not isinstance(prompt[0], (int, np.integer))
