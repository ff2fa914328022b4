"""`pard-export serve`: a real process answering the openai client, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pard_export.cli import main

ROOT = Path(__file__).resolve().parents[2]


def fails_cleanly(capsys, argv: list[str], match: str) -> str:
    capsys.readouterr()
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert match in lines[0] and "Traceback" not in lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_missing_packages_name_the_extra(capsys, monkeypatch, serve_engine):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    line = fails_cleanly(capsys, ["serve", "--engine", str(serve_engine)], "pip install 'pard-export[serve]'")
    assert "uvicorn" in line


def test_a_port_in_use_is_refused_before_the_engine_loads(capsys, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        fails_cleanly(capsys, ["serve", "--engine", str(tmp_path / "none"), "--port", port], f"127.0.0.1:{port}")


def test_max_tokens_limit_is_checked(capsys, serve_engine):
    argv = ["serve", "--engine", str(serve_engine), "--port", str(free_port()), "--max-tokens-limit", "0"]
    fails_cleanly(capsys, argv, "max_tokens_limit must lie in 1..128")


def test_kv_budget_is_checked(capsys, serve_engine):
    argv = ["serve", "--engine", str(serve_engine), "--port", str(free_port()), "--kv-budget-mib", "0"]
    fails_cleanly(capsys, argv, "kv_budget_bytes >= 1")


def test_serve_answers_the_openai_client_and_stops_on_sigint(serve_engine):
    import openai

    port = free_port()
    command = [sys.executable, "-m", "pard_export.cli", "serve", "--engine", str(serve_engine), "--port", str(port)]
    server = subprocess.Popen(command + ["--model-name", "tiny", "--threads", "1"], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/health", server)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        answer = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=8, temperature=0)
        assert answer.usage.completion_tokens >= 1 and answer.choices[0].finish_reason in ("stop", "length")
        server.send_signal(signal.SIGINT)  # uvicorn shuts down, then raises KeyboardInterrupt: the CLI's exit 130
        assert server.wait(timeout=30) == 130
    finally:
        if server.poll() is None:
            server.kill()
        log = server.stderr.read().decode()
    assert "serving the model 'tiny' at http://127.0.0.1:" in log, log


def wait_for_health(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.loads(response.read()) == {"status": "ok"}
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer in {seconds} s")
