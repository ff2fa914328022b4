"""What the `pard` model does with a batch of requests, apart from Triton's own objects (runtime/triton's
model.py adapts those), so it is tested without a server.

Greedy requests that arrive together decode as one batch (each row equals its batch-1 output); sampled requests
decode alone, so a seed gives the same text whatever else is in flight. A request that fails fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..errors import GenerationError
from .protocol import Request, outputs

log = logging.getLogger(__name__)


class Responder(Protocol):
    """One request's way back to its client."""

    def send(self, tensors: dict[str, np.ndarray], final: bool) -> None: ...

    def fail(self, message: str) -> None:  # an error response; it ends the request
        ...


def serve(session, work: Sequence[tuple[Request, Responder]]) -> None:
    """Generate for every request and answer each through its responder; never raises for a request's fault."""
    groups: dict[tuple, list[tuple[Request, Responder]]] = {}
    for request, responder in work:
        key = request.batch_key
        groups.setdefault(key if key is not None else ("alone", id(responder)), []).append((request, responder))
    for group in groups.values():
        _serve_group(session, group)


def _serve_group(session, group: list[tuple[Request, Responder]]) -> None:
    requests = [request for request, _ in group]
    try:
        events = session.stream_batch(
            [r.prompt for r in requests], max_new_tokens=[r.max_tokens for r in requests], **requests[0].settings()
        )
    except GenerationError as e:
        if len(group) > 1:  # find the request at fault: each alone
            for item in group:
                _serve_group(session, [item])
        else:
            group[0][1].fail(str(e))
        return
    finished: set[int] = set()
    try:
        for event in events:
            request, responder = group[event.row]
            if event.result is not None:
                text, ids = (
                    (event.text, event.token_ids) if request.stream else (event.result.text, event.result.token_ids)
                )
                responder.send(outputs(text, ids, event.result), final=True)
                finished.add(event.row)
            elif request.stream and (event.text or event.token_ids):
                responder.send(outputs(event.text, event.token_ids), final=False)
    except Exception as e:  # an internal failure ends this group's requests, not the model
        log.exception("generation failed")
        for row, (_, responder) in enumerate(group):
            if row not in finished:
                responder.fail(f"internal error: {e}")
