"""Ask the `pard` model for text over gRPC, streamed as it is generated (tritonclient's gRPC streaming API).

pip install 'tritonclient[grpc]'
python runtime/triton/client.py --url 127.0.0.1:8001 --prompt "What is PARD?" --max-tokens 64 [--no-stream]
"""

from __future__ import annotations

import argparse
import queue
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TYPES = {
    "text_input": "BYTES",
    "input_ids": "INT32",
    "max_tokens": "INT32",
    "temperature": "FP32",
    "top_p": "FP32",
    "top_k": "INT32",
    "seed": "UINT64",
    "stream": "BOOL",
    "chat": "BOOL",
}
METRICS = (
    "finish_reason",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
    "mean_accepted_tokens",
)


def request_inputs(values: dict) -> list[grpcclient.InferInput]:
    """One request's input tensors, each with the batch dimension of 1 the model expects."""
    inputs = []
    for name, value in values.items():
        array = np.array([value if name == "input_ids" else [value]])
        if TYPES[name] == "BYTES":
            array = np.array([[str(value).encode()]], dtype=np.object_)
        else:
            array = array.astype(
                {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}[TYPES[name]]
            )
        tensor = grpcclient.InferInput(name, list(array.shape), TYPES[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def generate(url: str, values: dict, on_piece=None, model: str = "pard", timeout_s: float = 300.0) -> dict:
    """Send one request over a gRPC stream; on_piece(text) sees each piece. Returns the text, the ids, the pieces
    and the metrics of the final response. A server-side error raises RuntimeError with its message."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, request_inputs(values), enable_empty_final_response=True)
        pieces, ids, metrics = [], [], {}
        while True:
            result, error = responses.get(timeout=timeout_s)
            if error is not None:
                raise RuntimeError(error.message())
            if result.as_numpy("text_output") is not None:
                pieces.append(result.as_numpy("text_output").reshape(-1)[0].decode())
                ids += result.as_numpy("output_ids").reshape(-1).tolist()
                if on_piece:
                    on_piece(pieces[-1])
            for name in METRICS:
                if result.as_numpy(name) is not None:
                    value = result.as_numpy(name).reshape(-1)[0]
                    metrics[name] = value.decode() if isinstance(value, bytes) else value.item()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return {"text": "".join(pieces), "token_ids": ids, "pieces": pieces, **metrics}
    finally:
        client.stop_stream()
        client.close()


def wait_until_ready(url: str, wait_s: float, model: str = "pard") -> None:
    deadline = time.monotonic() + wait_s
    with grpcclient.InferenceServerClient(url) as client:
        while True:
            try:
                if client.is_model_ready(model):
                    return
            except InferenceServerException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                sys.exit(f"the server at {url} did not get model {model} ready within {wait_s:.0f} s")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the server to be ready")
    args = parser.parse_args()
    values = {
        "text_input": args.prompt,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": not args.no_stream,
        "chat": args.chat,
    }
    wait_until_ready(args.url, args.wait_s)
    reply = generate(args.url, values, on_piece=lambda piece: print(piece, end="", flush=True))
    print(
        f"\n[{reply['finish_reason']}; mean accepted tokens {reply['mean_accepted_tokens']:.2f}, "
        f"acceptance {reply['acceptance_rate']:.2f}]",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
