"""A soak of `pard-export serve`: concurrent streaming clients for --minutes with malformed and abusive requests mixed
in; every good reply is checked against in-process Session.generate, every bad request must get a 4xx (or, for a
client that leaves mid-stream, a clean close), and the server's memory must settle.

    python benchmarks/serving_soak.py --engine engines/smollm2-135m-k3-onnxruntime [--minutes 10] [--clients 16]
        [--bad 200] [--warmup 60] [--json OUT]

The clients start at Poisson arrivals (mean gap 0.2 s) and send the chat prompts of benchmarks/prompts.jsonl one
after another (greedy, streamed, 64 new tokens at most). After --warmup seconds the server's RSS is read; one more
thread then sends --bad bad requests spread over the soak; when the soak ends, the RSS is read again, idle.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from serving_load import _free_port, _served_model, _wait_for_health, in_process, openai_request

from pard_export.bench import DEFAULT_PROMPTS, load_prompts

ONE_MB = "word " * (1 << 18)  # 1.25 MB of text


def bad_requests(model: str) -> list[tuple[str, str, bytes | None]]:
    """(kind, path, body) of each abuse; a body of None is a client that leaves mid-stream."""

    def chat(**fields) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}).encode()

    return [
        ("invalid JSON", "/v1/chat/completions", b'{"model": "x", "messages": [}'),
        ("missing messages", "/v1/chat/completions", json.dumps({"model": model}).encode()),
        ("missing model", "/v1/completions", json.dumps({"prompt": "Hi"}).encode()),
        ("max_tokens 0", "/v1/chat/completions", chat(max_tokens=0)),
        ("max_tokens huge", "/v1/chat/completions", chat(max_tokens=10**9)),
        ("max_tokens a string", "/v1/chat/completions", chat(max_tokens="abc")),
        ("negative temperature", "/v1/chat/completions", chat(temperature=-1)),
        ("1 MB prompt", "/v1/completions", json.dumps({"model": model, "prompt": ONE_MB, "max_tokens": 4}).encode()),
        ("unknown model", "/v1/chat/completions", chat(model="gpt-17")),
        ("n = 3", "/v1/chat/completions", chat(n=3)),
        ("messages not a list", "/v1/chat/completions", json.dumps({"model": model, "messages": "Hi"}).encode()),
        ("unknown path", "/v1/engines", chat()),
        ("disconnect mid-stream", "/v1/chat/completions", None),
    ]


def send_bad(port: int, model: str, kind: str, path: str, body: bytes | None) -> str:
    """The outcome: the HTTP status, "closed" for a client that left, or what went wrong."""
    if body is None:
        return _leave_mid_stream(port, model)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if 400 <= response.status < 500 and "error" not in json.loads(payload):
            return f"{response.status} without an OpenAI error body"
        return str(response.status)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return f"failed: {type(e).__name__}: {e}"
    finally:
        connection.close()


def _leave_mid_stream(port: int, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body | {"stream": True}))
        response = connection.getresponse()
        if response.status != 200:
            return str(response.status)
        response.readline()  # the first event: the row is decoding
        connection.sock.shutdown(socket.SHUT_RDWR)
        return "closed"
    except (OSError, http.client.HTTPException) as e:
        return f"failed: {type(e).__name__}: {e}"
    finally:
        connection.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--bad", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the first RSS reading")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    prompts = [item["prompt"] for item in load_prompts(DEFAULT_PROMPTS)]
    expected, _ = in_process(args.engine, prompts, args.tokens)
    port = _free_port()
    command = [sys.executable, "-m", "pard_export.cli", "serve", "--engine", args.engine, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_health(port, server)
        report = soak(port, _served_model(port), server.pid, prompts, expected, args)
    finally:
        server.terminate()
        server.wait(60)
    report |= {"engine": args.engine, "date": time.strftime("%Y-%m-%d"), "server_exit_code": server.returncode}
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def soak(port: int, model: str, pid: int, prompts: list[str], expected: dict, args) -> dict:
    rng = np.random.default_rng(0)
    starts = np.concatenate([[0.0], np.cumsum(rng.exponential(0.2, args.clients - 1))])
    good: Counter = Counter()
    lock, began = threading.Lock(), time.perf_counter()
    end = began + args.warmup + 60 * args.minutes

    def client(i: int) -> None:
        time.sleep(starts[i])
        j = 0
        while time.perf_counter() < end:
            prompt = prompts[(i + j) % len(prompts)]
            reply = openai_request(port, model, prompt, args.tokens)
            outcome = (
                "error" if "error" in reply else ("same" if reply["text"] == expected[prompt]["text"] else "differs")
            )
            with lock:
                good[outcome] += 1
            j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(args.warmup)
    rss_warm = rss_mb(pid)
    outcomes = abuse(port, model, args.bad, 60 * args.minutes)
    for thread in threads:
        thread.join()
    time.sleep(5)  # idle: every row has left
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "good_requests": dict(good),
        "bad_requests": {kind: dict(Counter(results)) for kind, results in outcomes.items()},
        "rss_after_warmup_mb": rss_warm,
        "rss_at_end_mb": rss_mb(pid),
        "health_at_end": _health(port),
    }


def abuse(port: int, model: str, count: int, seconds: float) -> dict[str, list[str]]:
    """`count` bad requests, spread evenly over `seconds`, cycling through the kinds."""
    kinds = bad_requests(model)
    outcomes: dict[str, list[str]] = {kind: [] for kind, _, _ in kinds}
    started = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, started + i * seconds / count - time.perf_counter()))
        kind, path, body = kinds[i % len(kinds)]
        outcomes[kind].append(send_bad(port, model, kind, path, body))
    return outcomes


def _health(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health")
    return connection.getresponse().status


def format_report(report: dict) -> str:
    good = report["good_requests"]
    growth = report["rss_at_end_mb"] / report["rss_after_warmup_mb"] - 1
    lines = [
        f"soak of {report['minutes']} min, {report['clients']} clients, {report['engine']}",
        f"good requests: {sum(good.values())} ({good.get('same', 0)} equal to in-process, "
        f"{good.get('differs', 0)} differ, {good.get('error', 0)} failed)",
        f"RSS after warm-up {report['rss_after_warmup_mb']:.0f} MB, at the end {report['rss_at_end_mb']:.0f} MB "
        f"({100 * growth:+.1f} %); /health at the end: {report['health_at_end']}",
        "| bad request | outcomes |",
        "|---|---|",
    ]
    for kind, outcomes in report["bad_requests"].items():
        lines.append(f"| {kind} | {', '.join(f'{k} x{v}' for k, v in sorted(outcomes.items()))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
