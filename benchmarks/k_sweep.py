"""Sweep the draft length k: build one engine per k, then bench ar and pard side by side on each.

    python benchmarks/k_sweep.py --target smollm2-135m --ks 2,4,6,8,12 --json docs/k-sweep-smollm2.json \\
        --plot docs/k-sweep-smollm2.png

Prints a table of tokens/s, the pard/ar ratio, tau and per-position acceptance per k, and the best k (by the
ratio, which is measured side by side; absolute tokens/s drift between the k runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pard_export.bench import bench
from pard_export.export import build


def sweep(target: str, ks: list[int], engines: Path, draft: str | None, modes: list[str]) -> dict:
    results = {}
    for k in ks:
        out = engines / f"sweep-k{k}"
        if not (out / "manifest.json").is_file():
            build(target, k, draft=draft, out=out, force=True, with_ar_draft="ar-draft" in modes, progress=False)
        report = bench(out, modes=modes, progress=False)
        results[k] = report
        print(_row(k, report), flush=True)
    by_k = {str(k): r for k, r in results.items()}
    return {"target": target, "draft": draft, "best_k": best_k(by_k), "by_k": by_k}


def best_k(by_k: dict) -> int:
    """The k with the highest PARD/AR ratio: both measured side by side, so drift between k runs cancels."""
    return int(max(by_k, key=lambda k: by_k[k]["speedup"]["pard_vs_ar"]))


def _row(k: int, report: dict) -> str:
    ar, pard = report["modes"]["ar"], report["modes"]["pard"]
    acceptance = " ".join(f"{x:.2f}" for x in pard["per_position_acceptance"])
    return (
        f"k={k:2d}  ar {ar['tokens_per_second']:6.1f}  pard {pard['tokens_per_second']:6.1f} tok/s  "
        f"x{report['speedup']['pard_vs_ar']:.2f}  tau {pard['mean_accepted_tokens']:.2f}  "
        f"draft {report['step_cost']['pard_draft_vs_decode']:.2f} "
        f"verify {report['step_cost']['pard_verify_vs_decode']:.2f} "
        f"(decode steps)  acceptance {acceptance}"
    )


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in summary["by_k"]]
    reports = list(summary["by_k"].values())
    fig, (speed, tau) = plt.subplots(1, 2, figsize=(10, 4))
    speed.plot(ks, [r["speedup"]["pard_vs_ar"] for r in reports], marker="o", color="#dd6622")
    speed.axhline(1.0, color="#888888", lw=1)
    speed.set_xlabel("k")
    speed.set_ylabel("PARD tokens/s / AR tokens/s")
    speed.set_title("speedup over target-only AR")
    tau.plot(ks, [r["modes"]["pard"]["mean_accepted_tokens"] for r in reports], marker="o", color="#4488aa")
    tau.set_xlabel("k")
    tau.set_ylabel("tokens per target forward (tau)")
    tau.set_title("mean accepted tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--draft")
    parser.add_argument("--ks", default="2,4,6,8,12")
    parser.add_argument("--modes", default="ar,pard")
    parser.add_argument("--engines", default="engines", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    summary = sweep(args.target, [int(k) for k in args.ks.split(",")], args.engines, args.draft, args.modes.split(","))
    print(f"best k: {summary['best_k']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
