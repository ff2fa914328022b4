"""Session(mode="ar") against a bare ONNX Runtime greedy loop on the same target.onnx, side by side.

    pard-export build --target smollm2-135m --k 3 --attention plain   # the bare loop feeds past/present tensors
    python benchmarks/ar_overhead.py --engine engines/smollm2-135m-k3-onnxruntime-plain [--tokens 128] [--repeats 5]

Both loops decode the same prompt for the same number of tokens; tokens/s excludes the first (prefill) step.
Runs alternate (bare, session, bare, ...) and the medians are compared, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pard_export.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, PLAIN, POSITION_IDS
from pard_export.manifest import read_manifest
from pard_export.runtime import Session

PROMPT = "Once upon a time, in a small village by the sea,"


def bare_loop(session: ort.InferenceSession, spec, prompt_ids: list[int], new_tokens: int) -> float:
    """Plain greedy decoding with past/present tensors; returns decode tokens/s after the first token."""
    entry_past, entry_present = spec.past_names, spec.present_names
    shape = session.get_inputs()[3].shape
    past = {name: np.zeros((1, shape[1], 0, shape[3]), np.float32) for name in entry_past}
    ids, length = prompt_ids, 0
    first = None
    for i in range(new_tokens):
        n = len(ids)
        feeds = {
            INPUT_IDS: np.array([ids], np.int64),
            POSITION_IDS: np.arange(length, length + n, dtype=np.int64)[None],
            ATTENTION_MASK: np.ones((1, length + n), np.int64),
            **past,
        }
        outputs = session.run(None, feeds)
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, outputs))
        ids = [int(out[LOGITS][0, -1].argmax())]
        past = {p: out[q] for p, q in zip(entry_past, entry_present)}
        length += n
        if i == 0:
            first = time.perf_counter()
    return (new_tokens - 1) / (time.perf_counter() - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    engine = Path(args.engine)
    manifest = read_manifest(engine)
    spec = manifest.models["target"].io
    if spec.attention != PLAIN:
        raise SystemExit(
            f"{engine} has {spec.attention} attention; the bare loop needs a plain engine: build one with "
            "--attention plain"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    bare = ort.InferenceSession(str(engine / "target.onnx"), options, providers=["CPUExecutionProvider"])
    with Session(engine, providers=["CPUExecutionProvider"]) as session:
        prompt_ids = session.codec.encode(PROMPT)
        session.generate(prompt_ids, max_new_tokens=8, mode="ar")  # warm up both
        bare_loop(bare, spec, prompt_ids, 8)
        bare_rates, session_rates = [], []
        for _ in range(args.repeats):
            result = session.generate(prompt_ids, max_new_tokens=args.tokens, mode="ar")
            session_rates.append(result.stats.tokens_per_second)
            bare_rates.append(bare_loop(bare, spec, prompt_ids, result.stats.new_tokens))  # same length, EOS or not
    b, s = statistics.median(bare_rates), statistics.median(session_rates)
    print(f"{result.stats.new_tokens} new tokens, prompt of {len(prompt_ids)}, {args.repeats} alternating runs each")
    print(f"bare ORT loop : {b:7.2f} tok/s (median)")
    print(f"Session ar    : {s:7.2f} tok/s")
    print(f"overhead      : {100 * (b - s) / b:+.1f}% (positive = Session slower)")


if __name__ == "__main__":
    main()
