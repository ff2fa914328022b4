"""Decode cost of the KV flavours against the context length, side by side in one run.

    .venv/bin/pard-export build --target smollm2-135m --k 3 --force
    .venv/bin/pard-export build --target smollm2-135m --k 3 --attention inplace --force
    .venv/bin/python benchmarks/kv_flavours.py --engine plain=engines/smollm2-135m-k3-onnxruntime \\
        --engine inplace=engines/smollm2-135m-k3-onnxruntime-inplace

For each document length (Python's reference prose, benchmarks/long_docs.py, chat template and a request to
summarize), every engine generates `--new-tokens` greedy `ar` tokens, engines interleaved, `--repeats` times;
it prints the median ms per token after the prefill, the median time to the first token, and each engine's ratios
to the first engine's. Engines of the two attention kernels compare the same way (--engine onnx=DIR_BUILT_WITH
--attention-kernel onnx --engine native=DIR).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_docs import document_prompt, long_documents  # noqa: E402

from pard_export.runtime import Session  # noqa: E402


def main() -> None:
    args = _arguments()
    sessions = {label: Session(path, threads=args.threads) for label, path in args.engine}
    codec = next(iter(sessions.values())).codec
    documents = long_documents(args.lengths, 1, lambda text: len(codec.encode(text)))
    print(f"{'tokens':>7} " + " ".join(f"{label + ': decode, first token':>34}" for label in sessions))
    for document in documents:
        prompt = codec.encode_chat(document_prompt(document))
        times = {label: [] for label in sessions}
        firsts = {label: [] for label in sessions}
        for _ in range(args.repeats):  # engines interleaved, so machine noise hits them alike
            for label, session in sessions.items():
                result = session.generate(prompt, max_new_tokens=args.new_tokens, mode="ar")
                times[label].append(1e3 / result.stats.tokens_per_second)
                firsts[label].append(result.stats.ttft_ms / 1e3)
        ms = {label: statistics.median(values) for label, values in times.items()}
        ttft = {label: statistics.median(values) for label, values in firsts.items()}
        base, base_ttft = next(iter(ms.values())), next(iter(ttft.values()))
        cells = [f"{ms[x]:6.1f} ms ({ms[x] / base:4.2f}x) {ttft[x]:5.1f} s ({ttft[x] / base_ttft:4.2f}x)" for x in ms]
        print(f"{len(prompt):>7} " + " ".join(cells), flush=True)


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine",
        action="append",
        required=True,
        type=lambda s: tuple(s.split("=", 1)),
        help="LABEL=DIR, repeatable; the first is the baseline",
    )
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[200, 1500, 5000])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
