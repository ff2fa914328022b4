"""The OpenAI-compatible HTTP app over a Scheduler: routes, OpenAI error bodies, server-sent event streams."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import GenerationError, QueueFullError
from ..runtime.scheduler import CANCELLED
from .openai_protocol import (
    CHAT,
    COMPLETION,
    DONE,
    ApiError,
    ApiRequest,
    ResponseHead,
    chunk,
    error_body,
    model_card,
    model_list,
    pard_statistics,
    parse_request,
    response_body,
    server_sent_event,
    usage,
    usage_chunk,
)

MAX_BODY_BYTES = 4 << 20
# No tokenizer averages this many characters per token, so a longer prompt is refused before it is tokenized.
MAX_PROMPT_CHARS_PER_TOKEN = 64


def create_app(scheduler, model_name: str, max_tokens_limit: int, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app serving `scheduler` (a runtime Scheduler; its session encodes the prompts) as the model `model_name`:
    /v1/completions, /v1/chat/completions, /v1/models and /health. Requests may ask for 1..max_tokens_limit tokens."""
    api = _Api(scheduler, model_name, max_tokens_limit, max_body_bytes)
    app = FastAPI(title="pard-export", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", api.model, methods=["GET"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", api.chat_completions, methods=["POST"])
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


class _Generation:
    """One submitted request: its scheduler handle, and its events handed over to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.handle = None
        self.prompt_tokens = 0
        self.done = False

    def on_event(self, event) -> None:  # on the scheduler's thread
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody waits for this request any more
            pass

    async def next_event(self):
        event = await self.events.get()
        self.done = event.result is not None or event.error is not None
        return event

    def cancel_unless_done(self) -> None:
        """Free the request's row (a client that went away, a server shutting down)."""
        if not self.done:
            self.handle.cancel()


class _Api:
    def __init__(self, scheduler, model_name: str, max_tokens_limit: int, max_body_bytes: int):
        self.scheduler, self.codec = scheduler, scheduler.session.codec
        self.model_name, self.max_tokens_limit, self.max_body_bytes = model_name, max_tokens_limit, max_body_bytes
        self.max_prompt_chars = scheduler.session.manifest.max_seq_len * MAX_PROMPT_CHARS_PER_TOKEN
        self.created = int(time.time())

    async def health(self):
        if not self.scheduler.alive:
            return JSONResponse(_stopped().body(), status_code=503)
        return {"status": "ok"}

    async def models(self):
        return model_list(self.model_name, self.created)

    async def model(self, model_id: str):
        if model_id != self.model_name:
            raise ApiError(f"the model {model_id!r} does not exist", status=404, code="model_not_found")
        return model_card(self.model_name, self.created)

    async def completions(self, request: Request):
        return await self._generate(request, COMPLETION)

    async def chat_completions(self, request: Request):
        return await self._generate(request, CHAT)

    async def _generate(self, request: Request, kind: str) -> Response:
        body = await _json_body(request, self.max_body_bytes)
        parsed = parse_request(kind, body, self.model_name, self.max_tokens_limit)
        generation = _Generation(asyncio.get_running_loop())
        await run_in_threadpool(self._submit, parsed, generation)
        head = ResponseHead.new(kind, self.model_name)
        if parsed.stream:
            return StreamingResponse(_stream(generation, head, parsed), media_type="text/event-stream")
        try:
            event = await _unless_disconnected(request, _last_event(generation))
        finally:
            generation.cancel_unless_done()
        if event is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        result = _finished(event)
        return JSONResponse(
            response_body(head, result.text, result.finish_reason, _usage(generation, result), _pard(result))
        )

    def _submit(self, request: ApiRequest, generation: _Generation) -> None:
        """Encode the prompt and hand it to the scheduler (on a worker thread: both may take a while)."""
        ids = self._prompt_ids(request)
        if not self.scheduler.alive:  # its submit() would say so with a GenerationError, as for bad input
            raise _stopped()
        try:
            generation.handle = self.scheduler.submit(ids, on_event=generation.on_event, **request.sampling())
        except QueueFullError as e:
            raise ApiError(str(e), status=503, code="queue_full") from e
        except GenerationError as e:
            raise ApiError(str(e), param=request.prompt_field) from e
        generation.prompt_tokens = len(ids)

    def _prompt_ids(self, request: ApiRequest) -> list[int]:
        if request.kind == COMPLETION and not isinstance(request.prompt, str):
            return request.prompt
        self._check_prompt_chars(request)
        try:
            if request.kind == CHAT:
                return self.codec.encode_messages(request.prompt)
            return self.codec.encode(request.prompt)
        except GenerationError as e:  # no chat template, or one that refuses the conversation
            raise ApiError(str(e), param=request.prompt_field) from e

    def _check_prompt_chars(self, request: ApiRequest) -> None:
        texts = [m["content"] for m in request.prompt] if request.kind == CHAT else [request.prompt]
        chars = sum(len(text) for text in texts)
        if chars > self.max_prompt_chars:
            raise ApiError(
                f"the {request.prompt_field} has {chars} characters, far more than the engine's max_seq_len of "
                f"{self.max_prompt_chars // MAX_PROMPT_CHARS_PER_TOKEN} tokens allows",
                param=request.prompt_field,
            )


async def _json_body(request: Request, limit: int):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    try:
        return json.loads(body)
    except ValueError as e:  # UnicodeDecodeError included
        raise ApiError(f"the request body is not valid JSON: {e}") from e


def _stopped() -> ApiError:
    return ApiError("the scheduler has stopped: the server is shutting down", status=503)


def _too_large(limit: int) -> ApiError:
    return ApiError(f"the request body is larger than {limit} bytes", status=413, code="request_too_large")


async def _last_event(generation: _Generation):
    while not generation.done:
        event = await generation.next_event()
    return event


async def _unless_disconnected(request: Request, awaitable):
    """awaitable's result, or None (its request's generation cancelled) if the client disconnects first."""
    answer, gone = asyncio.ensure_future(awaitable), asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        answer.cancel()
    return answer.result() if answer.done() and not answer.cancelled() else None


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next message can only be that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(generation: _Generation, head: ResponseHead, request: ApiRequest):
    """The server-sent events of one request. Starlette cancels this generator when the client disconnects; the
    `finally` then frees the row."""
    try:
        if head.kind == CHAT:
            yield server_sent_event(chunk(head, "", first=True))
        while not generation.done:
            event = await generation.next_event()
            result = _finished(event) if generation.done else None
            if event.text or result is not None:
                yield server_sent_event(chunk(head, event.text, result.finish_reason if result else None))
        if request.include_usage:
            yield server_sent_event(usage_chunk(head, _usage(generation, result), _pard(result)))
        yield DONE
    except ApiError as e:  # the status line has gone out: the error travels as an event, as OpenAI's do
        yield server_sent_event(e.body())
    finally:
        generation.cancel_unless_done()


def _finished(event):
    """The result of a request's last event; ApiError where the scheduler failed or cancelled the request."""
    if event.error is not None:  # the scheduler has logged it
        raise ApiError("the generation failed inside the server; its log says why", status=500)
    if event.result.finish_reason == CANCELLED:  # by close(): this request's client is still there
        raise ApiError("the request was cancelled: the server is shutting down", status=503)
    return event.result


def _usage(generation: _Generation, result) -> dict:
    return usage(generation.prompt_tokens, len(result.token_ids))


def _pard(result) -> dict:
    return pard_statistics(result.stats)


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(str(error), "invalid_request_error"), status_code=400)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = f"{request.method} {request.url.path}: {error.detail}"
    code = "not_found" if error.status_code == 404 else None
    return JSONResponse(error_body(message, "invalid_request_error", code=code), status_code=error.status_code)


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette raises the error again after this answer, and uvicorn logs it with its traceback.
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
