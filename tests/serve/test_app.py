"""The app on a real uvicorn server, driven by the official openai client and by raw HTTP: greedy answers equal
Session.generate token for token, streams equal non-streamed answers, and every refusal is an OpenAI error body."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import openai
import pytest

import tiny_models

NEW_TOKENS = 40
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


def request(url: str, path: str, body=None, method: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP request; body: a dict sent as JSON, or raw bytes."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    sent = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_openai_error(body: dict, kind: str = "invalid_request_error") -> dict:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["message"]
    return error


def greedy(reference, ids: list[int], **settings):
    return reference.generate(ids, max_new_tokens=NEW_TOKENS, **settings)


@pytest.mark.parametrize("prompt", tiny_models.PROMPTS)
def test_greedy_completion_equals_session_generate(served, client, reference, prompt):
    ids = reference.codec.encode(prompt)
    expected = greedy(reference, ids)
    for sent in (prompt, ids):
        answer = client.completions.create(model=served.model, prompt=sent, max_tokens=NEW_TOKENS, temperature=0)
        assert answer.object == "text_completion" and answer.model == served.model
        assert answer.choices[0].text == expected.text
        assert answer.choices[0].finish_reason == expected.finish_reason
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), len(expected.token_ids))
        assert answer.usage.total_tokens == len(ids) + len(expected.token_ids)
        assert answer.pard["drafted_tokens"] >= answer.pard["accepted_drafts"] >= 0
        assert 0.0 <= answer.pard["acceptance_rate"] <= 1.0 and answer.pard["ttft_ms"] > 0


def test_greedy_chat_equals_session_generate(served, client, reference):
    ids = reference.codec.encode_messages(MESSAGES)
    expected = greedy(reference, ids)
    answer = client.chat.completions.create(model=served.model, messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), len(expected.token_ids))
    again = client.chat.completions.create(
        model=served.model, messages=MESSAGES, max_completion_tokens=NEW_TOKENS, temperature=0
    )
    assert again.choices[0].message.content == expected.text


def test_streamed_completion_with_usage(served, client, reference):
    prompt = tiny_models.PROMPTS[1]
    expected = greedy(reference, reference.codec.encode(prompt))
    chunks = list(
        client.completions.create(
            model=served.model,
            prompt=prompt,
            max_tokens=NEW_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *texts, last = chunks
    assert len(texts) > 1, "the answer came in one piece: not streamed"
    assert "".join(c.choices[0].text for c in texts) == expected.text
    assert [c.choices[0].finish_reason for c in texts] == [None] * (len(texts) - 1) + [expected.finish_reason]
    assert last.choices == [] and last.usage.completion_tokens == len(expected.token_ids)
    assert last.pard["drafted_tokens"] >= last.pard["accepted_drafts"]
    assert len({c.id for c in chunks}) == 1


def test_streamed_chat(served, client, reference):
    expected = greedy(reference, reference.codec.encode_messages(MESSAGES))
    chunks = list(
        client.chat.completions.create(
            model=served.model, messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0, stream=True
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    assert all(c.usage is None for c in chunks), "usage chunks only when stream_options.include_usage asks"


def test_stream_ends_with_done(served):
    body = {"model": served.model, "prompt": "The quick", "max_tokens": 5, "temperature": 0, "stream": True}
    with urllib.request.urlopen(
        urllib.request.Request(f"{served.url}/v1/completions", data=json.dumps(body).encode()), timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: {") for event in events[:-1])


def test_stop_strings(served, client, reference):
    ids = reference.codec.encode(tiny_models.PROMPTS[2])
    text = greedy(reference, ids).text
    assert len(text) > 12, text
    stop = text[8:11]
    expected = text[: text.index(stop)]
    assert greedy(reference, ids, stop=[stop]).text == expected
    answer = client.completions.create(
        model=served.model, prompt=ids, max_tokens=NEW_TOKENS, temperature=0, stop=[stop, "never seen"]
    )
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected, "stop")
    stream = client.completions.create(
        model=served.model, prompt=ids, max_tokens=NEW_TOKENS, temperature=0, stop=stop, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_seed_repeats_a_sampled_answer(served, client):
    def sampled(seed):
        settings = dict(max_tokens=NEW_TOKENS, temperature=0.9, top_p=0.9, seed=seed)
        return client.completions.create(model=served.model, prompt="The quick brown fox", **settings).choices[0].text

    assert sampled(5) == sampled(5)


def test_models_and_health(client, served):
    assert [model.id for model in client.models.list().data] == [served.model]
    assert client.models.retrieve(served.model).owned_by == "pard-export"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert request(served.url, "/health") == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "abc"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
        ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
        ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": ["one", "two"]}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {}, "prompt"),
        ("/v1/completions", {"prompt": list(range(4, 134))}, "prompt"),  # max_seq_len 128
        ("/v1/completions", {"prompt": [10**6]}, "prompt"),  # no such token
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content"),
        ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0]"),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_bad_parameters_are_400_and_the_server_goes_on(served, path, body, param):
    status, answer = request(served.url, path, {"model": served.model} | body)
    assert status == 400, answer
    assert assert_openai_error(answer)["param"] == param
    assert request(served.url, "/v1/completions", {"model": served.model, "prompt": "ok", "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b'["a list"]', b'{"prompt": "no model"}'])
def test_bodies_that_are_no_request_are_400(served, body):
    status, answer = request(served.url, "/v1/completions", body, method="POST")
    assert status == 400
    assert_openai_error(answer)


def test_the_client_sees_openai_errors(served, client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=served.model, prompt="x", max_tokens=0)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"


def test_a_megabyte_prompt_is_refused_at_once(served):
    started = time.perf_counter()
    status, answer = request(served.url, "/v1/completions", {"model": served.model, "prompt": "x" * 1_000_000})
    assert status == 400 and assert_openai_error(answer)["param"] == "prompt"
    assert time.perf_counter() - started < 1.0


def test_a_body_over_the_limit_is_413(served, start_app):
    from pard_export.serve.app import create_app

    url = start_app(create_app(served.scheduler, served.model, 16, max_body_bytes=1000))
    status, answer = request(url, "/v1/completions", {"model": served.model, "prompt": "x" * 2000})
    assert status == 413 and assert_openai_error(answer)["code"] == "request_too_large"
    assert request(url, "/v1/completions", {"model": served.model, "prompt": "x" * 50, "max_tokens": 1})[0] == 200


def test_unknown_paths_and_methods(served):
    status, answer = request(served.url, "/v1/embeddings", {"model": served.model, "input": "x"})
    assert status == 404 and assert_openai_error(answer)["code"] == "not_found"
    status, answer = request(served.url, "/v1/completions")
    assert status == 405
    assert_openai_error(answer)


def test_an_internal_failure_is_500(served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(served.scheduler, "submit", broken)
    status, answer = request(served.url, "/v1/completions", {"model": served.model, "prompt": "x"})
    assert status == 500
    assert "boom" not in assert_openai_error(answer, "server_error")["message"]
    monkeypatch.undo()
    assert request(served.url, "/v1/completions", {"model": served.model, "prompt": "x", "max_tokens": 1})[0] == 200


SLOW_CALL_S = 0.05  # added to every graph call while slow_graphs is on: 120 tokens then take 6 s


@pytest.fixture
def slow_graphs(monkeypatch):
    """Slower graph calls, so that a test can act while an answer is being generated."""
    from pard_export.runtime.backend_ort import OrtGraph

    run = OrtGraph.run

    def slow_run(self, *args, **kwargs):
        time.sleep(SLOW_CALL_S)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(OrtGraph, "run", slow_run)


@pytest.fixture(scope="module")
def one_row(serve_engine, start_server):
    """A server that decodes one request at a time and lets one more wait."""
    from pard_export.runtime import Session

    return start_server(Session(serve_engine), max_batch=1, max_queue=1)


def send_long_request(served, **fields) -> http.client.HTTPConnection:
    """A streaming completion of 120 tokens, sent; the caller reads the response or closes the connection."""
    address = urlparse(served.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    body = {"model": served.model, "prompt": "The quick", "max_tokens": 120, "temperature": 0, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body | fields), {"Content-Type": "application/json"})
    return connection


def frees_every_row(served, within_s: float = 2.0) -> bool:
    """The scheduler has no rows left, running or waiting, well before a 120-token answer here could end (6 s), and
    the server answers the next request."""
    deadline = time.monotonic() + within_s
    while served.scheduler.running or served.scheduler.waiting:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    body = {"model": served.model, "prompt": "x", "max_tokens": 2}
    return request(served.url, "/v1/completions", body)[0] == 200


def test_a_full_queue_is_503_and_clears(one_row, slow_graphs):
    opened, responses = [], []
    try:
        while len(opened) < 4 and (not responses or responses[-1].status == 200):
            opened.append(send_long_request(one_row))
            responses.append(opened[-1].getresponse())
            if len(opened) == 1:  # the first one runs: its first tokens have come
                assert responses[0].readline().startswith(b"data: {")
        assert responses[-1].status == 503
        assert assert_openai_error(json.loads(responses[-1].read()), "server_error")["code"] == "queue_full"
    finally:
        for connection in opened:
            connection.close()
    assert frees_every_row(one_row)


def test_a_client_leaving_mid_stream_frees_its_row(one_row, slow_graphs):
    connection = send_long_request(one_row)
    assert connection.getresponse().readline().startswith(b"data: {")
    connection.close()
    assert frees_every_row(one_row)


def test_a_client_leaving_before_its_answer_frees_its_row(one_row, slow_graphs):
    connection = send_long_request(one_row, stream=False)
    time.sleep(0.3)  # generating
    connection.close()
    assert frees_every_row(one_row)


def test_a_failing_step_is_500_and_the_server_goes_on(one_row, monkeypatch):
    from pard_export.runtime.backend_ort import OrtGraph

    def broken(self, *args, **kwargs):
        raise RuntimeError("the graph broke")

    monkeypatch.setattr(OrtGraph, "run", broken)
    status, answer = request(one_row.url, "/v1/completions", {"model": one_row.model, "prompt": "x"})
    assert status == 500 and assert_openai_error(answer, "server_error")
    client = openai.OpenAI(base_url=f"{one_row.url}/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.APIError, match="failed inside the server"):
        list(client.completions.create(model=one_row.model, prompt="x", stream=True))
    monkeypatch.undo()
    assert frees_every_row(one_row)


def test_a_closing_scheduler_ends_streams_and_is_503(serve_engine, start_server, slow_graphs):
    from pard_export.runtime import Session

    closing = start_server(Session(serve_engine), max_batch=1)
    assert request(closing.url, "/health") == (200, {"status": "ok"})
    streaming = send_long_request(closing).getresponse()
    assert streaming.readline().startswith(b"data: {")
    closing.scheduler.close()
    last = [line for line in streaming.read().decode().splitlines() if line][-1]
    assert "shutting down" in assert_openai_error(json.loads(last.removeprefix("data: ")), "server_error")["message"]
    status, answer = request(closing.url, "/health")
    assert status == 503 and assert_openai_error(answer, "server_error")
    status, answer = request(closing.url, "/v1/completions", {"model": closing.model, "prompt": "x"})
    assert status == 503 and "shutting down" in assert_openai_error(answer, "server_error")["message"]
