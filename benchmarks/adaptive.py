"""Adaptive drafting against fixed drafting and the target alone, interleaved in one process, per prompt set.

    .venv/bin/python benchmarks/adaptive.py --engine engines/smollm2-135m-k3-onnxruntime \\
        --engine engines/smollm2-135m-k3-onnxruntime-int4 --json docs/adaptive-smollm2.json
    # quick look: --sets chat --chat-prompts 4 --max-new-tokens 32

Prompt sets (greedy; decode tok/s = tokens after the first step / time after it, summed over a group's prompts):
- chat: benchmarks/prompts.jsonl through the chat template x 128 new tokens;
- docs: natural-text documents of ~200, ~1.5k, ~2.8k and ~5k tokens (benchmarks/long_docs.py) plus "Summarize the
  document above in a few sentences." x 96 new tokens;
- random: uniformly random token ids (seeded) of 64, 256, 1,024 and 2,048 tokens x 96 new tokens.
Modes ar, pard-fixed (K drafts every step) and pard (adaptive); each prompt runs every mode --repeats times (3),
the order rotated from round to round and prompt to prompt, after one warm-up run per mode; a prompt's figure in
each mode is its run of median speed (on a 2-core machine one run in a few is slowed by something else). Every
pard and pard-fixed output is checked against ar's. The engine's calibration is loaded or measured first (its time
is printed) and not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks.long_docs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.long_docs import document_prompt, long_documents
from pard_export.bench import DEFAULT_PROMPTS
from pard_export.prompts import load_prompts
from pard_export.runtime import Session

MODES = ("ar", "pard-fixed", "pard")
DOC_TOKENS = (200, 1500, 2800, 5000)
RANDOM_TOKENS = (64, 256, 1024, 2048)


@dataclass(frozen=True)
class Prompt:
    set: str
    group: str  # rows of the table: the set, or the set and its size
    ids: list[int]
    max_new_tokens: int


def prompt_sets(
    session: Session,
    sets,
    chat_prompts: int | None,
    docs_per_size: int,
    randoms_per_size: int,
    max_new_tokens: int | None,
) -> list[Prompt]:
    codec, prompts = session.codec, []
    if "chat" in sets:
        for item in load_prompts(DEFAULT_PROMPTS)[:chat_prompts]:
            prompts.append(Prompt("chat", "chat", codec.encode_chat(item["prompt"]), max_new_tokens or 128))
    if "docs" in sets:
        count = lambda text: len(codec.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        for doc in long_documents(DOC_TOKENS, docs_per_size, count):
            prompts.append(
                Prompt("docs", f"docs {doc.budget}", codec.encode_chat(document_prompt(doc)), max_new_tokens or 96)
            )
    if "random" in sets:
        rng = np.random.default_rng(0)
        vocab = session.manifest.vocab_size
        for size in RANDOM_TOKENS:
            for _ in range(randoms_per_size):
                ids = rng.integers(len(session.manifest.eos_token_ids) + 16, vocab, size).tolist()
                prompts.append(Prompt("random", f"random {size}", ids, max_new_tokens or 96))
    return prompts


def measure(session: Session, prompts: list[Prompt], repeats: int = 1) -> dict:
    for mode in MODES:
        session.generate(prompts[0].ids, max_new_tokens=16, mode=mode)
    runs = []
    for i, prompt in enumerate(prompts):
        tries: dict[str, list] = {mode: [] for mode in MODES}
        for r in range(repeats):
            start = (i + r) % len(MODES)
            for mode in MODES[start:] + MODES[:start]:
                tries[mode].append(session.generate(prompt.ids, max_new_tokens=prompt.max_new_tokens, mode=mode))
        same = {mode: all(t.token_ids == tries["ar"][0].token_ids for t in tries[mode]) for mode in MODES}
        results = {mode: _median_run(tries[mode]) for mode in MODES}
        runs.append((prompt, results, same))
        rates = " ".join(f"{m} {results[m].stats.tokens_per_second:6.1f}" for m in MODES)
        print(
            f"  {prompt.group:12} {len(prompt.ids):5d} tokens  {rates}  n {results['pard'].stats.drafts_per_step}",
            flush=True,
        )
    return summarize(runs)


def _median_run(results: list):
    """The run of median decode speed: a hiccup of the machine in one run of a mode moves no figure."""
    return sorted(results, key=lambda r: r.stats.tokens_per_second)[len(results) // 2]


def summarize(runs) -> dict:
    groups: dict[str, dict] = {}
    for prompt, results, same in runs:
        group = groups.setdefault(
            prompt.group,
            {
                m: {"tokens": 0, "seconds": 0.0, "forwards": 0, "new": 0, "lossless": True, "drafts_per_step": None}
                for m in MODES
            },
        )
        group["prompt_tokens"] = group.get("prompt_tokens", []) + [len(prompt.ids)]
        for mode, result in results.items():
            s, g = result.stats, group[mode]
            later_s = (s.total_ms - s.ttft_ms) / 1e3
            g["tokens"] += round(s.tokens_per_second * later_s)
            g["seconds"] += later_s
            g["forwards"] += s.target_forwards
            g["new"] += s.new_tokens
            g["lossless"] &= same[mode]
            hist = np.array(s.drafts_per_step)
            g["drafts_per_step"] = hist if g["drafts_per_step"] is None else g["drafts_per_step"] + hist
    table = {}
    for name, group in groups.items():
        row = {"prompt_tokens": int(np.mean(group.pop("prompt_tokens")))}
        for mode, g in group.items():
            row[mode] = {
                "tokens_per_second": g["tokens"] / g["seconds"],
                "tau": g["new"] / g["forwards"],
                "lossless": g["lossless"],
                "drafts_per_step": g["drafts_per_step"].tolist(),
            }
        row["pard_vs_ar"] = row["pard"]["tokens_per_second"] / row["ar"]["tokens_per_second"]
        row["pard_fixed_vs_ar"] = row["pard-fixed"]["tokens_per_second"] / row["ar"]["tokens_per_second"]
        row["pard_vs_best"] = row["pard"]["tokens_per_second"] / max(
            row["ar"]["tokens_per_second"], row["pard-fixed"]["tokens_per_second"]
        )
        table[name] = row
    return table


def format_table(engine: str, table: dict) -> str:
    lines = [
        engine,
        f"{'group':12} {'tokens':>6} {'ar':>7} {'fixed':>7} {'pard':>7} {'tau fx':>6} {'tau':>5} "
        f"{'fixed/ar':>8} {'pard/ar':>7} {'pard/best':>9}  n histogram (pard)",
    ]
    for name, r in table.items():
        lines.append(
            f"{name:12} {r['prompt_tokens']:6d} {r['ar']['tokens_per_second']:7.1f} "
            f"{r['pard-fixed']['tokens_per_second']:7.1f} {r['pard']['tokens_per_second']:7.1f} "
            f"{r['pard-fixed']['tau']:6.2f} {r['pard']['tau']:5.2f} {r['pard_fixed_vs_ar']:8.2f} "
            f"{r['pard_vs_ar']:7.2f} {r['pard_vs_best']:9.2f}  {r['pard']['drafts_per_step']}"
            + ("" if r["pard"]["lossless"] and r["pard-fixed"]["lossless"] else "  NOT LOSSLESS")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", action="append", required=True, help="engine directory (repeatable)")
    parser.add_argument("--sets", default="chat,docs,random", help="comma-separated: chat, docs, random")
    parser.add_argument("--chat-prompts", type=int, help="first N chat prompts (default: all)")
    parser.add_argument("--docs-per-size", type=int, default=1)
    parser.add_argument("--randoms-per-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, help="default: 128 chat, 96 docs and random")
    parser.add_argument("--repeats", type=int, default=3, help="runs per prompt and mode (the median run counts)")
    parser.add_argument("--recalibrate", action="store_true", help="measure the calibration again first")
    parser.add_argument("--json", help="write the tables here")
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    report = {}
    for engine in args.engine:
        with Session(engine) as session:
            calibration = session.calibrate(force=args.recalibrate)
            print(
                f"{engine}: calibration {calibration.seconds:.1f} s, acceptance "
                f"{' '.join(f'{a:.2f}' for a in calibration.acceptance)}",
                flush=True,
            )
            prompts = prompt_sets(
                session, sets, args.chat_prompts, args.docs_per_size, args.randoms_per_size, args.max_new_tokens
            )
            table = measure(session, prompts, args.repeats)
        print(format_table(engine, table), flush=True)
        report[engine] = {"calibration": calibration.to_dict(), "groups": table}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
