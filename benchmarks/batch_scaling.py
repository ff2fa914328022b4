"""How decode throughput scales with the batch size, for each mode, measured side by side.

    python benchmarks/batch_scaling.py --engine engines/smollm2-135m-k8-onnxruntime [--sizes 1,2,4] [--tokens 64]

For each batch size B the first B prompts of benchmarks/prompts.jsonl run as one generate_batch call per mode
(modes interleaved, each repeated, medians kept). Throughput = all rows' new tokens over the call's wall time
(prefill included).
"""

from __future__ import annotations

import argparse
import statistics
import time

from pard_export.bench import DEFAULT_PROMPTS, load_prompts
from pard_export.runtime import Session


def throughput(session: Session, prompts: list[str], mode: str, tokens: int) -> float:
    start = time.perf_counter()
    results = session.generate_batch(prompts, max_new_tokens=tokens, mode=mode, chat=True)
    return sum(r.stats.new_tokens for r in results) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="ar,pard")
    args = parser.parse_args()
    sizes = [int(b) for b in args.sizes.split(",")]
    modes = args.modes.split(",")
    prompts = [item["prompt"] for item in load_prompts(DEFAULT_PROMPTS)]
    with Session(args.engine) as session:
        for mode in modes:
            session.generate_batch(prompts[:2], max_new_tokens=8, mode=mode, chat=True)  # warm-up
        rates = {(b, m): [] for b in sizes for m in modes}
        for _ in range(args.repeats):
            for b in sizes:
                for mode in modes:
                    rates[(b, mode)].append(throughput(session, prompts[:b], mode, args.tokens))
    print(
        f"tokens/s summed over the batch, prefill included ({args.tokens} new tokens per row, median of {args.repeats})"
    )
    print("| B | " + " | ".join(modes) + " | " + " | ".join(f"{m} vs B=1" for m in modes) + " |")
    print("|---" * (1 + 2 * len(modes)) + "|")
    for b in sizes:
        values = [statistics.median(rates[(b, m)]) for m in modes]
        base = [statistics.median(rates[(sizes[0], m)]) for m in modes]
        print(
            f"| {b} | "
            + " | ".join(f"{v:.1f}" for v in values)
            + " | "
            + " | ".join(f"{v / s:.2f}x" for v, s in zip(values, base))
            + " |"
        )


if __name__ == "__main__":
    main()
