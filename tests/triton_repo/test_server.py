"""The generated repository on a real Triton server (nvidia-pytriton's, python backend, CPU), through the client
example in runtime/triton: outputs equal Session.generate, streaming, 16 concurrent clients, malformed requests; the
server's environment variables."""

from __future__ import annotations

import importlib.util
import queue
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from pard_export.runtime import Session
from pard_export.triton_repo import write_repository
from pard_export.triton_repo.server import LocalTritonServer, server_environment, site_packages

CLIENT = Path(__file__).resolve().parents[2] / "runtime" / "triton" / "client.py"
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19], [20, 21, 22, 23, 24]]
LIMIT = 40


def _load_client():
    spec = importlib.util.spec_from_file_location("pard_triton_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = _load_client()


@pytest.fixture(scope="module")
def server(tiny_engine, tritonserver_env, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(
        tiny_engine, repo, max_tokens_limit=LIMIT, threads=1, python_path=[str(site_packages(tritonserver_env))]
    )
    with LocalTritonServer(repo, tritonserver_env) as running:
        yield running
    assert running.process is None
    leftovers = subprocess.run(["pgrep", "-f", str(running.workdir)], capture_output=True, text=True).stdout
    assert leftovers == "", "tritonserver or a python backend stub outlived the test"


@pytest.fixture(scope="module")
def session(tiny_engine):
    with Session(tiny_engine) as s:
        yield s


def test_outputs_equal_session_generate(server, session):
    for prompt in PROMPTS[:3]:
        reply = client.generate(server.grpc_url, {"input_ids": prompt, "max_tokens": 20})
        expected = session.generate(prompt, max_new_tokens=20)
        assert (reply["token_ids"], reply["text"]) == (expected.token_ids, expected.text)
        assert reply["finish_reason"] == expected.finish_reason and len(reply["pieces"]) == 1
        assert 0 <= reply["total_accepted_draft_tokens"] <= reply["total_draft_tokens"]
        assert reply["mean_accepted_tokens"] >= 1.0
    text = session.codec.decode(PROMPTS[3])
    reply = client.generate(server.grpc_url, {"text_input": text, "max_tokens": 12})
    assert reply["text"] == session.generate(text, max_new_tokens=12).text


def test_streaming_delivers_the_same_text_in_pieces(server, session):
    pieces = []
    reply = client.generate(
        server.grpc_url, {"input_ids": PROMPTS[2], "max_tokens": LIMIT, "stream": True}, on_piece=pieces.append
    )
    expected = session.generate(PROMPTS[2], max_new_tokens=LIMIT)
    assert len(pieces) > 3 and "".join(pieces) == reply["text"] == expected.text
    assert reply["token_ids"] == expected.token_ids


def test_sixteen_concurrent_requests_all_complete_correctly(server, session):
    jobs = [(PROMPTS[i % len(PROMPTS)], 8 + i, i % 2 == 0) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(
                lambda job: client.generate(
                    server.grpc_url, {"input_ids": job[0], "max_tokens": job[1], "stream": job[2]}
                ),
                jobs,
            )
        )
    for (prompt, max_tokens, _), reply in zip(jobs, replies):
        assert reply["token_ids"] == session.generate(prompt, max_new_tokens=max_tokens).token_ids


def test_a_client_that_cancels_mid_stream_leaves_the_server_serving(server, session):
    responses: queue.Queue = queue.Queue()
    stream = grpcclient.InferenceServerClient(server.grpc_url)
    stream.start_stream(callback=lambda result, error: responses.put((result, error)))
    values = {"input_ids": PROMPTS[3], "max_tokens": LIMIT, "stream": True}
    stream.async_stream_infer("pard", client.request_inputs(values), enable_empty_final_response=True)
    responses.get(timeout=60)
    stream.stop_stream(cancel_requests=True)
    stream.close()
    reply = client.generate(server.grpc_url, {"input_ids": PROMPTS[0], "max_tokens": 10})
    assert reply["token_ids"] == session.generate(PROMPTS[0], max_new_tokens=10).token_ids


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_tokens": 5}, "exactly one of text_input and input_ids"),
        ({"input_ids": [5, 6], "max_tokens": 0}, f"max_tokens must lie in 1..{LIMIT}, got 0"),
        ({"input_ids": [5, 6], "max_tokens": LIMIT + 1}, f"got {LIMIT + 1}"),
        ({"input_ids": [5, 6]}, "max_tokens"),  # a required input: Triton refuses it before the model
        ({"input_ids": [5, 6], "max_tokens": 5, "temperature": -1.0}, "temperature"),
    ],
)
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(server, session, values, message):
    with pytest.raises(RuntimeError, match=message):
        client.generate(server.grpc_url, values)
    assert (
        client.generate(server.grpc_url, {"input_ids": PROMPTS[0], "max_tokens": 4})["token_ids"]
        == session.generate(PROMPTS[0], max_new_tokens=4).token_ids
    )


def test_a_wrong_dtype_is_refused_and_the_server_keeps_serving(server, monkeypatch):
    monkeypatch.setitem(client.TYPES, "max_tokens", "FP32")  # the config says INT32
    with pytest.raises(RuntimeError, match="(?i)data.?type"):
        client.generate(server.grpc_url, {"input_ids": [5, 6], "max_tokens": 5})
    monkeypatch.undo()
    assert len(client.generate(server.grpc_url, {"input_ids": [5, 6], "max_tokens": 5})["token_ids"]) == 5


def test_the_server_finds_its_own_python_not_an_activated_venvs():
    """The python backend's stubs find their Python through PATH: with the project's .venv activated they took its
    numpy 2 and every response came back with empty tensors."""
    site = Path("/srv/.venv-tritonserver/lib/python3.11/site-packages")
    environ = {"VIRTUAL_ENV": "/work/.venv", "PATH": "/work/.venv/bin:/usr/local/bin:/usr/bin", "HOME": "/root"}
    env = server_environment(site, environ)
    assert env["PATH"].split(":") == ["/srv/.venv-tritonserver/bin", "/usr/local/bin", "/usr/bin"]
    assert "VIRTUAL_ENV" not in env and env["HOME"] == "/root"
    assert env["LD_LIBRARY_PATH"] == str(site / "nvidia_pytriton.libs")
    assert server_environment(site, {"PATH": "/usr/bin"})["PATH"] == "/srv/.venv-tritonserver/bin:/usr/bin"
