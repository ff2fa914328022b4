"""Request latency through a real Triton server (nvidia-pytriton's, python backend, CPU) at 1 and 16 concurrent
clients, beside the same requests run in-process with Session.generate, in one run.

    python benchmarks/triton_latency.py --engine engines/smollm2-135m-k3-onnxruntime [--tokens 64] [--json OUT]

Each client sends the 16 prompts of benchmarks/prompts.jsonl (chat template, greedy, streamed) one after another;
with 16 clients every prompt is in flight 16 times at once. Latency: request sent -> final response; TTFT: request
sent -> first text. Needs the server environment from `make install` (.venv-tritonserver).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pard_export.bench import DEFAULT_PROMPTS, load_prompts
from pard_export.runtime import Session
from pard_export.triton_repo import write_repository
from pard_export.triton_repo.server import DEFAULT_ENV, LocalTritonServer, site_packages

CLIENT = Path(__file__).resolve().parents[1] / "runtime" / "triton" / "client.py"


def load_client():
    spec = importlib.util.spec_from_file_location("pard_triton_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_request(client, url: str, prompt: str, tokens: int) -> dict:
    start = time.perf_counter()
    first = []
    reply = client.generate(
        url,
        {"text_input": prompt, "max_tokens": tokens, "chat": True, "stream": True},
        on_piece=lambda piece: first or first.append(time.perf_counter()),
    )
    end = time.perf_counter()
    return {
        "latency_s": end - start,
        "ttft_s": (first[0] if first else end) - start,
        "tokens": len(reply["token_ids"]),
        "token_ids": reply["token_ids"],
    }


def run_clients(client, url: str, prompts: list[str], tokens: int, clients: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_client = list(pool.map(lambda _: [timed_request(client, url, p, tokens) for p in prompts], range(clients)))
    wall = time.perf_counter() - start
    requests = [r for replies in per_client for r in replies]
    return {
        "clients": clients,
        "requests": len(requests),
        **_summary(requests, wall),
        "same_tokens_as_in_process": None,
        "_token_ids": [r["token_ids"] for r in per_client[0]],
    }


def _summary(requests: list[dict], wall: float) -> dict:
    latencies = sorted(r["latency_s"] for r in requests)
    return {
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
        "ttft_p50_ms": 1000 * statistics.median(r["ttft_s"] for r in requests),
        "tokens_per_second": sum(r["tokens"] for r in requests) / wall,
        "wall_s": wall,
    }


def in_process(engine: str, prompts: list[str], tokens: int) -> tuple[dict, list[list[int]]]:
    with Session(engine) as session:
        session.generate(prompts[0], max_new_tokens=8, chat=True)  # warm-up
        start, requests = time.perf_counter(), []
        for prompt in prompts:
            t0 = time.perf_counter()
            result = session.generate(prompt, max_new_tokens=tokens, chat=True)
            requests.append(
                {
                    "latency_s": time.perf_counter() - t0,
                    "ttft_s": result.stats.ttft_ms / 1000,
                    "tokens": len(result.token_ids),
                    "token_ids": result.token_ids,
                }
            )
        return _summary(requests, time.perf_counter() - start), [r["token_ids"] for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--env", default=str(DEFAULT_ENV), help="the environment holding nvidia-pytriton")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the repository's (pard-export triton)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    prompts = [item["prompt"] for item in load_prompts(DEFAULT_PROMPTS)]
    client = load_client()
    local, expected = in_process(args.engine, prompts, args.tokens)
    report = {
        "engine": args.engine,
        "max_tokens": args.tokens,
        "prompts": len(prompts),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "max_batch_size": args.max_batch_size,
        "in_process": local,
        "server": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(
            args.engine,
            Path(tmp) / "repo",
            python_path=[str(site_packages(args.env))],
            max_batch_size=args.max_batch_size,
        )
        with LocalTritonServer(Path(tmp) / "repo", args.env) as server:
            report["server_version"] = _server_version(server)
            timed_request(client, server.grpc_url, prompts[0], 8)  # warm-up
            for clients in (int(c) for c in args.clients.split(",")):
                result = run_clients(client, server.grpc_url, prompts, args.tokens, clients)
                result["same_tokens_as_in_process"] = result.pop("_token_ids") == expected
                report["server"].append(result)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def _server_version(server: LocalTritonServer) -> str:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        return triton.get_server_metadata().version


def format_report(report: dict) -> str:
    local = report["in_process"]
    lines = [
        f"Triton {report.get('server_version', '?')}, {report['prompts']} prompts x {report['max_tokens']} tokens, "
        f"max_batch_size {report['max_batch_size']}",
        f"in-process Session.generate: p50 {local['latency_p50_ms']:.0f} ms, {local['tokens_per_second']:.1f} tok/s",
    ]
    for r in report["server"]:
        lines.append(
            f"{r['clients']:>2} client(s): p50 {r['latency_p50_ms']:.0f} ms "
            f"(x{r['latency_p50_ms'] / local['latency_p50_ms']:.2f} "
            f"in-process), p90 {r['latency_p90_ms']:.0f} ms, TTFT p50 {r['ttft_p50_ms']:.0f} ms, "
            f"{r['tokens_per_second']:.1f} tok/s total, same tokens: {r['same_tokens_as_in_process']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
