"""Request checks and response shapes of openai_protocol, without a server."""

from __future__ import annotations

import pytest

from pard_export.runtime import GenerationStats
from pard_export.serve.openai_protocol import (
    CHAT,
    COMPLETION,
    DONE,
    ApiError,
    ResponseHead,
    chunk,
    error_body,
    model_list,
    pard_statistics,
    parse_request,
    response_body,
    server_sent_event,
    usage,
    usage_chunk,
)

MODEL, LIMIT = "tiny", 100
USER = {"role": "user", "content": "hello"}


def parse(kind=COMPLETION, **fields):
    body = {"model": MODEL} | ({"prompt": "hi"} if kind == COMPLETION else {"messages": [USER]}) | fields
    return parse_request(kind, body, MODEL, LIMIT)


def refused(kind=COMPLETION, status=400, **fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(kind, **fields)
    assert caught.value.status == status
    return caught.value


def test_defaults_follow_openai():
    completion, chat = parse(), parse(CHAT)
    assert (completion.max_tokens, completion.temperature, completion.top_p) == (16, 1.0, 1.0)
    assert (chat.max_tokens, chat.seed, chat.stop, chat.stream) == (LIMIT, None, (), False)
    assert completion.sampling() == dict(max_new_tokens=16, temperature=1.0, top_p=1.0, seed=None, stop=())


def test_settings_are_read():
    request = parse(max_tokens=7, temperature=0, top_p=0.5, seed=3, stop=["a", "b"], stream=True, n=1, echo=False)
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (7, 0.0, 0.5, 3)
    assert (request.stop, request.stream, request.include_usage) == (("a", "b"), True, False)
    assert parse(stop="\n\n").stop == ("\n\n",)
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    assert not parse(stream_options={"include_usage": True}).include_usage  # only streams have usage chunks


def test_the_default_max_tokens_stays_within_the_limit():
    assert parse_request(COMPLETION, {"model": MODEL, "prompt": "x"}, MODEL, 8).max_tokens == 8


def test_chat_prefers_max_completion_tokens():
    assert parse(CHAT, max_tokens=5, max_completion_tokens=9).max_tokens == 9
    assert parse(CHAT, max_tokens=5).max_tokens == 5
    assert refused(CHAT, max_completion_tokens=0).param == "max_completion_tokens"


def test_prompt_forms():
    assert parse(prompt="text").prompt == "text"
    assert parse(prompt=[5, 6]).prompt == [5, 6]
    assert parse(prompt=["text"]).prompt == "text"
    assert parse(prompt=[[5, 6]]).prompt == [5, 6]
    assert "one prompt per request" in str(refused(prompt=["a", "b"]))
    assert "one prompt per request" in str(refused(prompt=[[1], [2]]))
    for empty in ("", []):
        assert "empty" in str(refused(prompt=empty))
    for wrong in (None, 5, [1, "a"], [True], {"text": "a"}):
        assert refused(prompt=wrong).param == "prompt"


def test_messages():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert parse(CHAT, messages=[{"role": "user", "content": parts}]).prompt == [{"role": "user", "content": "ab"}]
    assert parse(CHAT, messages=[USER | {"name": "x"}]).prompt == [USER]
    for wrong in (None, [], "hello", [{"content": "x"}], [{"role": "user"}], [{"role": "user", "content": 5}]):
        assert refused(CHAT, messages=wrong).param.startswith("messages")
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    assert refused(CHAT, messages=[{"role": "user", "content": image}]).param == "messages[0].content"


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("max_tokens", LIMIT + 1),
        ("max_tokens", "abc"),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", 0),
        ("top_p", 1.01),
        ("temperature", float("nan")),
        ("temperature", 10**400),
        ("seed", "1"),
        ("seed", -1),
        ("n", 2),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [1]),
        ("stream", "yes"),
    ],
)
def test_bad_settings_name_their_field(field, value):
    error = refused(**{field: value})
    assert error.param == field
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_model_is_required_and_must_match():
    with pytest.raises(ApiError) as missing:
        parse_request(COMPLETION, {"prompt": "x"}, MODEL, LIMIT)
    assert (missing.value.status, missing.value.param) == (400, "model")
    unknown = refused(model="gpt-4", status=404)
    assert unknown.body()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_the_body_must_be_an_object():
    with pytest.raises(ApiError, match="JSON object"):
        parse_request(COMPLETION, ["prompt"], MODEL, LIMIT)


def test_server_errors_have_server_type():
    assert ApiError("busy", status=503).body()["error"]["type"] == "server_error"


def test_completion_shapes():
    head = ResponseHead.new(COMPLETION, MODEL)
    assert head.id.startswith("cmpl-") and head.id != ResponseHead.new(COMPLETION, MODEL).id
    body = response_body(head, "out", "length", usage(3, 2), {"acceptance_rate": 0.5})
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"] == [{"index": 0, "text": "out", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["pard"] == {"acceptance_rate": 0.5}
    assert chunk(head, "x")["choices"] == [{"index": 0, "text": "x", "logprobs": None, "finish_reason": None}]


def test_chat_shapes():
    head = ResponseHead.new(CHAT, MODEL)
    assert head.id.startswith("chatcmpl-")
    body = response_body(head, "out", "stop", usage(1, 1), {})
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "out"}
    first, middle, last = chunk(head, "", first=True), chunk(head, "x"), chunk(head, "", "stop")
    assert {c["object"] for c in (first, middle, last)} == {"chat.completion.chunk"}
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle["choices"][0]["delta"] == {"content": "x"}
    assert (last["choices"][0]["delta"], last["choices"][0]["finish_reason"]) == ({}, "stop")
    final = usage_chunk(head, usage(1, 2), {"ttft_ms": 1.0})
    assert (final["choices"], final["usage"]["total_tokens"], final["pard"]) == ([], 3, {"ttft_ms": 1.0})


def test_pard_statistics_come_from_generation_stats():
    stats = GenerationStats(mode="pard", k=4, drafted_tokens=8, accepted_drafts=6, acceptance_rate=0.75, ttft_ms=2.0)
    pard = pard_statistics(stats)
    assert set(pard) == {
        "acceptance_rate",
        "mean_accepted_tokens",
        "drafted_tokens",
        "accepted_drafts",
        "ttft_ms",
        "tokens_per_second",
    }
    assert (pard["drafted_tokens"], pard["accepted_drafts"], pard["acceptance_rate"]) == (8, 6, 0.75)


def test_wire_formats():
    assert server_sent_event({"a": "é"}) == 'data: {"a": "é"}\n\n'
    assert DONE == "data: [DONE]\n\n"
    assert model_list(MODEL, 1)["data"] == [{"id": MODEL, "object": "model", "created": 1, "owned_by": "pard-export"}]
    assert error_body("m", "t") == {"error": {"message": "m", "type": "t", "param": None, "code": None}}
