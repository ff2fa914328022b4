"""OpenAI's completions and chat completions as data: a request body checked into an ApiRequest, and the response,
stream chunk, model list and error bodies as dicts. No web framework here; app.py does the HTTP."""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass

from ..errors import RequestError

COMPLETION, CHAT = "text_completion", "chat.completion"
MAX_STOP_STRINGS = 4
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's limit
DONE = "data: [DONE]\n\n"
OWNER = "pard-export"
PARD_STATISTICS = (
    "acceptance_rate",
    "mean_accepted_tokens",
    "drafted_tokens",
    "accepted_drafts",
    "ttft_ms",
    "tokens_per_second",
)


class ApiError(RequestError):
    """A refused request, answered with OpenAI's error body and an HTTP status."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    @property
    def type(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return error_body(str(self), self.type, self.param, self.code)


@dataclass(frozen=True)
class ApiRequest:
    kind: str  # COMPLETION or CHAT
    prompt: str | list[int] | list[dict]  # completions: text or token ids; chat: {role, content} messages
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with usage (and pard's statistics)

    @property
    def prompt_field(self) -> str:
        return "messages" if self.kind == CHAT else "prompt"

    def sampling(self) -> dict:
        """The settings Scheduler.submit takes."""
        return dict(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stop,
        )


def parse_request(kind: str, body, model_name: str, max_tokens_limit: int) -> ApiRequest:
    """An ApiRequest from a decoded JSON body of /v1/completions (COMPLETION) or /v1/chat/completions (CHAT); fields
    it does not know are ignored. ApiError names the first field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {type(body).__name__}")
    _check_model(body, model_name)
    if _optional(body, "n", int, 1) != 1:
        raise ApiError("n must be 1: this server generates one choice per request", param="n")
    stream = _optional(body, "stream", bool, False)
    options = _optional(body, "stream_options", dict, {})
    return ApiRequest(
        kind=kind,
        prompt=_completion_prompt(body) if kind == COMPLETION else _messages(body),
        max_tokens=_max_tokens(body, kind, max_tokens_limit),
        temperature=_number(body, "temperature", 1.0, lowest=0.0),
        top_p=_top_p(body),
        seed=_seed(body),
        stop=_stop(body),
        stream=stream,
        include_usage=stream and options.get("include_usage") is True,
    )


def _check_model(body: dict, model_name: str) -> None:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError("model is required: the served model's id (GET /v1/models)", param="model")
    if model != model_name:
        raise ApiError(
            f"the model {model!r} does not exist; this server serves {model_name!r}",
            status=404,
            param="model",
            code="model_not_found",
        )


def _optional(body: dict, name: str, kind: type, default):
    """body[name] when present and not null, checked to be a `kind` (bool is no int here); else default."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(f"{name} must be {_KIND_NAMES[kind]}, got {json.dumps(value)[:40]}", param=name)
    return value


_KIND_NAMES = {int: "an integer", bool: "true or false", dict: "an object", str: "a string", list: "an array"}


def _number(body: dict, name: str, default: float, *, lowest: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lowest <= value <= sys.float_info.max:
        raise ApiError(f"{name} must be a number >= {lowest:g}, got {json.dumps(value)[:40]}", param=name)
    return float(value)


def _top_p(body: dict) -> float:
    top_p = _number(body, "top_p", 1.0, lowest=0.0)
    if not 0.0 < top_p <= 1.0:
        raise ApiError(f"top_p must lie in (0, 1], got {top_p:g}", param="top_p")
    return top_p


def _max_tokens(body: dict, kind: str, limit: int) -> int:
    name = "max_completion_tokens" if kind == CHAT and body.get("max_completion_tokens") is not None else "max_tokens"
    value = _optional(body, name, int, min(COMPLETION_MAX_TOKENS, limit) if kind == COMPLETION else limit)
    if not 1 <= value <= limit:
        raise ApiError(f"{name} must lie in 1..{limit}, got {value}", param=name)
    return value


def _seed(body: dict) -> int | None:
    seed = _optional(body, "seed", int, None)
    if seed is not None and seed < 0:  # numpy's generators take none
        raise ApiError(f"seed must be a non-negative integer, got {seed}", param="seed")
    return seed


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise ApiError(f"stop must be a string or an array of up to {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(s for s in stop if s)


def _completion_prompt(body: dict) -> str | list[int]:
    """A string or token ids; OpenAI's batch forms ([text], [[ids]]) only with a single prompt."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise ApiError("send one prompt per request", param="prompt")
        prompt = prompt[0]
    is_ids = isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    if not (is_ids or isinstance(prompt, str)):
        raise ApiError("prompt is required: a string or an array of token ids", param="prompt")
    if not prompt:
        raise ApiError("prompt is empty; send some text or token ids", param="prompt")
    return prompt


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages is required: a non-empty array of {role, content} objects", param="messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(f"{param} must be an object with a string role", param=param)
    return {"role": message["role"], "content": _content(message.get("content"), param)}


def _content(content, param: str) -> str:
    """A message's text: a string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        if all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
    raise ApiError(f"{param}.content must be a string or an array of text parts", param=f"{param}.content")


@dataclass(frozen=True)
class ResponseHead:
    """What every response and chunk of one request repeats."""

    kind: str
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, kind: str, model: str) -> ResponseHead:
        prefix = "chatcmpl" if kind == CHAT else "cmpl"
        return cls(kind, f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def fields(self, kind: str | None = None) -> dict:
        return {"id": self.id, "object": kind or self.kind, "created": self.created, "model": self.model}


def response_body(head: ResponseHead, text: str, finish_reason: str, usage: dict, pard: dict) -> dict:
    """The non-streaming answer: one choice, OpenAI's usage, and PARD's statistics under `pard`."""
    if head.kind == CHAT:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
    return head.fields() | {"choices": [choice | {"finish_reason": finish_reason}], "usage": usage, "pard": pard}


def chunk(head: ResponseHead, text: str, finish_reason: str | None = None, *, first: bool = False) -> dict:
    """A stream chunk adding `text`; a chat stream's first chunk also names the role."""
    if head.kind == CHAT:
        delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        choice = {"index": 0, "delta": delta, "logprobs": None}
        return head.fields("chat.completion.chunk") | {"choices": [choice | {"finish_reason": finish_reason}]}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return head.fields() | {"choices": [choice]}


def usage_chunk(head: ResponseHead, usage: dict, pard: dict) -> dict:
    """The last chunk of a stream with include_usage: no choices, the usage and PARD's statistics."""
    kind = "chat.completion.chunk" if head.kind == CHAT else COMPLETION
    return head.fields(kind) | {"choices": [], "usage": usage, "pard": pard}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def pard_statistics(stats) -> dict:
    """PARD's view of one generation (stats: a GenerationStats), as JSON numbers (never numpy scalars)."""
    return {name: (int if name in _COUNTS else float)(getattr(stats, name)) for name in PARD_STATISTICS}


_COUNTS = ("drafted_tokens", "accepted_drafts")


def server_sent_event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def model_card(model_name: str, created: int) -> dict:
    return {"id": model_name, "object": "model", "created": created, "owned_by": OWNER}


def model_list(model_name: str, created: int) -> dict:
    return {"object": "list", "data": [model_card(model_name, created)]}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
