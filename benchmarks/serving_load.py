"""Serving under load: N concurrent streaming clients with staggered (Poisson) arrivals over the chat prompts, through
Triton (the `pard` model) and `pard-export serve` (OpenAI's HTTP API), beside the same requests in-process, in one
run.

    python benchmarks/serving_load.py --engine engines/smollm2-135m-k3-onnxruntime [--front triton,serve]
        [--clients 16] [--interarrival 0.2] [--tokens 64] [--requests 4] [--json OUT]

Client i starts at the i-th arrival of a Poisson process (mean gap --interarrival seconds, seeded), then sends
--requests chat prompts of benchmarks/prompts.jsonl one after another (greedy, streamed, --tokens new tokens at most).
TTFT: request sent -> first text; latency: request sent -> last response; tokens/s: all new tokens over the wall
time from the first request to the last reply. Every reply is checked against in-process Session.generate (text,
and token ids where the front end returns them). Triton needs `make install`'s .venv-tritonserver; serve needs the
`serve` extra.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pard_export.bench import DEFAULT_PROMPTS, load_prompts
from pard_export.runtime import Session

ROOT = Path(__file__).resolve().parents[1]
TRITON_CLIENT = ROOT / "runtime" / "triton" / "client.py"
FRONTS = ("triton", "serve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--front", default="triton,serve", help="comma-separated: triton, serve")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--interarrival", type=float, default=0.2, help="mean seconds between client arrivals")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's scheduler batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--triton-env", help="the environment holding nvidia-pytriton (default .venv-tritonserver)")
    parser.add_argument("--python-path", action="append", help="for Triton's model: folders to import from first")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    fronts = [f for f in args.front.split(",") if f]
    if unknown := set(fronts) - set(FRONTS):
        parser.error(f"unknown front end(s) {sorted(unknown)}; choose from {', '.join(FRONTS)}")
    prompts = [item["prompt"] for item in load_prompts(DEFAULT_PROMPTS)]
    expected, local = in_process(args.engine, prompts, args.tokens)
    report = {
        "engine": args.engine,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "clients": args.clients,
        "interarrival_s": args.interarrival,
        "requests_per_client": args.requests,
        "max_tokens": args.tokens,
        "max_batch": args.max_batch,
        "in_process": local,
        "fronts": {},
    }
    for front in fronts:
        with start_front(front, args) as send:
            send(prompts[0], 8)  # warm-up
            report["fronts"][front] = run_load(send, prompts, expected, args)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def in_process(engine: str, prompts: list[str], tokens: int) -> tuple[dict[str, dict], dict]:
    """Each prompt's greedy reply (text and ids) from Session.generate, and its batch-1 latency."""
    with Session(engine) as session:
        session.generate(prompts[0], max_new_tokens=8, chat=True)  # warm-up
        expected, latencies, produced = {}, [], 0
        start = time.perf_counter()
        for prompt in prompts:
            t0 = time.perf_counter()
            result = session.generate(prompt, max_new_tokens=tokens, chat=True)
            latencies.append(time.perf_counter() - t0)
            expected[prompt] = {"text": result.text, "token_ids": result.token_ids}
            produced += len(result.token_ids)
        wall = time.perf_counter() - start
    return expected, {"latency_p50_ms": 1000 * statistics.median(latencies), "tokens_per_second": produced / wall}


def run_load(send, prompts: list[str], expected: dict, args) -> dict:
    rng = np.random.default_rng(args.seed)
    starts = np.cumsum(rng.exponential(args.interarrival, args.clients)) - rng.exponential(args.interarrival)
    starts = np.maximum(starts, 0.0)
    replies: list[dict] = []
    lock = threading.Lock()
    began = time.perf_counter()

    def client(i: int) -> None:
        time.sleep(max(0.0, began + starts[i] - time.perf_counter()))
        for j in range(args.requests):
            prompt = prompts[(i * args.requests + j) % len(prompts)]
            reply = send(prompt, args.tokens)
            reply["prompt"] = prompt
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return summary(replies, expected, wall)


def summary(replies: list[dict], expected: dict, wall: float) -> dict:
    ok = [r for r in replies if r.get("error") is None]
    ttft = sorted(r["ttft_s"] for r in ok)
    latency = sorted(r["latency_s"] for r in ok)
    same = [
        r["text"] == expected[r["prompt"]]["text"]
        and (r.get("token_ids") is None or r["token_ids"] == expected[r["prompt"]]["token_ids"])
        for r in ok
    ]
    return {
        "requests": len(replies),
        "failed": len(replies) - len(ok),
        "ttft_p50_ms": 1000 * _percentile(ttft, 50),
        "ttft_p90_ms": 1000 * _percentile(ttft, 90),
        "latency_p50_ms": 1000 * _percentile(latency, 50),
        "latency_p90_ms": 1000 * _percentile(latency, 90),
        "tokens_per_second": sum(r["tokens"] for r in ok) / wall,
        "wall_s": wall,
        "same_as_in_process": all(same) and len(ok) == len(replies),
        "differing_replies": len(same) - sum(same),
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class start_front:
    """The front end's server, started for the block; `as send` gives send(prompt, tokens) -> reply dict."""

    def __init__(self, front: str, args):
        self.front, self.args = front, args

    def __enter__(self):
        self._stack = []
        return self._start_triton() if self.front == "triton" else self._start_serve()

    def __exit__(self, *exc) -> None:
        for close in reversed(self._stack):
            close()

    def _start_triton(self):
        from pard_export.triton_repo import write_repository
        from pard_export.triton_repo.server import DEFAULT_ENV, LocalTritonServer, site_packages

        env = self.args.triton_env or str(DEFAULT_ENV)
        tmp = tempfile.TemporaryDirectory()
        self._stack.append(tmp.cleanup)
        repo = Path(tmp.name) / "repo"
        python_path = [*(self.args.python_path or []), str(site_packages(env))]
        write_repository(self.args.engine, repo, python_path=python_path, max_batch_size=self.args.max_batch)
        server = LocalTritonServer(repo, env)
        server.__enter__()
        self._stack.append(lambda: server.__exit__(None, None, None))
        client = _load_triton_client()
        return lambda prompt, tokens: triton_request(client, server.grpc_url, prompt, tokens)

    def _start_serve(self):
        port = _free_port()
        command = [sys.executable, "-m", "pard_export.cli", "serve", "--engine", self.args.engine]
        command += ["--port", str(port), "--max-batch", str(self.args.max_batch)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._stack.append(lambda: (process.terminate(), process.wait(30)))
        _wait_for_health(port, process)
        model = _served_model(port)
        return lambda prompt, tokens: openai_request(port, model, prompt, tokens)


def triton_request(client, url: str, prompt: str, tokens: int) -> dict:
    start, first = time.perf_counter(), []
    try:
        reply = client.generate(
            url,
            {"text_input": prompt, "max_tokens": tokens, "chat": True, "stream": True},
            on_piece=lambda piece: piece and not first and first.append(time.perf_counter()),
        )
    except RuntimeError as e:
        return {"error": str(e)}
    end = time.perf_counter()
    return {
        "ttft_s": (first[0] if first else end) - start,
        "latency_s": end - start,
        "text": reply["text"],
        "token_ids": reply["token_ids"],
        "tokens": len(reply["token_ids"]),
    }


def openai_request(port: int, model: str, prompt: str, tokens: int) -> dict:
    """One streamed chat completion over server-sent events (the standard library's HTTP client)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, pieces, usage = time.perf_counter(), None, [], {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {response.read()[:200]!r}"}
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                if text and first is None:
                    first = time.perf_counter()
                pieces.append(text)
            usage = chunk.get("usage") or usage
    finally:
        connection.close()
    end = time.perf_counter()
    return {
        "ttft_s": (first or end) - start,
        "latency_s": end - start,
        "text": "".join(pieces),
        "tokens": usage.get("completion_tokens", 0),
    }


def _load_triton_client():
    spec = importlib.util.spec_from_file_location("pard_triton_client", TRITON_CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_health(port: int, process: subprocess.Popen, wait_s: float = 300.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"pard-export serve exited: {process.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"pard-export serve did not answer /health within {wait_s:.0f} s")


def _served_model(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/models")
    return json.loads(connection.getresponse().read())["data"][0]["id"]


def format_report(report: dict) -> str:
    local = report["in_process"]
    lines = [
        f"{report['clients']} clients (Poisson arrivals, mean gap {report['interarrival_s']} s) x "
        f"{report['requests_per_client']} requests x {report['max_tokens']} tokens, max batch {report['max_batch']}; "
        f"{report['engine']}",
        f"in-process Session.generate, one at a time: latency p50 {local['latency_p50_ms']:.0f} ms, "
        f"{local['tokens_per_second']:.1f} tok/s",
        "| front | TTFT p50 | TTFT p90 | latency p50 | latency p90 | tokens/s | failed | same as in-process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for front, r in report["fronts"].items():
        same = "yes" if r["same_as_in_process"] else f"no ({r['differing_replies']} differ)"
        lines.append(
            f"| {front} | {r['ttft_p50_ms']:.0f} ms | {r['ttft_p90_ms']:.0f} ms | {r['latency_p50_ms']:.0f} ms | "
            f"{r['latency_p90_ms']:.0f} ms | {r['tokens_per_second']:.1f} | {r['failed']} | {same} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
