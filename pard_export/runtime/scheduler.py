"""In-flight batching: one thread steps a running batch of requests; requests that arrive are prefilled apart from it
(a chunk of their prompts between two of its steps) and join it between steps; rows that finish or are cancelled
leave at once and free their KV. Admission is bounded by a maximum batch and a KV budget; requests that do not fit
wait in a queue, in order, and a full queue refuses new ones (QueueFullError).

Greedy and sampled requests with different settings share the batch: each row keeps its own settings and seeded
generator, and a sampled row chooses its drafts by its own policy (batch.py), so its text for a seed does not depend
on who else is decoding.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack

from ..errors import GenerationError, QueueFullError
from .batch import MIN_SHARED_PREFIX, Joiners, Row, SharedPrefix, common_prefix
from .decoding import PREFILL_CHUNK
from .session import GenerationResult, Prompt, Session, StreamEvent

log = logging.getLogger(__name__)

EventCallback = Callable[[StreamEvent], None]
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64
CANCELLED = "cancelled"  # the finish reason of a request cancelled before it finished


class Handle:
    """One submitted request: its events (StreamEvents, the last with `result`, or with `error` if the scheduler
    failed), and cancel()."""

    def __init__(self, wake: Callable[[], None], on_event: EventCallback | None):
        self._wake = wake
        self._inbox: queue.SimpleQueue[StreamEvent] | None = None if on_event else queue.SimpleQueue()
        self._on_event = on_event or self._inbox.put
        self._cancel = threading.Event()
        self.final: StreamEvent | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop generating (idempotent): the row leaves at the next step boundary; its last event follows, with
        finish_reason "cancelled" (or the result, where it had already finished)."""
        if not self._cancel.is_set():
            self._cancel.set()
            self._wake()

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """The request's events as they come, up to its last (only without on_event); TimeoutError if none comes
        within `timeout` seconds."""
        if self._inbox is None:
            raise GenerationError("this request's events go to its on_event callback; events() has none to give")
        while True:
            try:
                event = self._inbox.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from the scheduler within {timeout} s") from None
            yield event
            if event.result is not None or event.error is not None:
                return

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the request to end (only without on_event); GenerationError if the scheduler failed."""
        for event in self.events(timeout):
            if event.error is not None:
                raise GenerationError(f"the request failed: {event.error}")
            if event.result is not None:
                return event.result
        raise AssertionError("unreachable: events() ends with a result or an error")

    def _deliver(self, event: StreamEvent) -> None:
        """Called on the scheduler's thread; a callback that raises cancels its request."""
        if event.result is not None or event.error is not None:
            self.final = event
        try:
            self._on_event(event)
        except Exception:
            log.exception("a request's on_event callback failed; cancelling the request")
            self._cancel.set()


class Scheduler:
    """In-flight batching over one Session, which it holds (its caches) until close()."""

    def __init__(
        self,
        session: Session,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        kv_budget_bytes: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        mode: str = "pard",
    ):
        """max_batch: the most rows decoding together (at most the engine's: a TensorRT plan's profiles);
        kv_budget_bytes: the KV memory the running rows may reserve (each its prompt plus max_new_tokens; default
        no limit but max_batch); prefill_chunk: the most prompt tokens a joining row prefills between two steps."""
        if mode not in session.modes:
            raise GenerationError(
                f"mode {mode!r} is not one this engine runs; choose one of {', '.join(session.modes)}"
            )
        engine_batch = session.max_batch
        if not 1 <= max_batch <= (engine_batch or max_batch):
            raise GenerationError(
                f"max_batch must lie in 1..{engine_batch or 'any'}, got {max_batch}"
                + ("; rebuild the engine with a larger --max-batch" if engine_batch else "")
            )
        if max_queue < 0 or prefill_chunk < 1 or (kv_budget_bytes is not None and kv_budget_bytes < 1):
            raise GenerationError(
                f"max_queue must be >= 0, prefill_chunk >= 1 and kv_budget_bytes >= 1 (or None), got {max_queue}, "
                f"{prefill_chunk} and {kv_budget_bytes}"
            )
        self.session, self.mode = session, mode
        self.max_batch, self.max_queue, self.kv_budget_bytes = max_batch, max_queue, kv_budget_bytes
        self.prefill_chunk = prefill_chunk
        calibration = session.calibration if mode == "pard" else None  # may generate: before holding the caches
        self._hold = ExitStack()
        self._hold.enter_context(session.exclusive())
        self._batch = session.decode_batch(mode, calibration)
        self._batch.start([])
        self._joiners: Joiners | None = None
        self._prefix: SharedPrefix | None = None  # the KV of the prompt prefix requests share, copied into joiners
        self._last_prompt: list[int] | None = None
        self._waiting: deque[tuple[Row, Handle]] = deque()
        self._handles: dict[Row, Handle] = {}  # rows admitted (joining or running)
        self._last_pieces: dict[Row, tuple[str, list[int]]] = {}  # finished rows' last text and tokens
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pard-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt: Prompt, *, on_event: EventCallback | None = None, **settings) -> Handle:
        """Queue one prompt with Session.generate's settings (max_new_tokens, chat, temperature, top_p, top_k, seed,
        draft_sampling, stop; the mode is the scheduler's). Everything is checked here, so a bad request raises
        GenerationError before it is queued, and a full queue raises QueueFullError. on_event(StreamEvent) is called
        on the scheduler's thread for each of the request's steps (keep it quick); without it, read handle.events()
        or handle.result()."""
        if "mode" in settings:
            raise GenerationError(f"this scheduler decodes in mode {self.mode!r}; a request cannot choose its mode")
        ids, request = self.session.check_request([prompt], mode=self.mode, **settings)
        row = self.session.row(0, ids[0], request.max_new_tokens[0], self.mode, request.params, request.stop)
        need = self._reserved(row)
        if self.kv_budget_bytes is not None and need > self.kv_budget_bytes:
            raise GenerationError(
                f"the prompt and max_new_tokens need {need / 2**20:.1f} MiB of KV, more than the "
                f"scheduler's whole budget of {self.kv_budget_bytes / 2**20:.1f} MiB; ask for fewer tokens"
            )
        handle = Handle(self._wake, on_event)
        with self._changed:
            if self._closed:
                raise GenerationError("the scheduler is closed; create a new one to generate again")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting); try again later")
            self._waiting.append((row, handle))
            self._changed.notify()
        return handle

    @property
    def running(self) -> int:
        """Rows admitted (decoding or prefilling)."""
        return len(self._handles)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        """It takes requests: not closed, and its thread runs."""
        return not self._closed and self._thread.is_alive()

    def close(self) -> None:
        """Cancel every request (each gets its last event), stop the thread and give the Session back."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify()
        self._thread.join()
        self._hold.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify()

    def _loop(self) -> None:
        while self._next_work():
            try:
                self._iteration()
            except Exception as e:  # an internal failure ends the requests in flight, not the scheduler
                log.exception("the scheduler's step failed")
                self._fail_admitted(f"internal error: {e}")
        self._end_all()

    def _next_work(self) -> bool:
        """Wait until there is something to do; False once closed."""
        with self._changed:
            while not (self._closed or self._waiting or self._handles):
                self._changed.wait()
            return not self._closed

    def _iteration(self) -> None:
        """Between two steps: cancelled rows leave, waiting requests are admitted, joiners prefill a chunk or join;
        then one step of the running batch."""
        self._cancel_waiting()
        self._leave(cancelled=True)
        if self._joiners is None:
            self._admit()
        if self._joiners is not None:
            self._prefill()
        if self._batch.rows:
            for row, emitted in self._batch.step():
                self._emit(row, emitted)
            self._leave()

    def _emit(self, row: Row, emitted: list[int]) -> None:
        """A step's event for the row; a finished row's last one waits until the row has left (_leave)."""
        piece = row.take_text()
        if row.finish_reason is not None:
            self._last_pieces[row] = (piece, emitted)
        else:
            self._handles[row]._deliver(StreamEvent(0, piece, emitted))

    def _admit(self) -> None:
        """The waiting requests that fit, in order, become the next joiners."""
        if not self._waiting:  # the common case between two steps: nothing to weigh
            return
        rows = []
        with self._changed:
            reserved = sum(self._reserved(row) for row in self._handles)
            while self._waiting and len(self._handles) < self.max_batch:
                row, handle = self._waiting[0]
                if self.kv_budget_bytes is not None and reserved + self._reserved(row) > self.kv_budget_bytes:
                    break  # in order: later requests wait behind this one
                self._waiting.popleft()
                self._handles[row] = handle
                reserved += self._reserved(row)
                rows.append(row)
        if rows:
            self._share_prefix(rows)
            self._joiners = Joiners(
                self._batch.caches, rows, self.prefill_chunk, with_draft=self._batch.drafting, prefix=self._prefix
            )

    def _share_prefix(self, rows: list[Row]) -> None:
        """Keep the KV of the prefix that a new prompt shares with the one before it (at least MIN_SHARED_PREFIX
        tokens: a chat template's system turn), unless the kept one covers it already."""
        if not all(cache.absorb_copies for cache in self._batch.caches):
            return  # rows cannot be copied out of the graph's own buffers (TensorRT)
        for row in rows:
            known = self._prefix is not None and self._prefix.covers(row.prompt_ids)
            if not known and self._last_prompt is not None:
                shared = min(common_prefix(row.prompt_ids, self._last_prompt), row.prompt_len - 1)
                if shared >= MIN_SHARED_PREFIX:
                    self._prefix = SharedPrefix(self._batch.caches, row.prompt_ids[:shared])
            self._last_prompt = row.prompt_ids

    def _prefill(self) -> None:
        joiners = self._joiners
        if not joiners.prefilled:
            joiners.prefill_next()
        if joiners.prefilled:
            self._joiners = None
            self._batch.absorb(joiners, own_policy=True)

    def _leave(self, cancelled: bool = False) -> None:
        """Rows that finished (or, with cancelled, whose request was cancelled) leave the batch."""
        if cancelled:
            for row in self._batch.rows:
                if self._handles[row].cancelled:
                    row.finish_reason = CANCELLED
        gone = self._batch.leave()
        with self._changed:
            handles = [self._handles.pop(row) for row in gone]
        for row, handle in zip(gone, handles):
            piece, emitted = self._last_pieces.pop(row, ("", []))  # none for a cancelled row
            handle._deliver(StreamEvent(0, piece, emitted, self.session.result(row)))

    def _cancel_waiting(self) -> None:
        with self._changed:
            cancelled = [(row, handle) for row, handle in self._waiting if handle.cancelled]
            for item in cancelled:
                self._waiting.remove(item)
        for row, handle in cancelled:
            row.finish_reason = CANCELLED
            handle._deliver(StreamEvent(0, "", [], self.session.result(row)))

    def _reserved(self, row: Row) -> int:
        return self.session.kv_bytes(self.mode, row.prompt_len + row.limit + self.session.manifest.k + 1)

    def _fail_admitted(self, message: str) -> None:
        """Every admitted request ends with `message`; the caches start afresh for the requests still to come."""
        with self._changed:
            handles, self._handles = list(self._handles.values()), {}
        self._joiners, self._last_pieces, self._prefix = None, {}, None
        self._batch = self.session.decode_batch(self.mode, self._batch.calibration)
        self._batch.start([])
        for handle in handles:
            handle._deliver(StreamEvent(0, "", [], None, error=message))

    def _end_all(self) -> None:
        """At close: every request, admitted or waiting, ends cancelled."""
        with self._changed:
            waiting, self._waiting = list(self._waiting), deque()
        rows = list(self._handles) + [row for row, _ in waiting]
        handles = list(self._handles.values()) + [handle for _, handle in waiting]
        self._handles = {}
        for row, handle in zip(rows, handles):
            if row.finish_reason is None:
                row.finish_reason = CANCELLED
            handle._deliver(StreamEvent(0, "", [], self.session.result(row)))
        self._batch.start([])
