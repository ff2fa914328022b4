"""Time to first token of long prompts: all but the last token in one call without logits, and in chunks without
logits (decoding.prefill_chunks). The first table of docs/benchmarks.md also had the whole prompt in one call with
logits at every position, as before prefill_chunks existed; the runtime no longer has that path.

    .venv/bin/python benchmarks/prefill_chunks.py --engine engines/smollm2-135m-k3-onnxruntime

Prompts: documents of ~1.5k and ~5k tokens from Python's own reference (benchmarks/long_docs.py) and a request to
summarize them; 4 new tokens; the three settings interleaved per prompt and mode, the best of --repeats runs each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.long_docs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.long_docs import document_prompt, long_documents
from pard_export.runtime import Session, decoding

SETTINGS = {  # name -> PREFILL_CHUNK
    "one call, last logits": 10**9,
    f"chunks of {decoding.PREFILL_CHUNK}": decoding.PREFILL_CHUNK,
}


def time_to_first_token(session: Session, ids: list[int], mode: str, chunk: int, repeats: int) -> float:
    decoding.PREFILL_CHUNK = chunk
    return min(session.generate(ids, max_new_tokens=4, mode=mode).stats.ttft_ms for _ in range(repeats)) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--doc-tokens", default="1500,5000")
    parser.add_argument("--modes", default="ar,pard")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    session = Session(args.engine, threads=args.threads)
    budgets = tuple(int(n) for n in args.doc_tokens.split(","))
    documents = long_documents(budgets, 1, lambda text: len(session.codec.encode(text)))
    print("| prompt tokens | mode | " + " | ".join(SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    for document in documents:
        ids = session.codec.encode_chat(document_prompt(document))
        for mode in args.modes.split(","):
            seconds = [time_to_first_token(session, ids, mode, s, args.repeats) for s in SETTINGS.values()]
            print(f"| {len(ids)} | {mode} | " + " | ".join(f"{t:.1f} s" for t in seconds) + " |", flush=True)


if __name__ == "__main__":
    main()
