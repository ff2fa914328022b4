"""What the `pard` model does with requests, apart from Triton's own objects (runtime/triton's model.py adapts those),
so it is tested without a server.

Every request goes to one Scheduler as it arrives (in-flight batching): it joins the running batch between two
steps, greedy and sampled requests alike (each row keeps its own settings and seed), and answers through its
responder as it decodes. A request that fails, fails alone; a request its client cancelled leaves the batch at the
next step and frees its row.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..errors import GenerationError
from ..runtime import Handle, Scheduler, StreamEvent
from .protocol import Request, outputs

log = logging.getLogger(__name__)


class Responder(Protocol):
    """One request's way back to its client."""

    def send(self, tensors: dict[str, np.ndarray], final: bool) -> None: ...

    def fail(self, message: str) -> None:  # an error response; it ends the request
        ...

    def cancelled(self) -> bool:  # the client gave up on the request
        ...


class Outbox:
    """A thread that sends the responses, so the scheduler's loop never waits on Triton's IPC (a response per row and
    step, and a cancellation check)."""

    def __init__(self):
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pard-outbox", daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._calls.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except Exception:  # a client gone mid-send: its request ends here, the others go on
                log.exception("sending a response failed")


def submit(scheduler: Scheduler, request: Request, responder: Responder, outbox: Outbox | None = None) -> Handle | None:
    """Queue the request; the responder gets its responses as it decodes (through the outbox's thread, else on the
    scheduler's). Never raises for the request's fault (a refused request gets its error response at once: None)."""
    reply = _Reply(request, responder, outbox)
    try:
        reply.handle = scheduler.submit(
            request.prompt, max_new_tokens=request.max_tokens, on_event=reply, **request.settings()
        )
    except GenerationError as e:
        responder.fail(str(e))
        return None
    return reply.handle


class _Reply:
    """The scheduler's callback for one request: a response per step (streaming) or one at the end."""

    def __init__(self, request: Request, responder: Responder, outbox: Outbox | None):
        self.request, self.responder, self.outbox = request, responder, outbox
        self.handle: Handle | None = None  # set once submitted; the first events may come before

    def __call__(self, event: StreamEvent) -> None:
        if self.outbox is None:
            self.answer(event)
        else:
            self.outbox.put(lambda: self.answer(event))

    def answer(self, event: StreamEvent) -> None:
        if self.handle is not None and event.result is None and self.responder.cancelled():
            self.handle.cancel()  # its last event follows at the next step
        if event.error is not None:
            self.responder.fail(event.error)
        elif event.result is not None:
            stream = self.request.stream
            text, ids = (event.text, event.token_ids) if stream else (event.result.text, event.result.token_ids)
            self.responder.send(outputs(text, ids, event.result), final=True)
        elif self.request.stream and (event.text or event.token_ids):
            self.responder.send(outputs(event.text, event.token_ids), final=False)
