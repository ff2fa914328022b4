"""Replay the adaptive drafting policy offline: how the constants of pard_export/runtime/drafting.py were chosen.

Greedy decoding emits the same text whatever the drafts, and the draft's proposals at a text position depend only on
the text before it. So one pass per prompt records, for every position p of the target's answer, how many of the
K drafts proposed there agree with it (`record`); any policy's steps, accepted drafts and modelled time then follow
without running the models again (`replay`, with the engine's calibrated step costs and the draft's catch-up cost
after ar steps). The replay reproduces the measured n histograms closely (docs/benchmarks.md).

    .venv/bin/python benchmarks/adaptive_replay.py record --engine engines/smollm2-135m-k3-onnxruntime \\
        --out /tmp/trace-fp32.json          # the prompt sets of benchmarks/adaptive.py; minutes
    .venv/bin/python benchmarks/adaptive_replay.py replay --trace /tmp/trace-fp32.json \\
        --engine engines/smollm2-135m-k3-onnxruntime [--set FORGET=0.9 --set FIRST_PROBE=8 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.adaptive import prompt_sets
from pard_export.contract import DRAFT, DRAFT_IDS, DRAFT_LOGITS
from pard_export.runtime import Session, drafting
from pard_export.runtime.decoding import DRAFT_CHUNKED_FROM, left_pad, prefill_chunks


def record(engine: str, out: Path, sets: list[str]) -> None:
    with Session(engine) as session:
        k, rows = session.manifest.k, []
        for prompt in prompt_sets(session, sets, None, 1, 2, None):
            answer = session.generate(prompt.ids, max_new_tokens=prompt.max_new_tokens, mode="ar").token_ids
            rows.append(
                {
                    "group": prompt.group,
                    "prompt_tokens": len(prompt.ids),
                    "agreeing": _agreement(session, prompt.ids, answer, k),
                }
            )
            print(
                f"{prompt.group:12} {len(prompt.ids):5d} tokens: "
                f"mean agreeing drafts {np.mean(rows[-1]['agreeing']):.2f}",
                flush=True,
            )
    out.write_text(json.dumps({"engine": engine, "k": k, "rows": rows}) + "\n")


def _agreement(session: Session, prompt: list[int], answer: list[int], k: int) -> list[int]:
    """For each position p of the answer: how many drafts proposed after answer[:p] agree with answer[p:]."""
    draft = session._caches[DRAFT]
    draft.start(1)
    rows = prefill_chunks(draft, [prompt], 1, (DRAFT_IDS, DRAFT_LOGITS), DRAFT_CHUNKED_FROM)
    outputs = draft.forward(*left_pad(rows), skip=(DRAFT_LOGITS,))
    agreeing = []
    for p, token in enumerate(answer):
        drafts, truth = outputs[DRAFT_IDS][0][:k], answer[p : p + k]
        same = 0
        while same < len(truth) and drafts[same] == truth[same]:
            same += 1
        agreeing.append(same)
        outputs = draft.forward(*left_pad([[token]]), skip=(DRAFT_LOGITS,))
    return agreeing


def replay(trace: dict, calibration, policy: str) -> dict:
    """Decode tok/s (after the first step, as the runtime counts) and the n histogram per group."""
    k, groups = trace["k"], {}
    for row in trace["rows"]:
        tokens, seconds, histogram = _replay_row(row, k, calibration, policy)
        group = groups.setdefault(row["group"], [0, 0.0, np.zeros(k + 1, dtype=int)])
        group[0] += tokens
        group[1] += seconds
        group[2] += histogram
    return {name: (tokens / seconds, histogram) for name, (tokens, seconds, histogram) in groups.items()}


def _replay_row(row: dict, k: int, calibration, policy: str):
    agreeing, prompt = row["agreeing"], row["prompt_tokens"]
    adaptive = drafting.AdaptiveDrafts(calibration.costs, calibration.acceptance, 1)
    position, tokens, seconds, unseen = 0, 0, 0.0, prompt
    histogram = np.zeros(k + 1, dtype=int)
    while position < len(agreeing):
        most = min(k, len(agreeing) - position - 1)
        context = prompt + position
        if policy == "pard":
            n, modelled = adaptive.choose([0], context, most, unseen)
            cost = modelled[n]
        else:
            n = 0 if policy == "ar" else most
            cost = calibration.costs.at(context)[n] + (calibration.costs.catch_up_seconds(unseen, context) if n else 0)
        accepted = min(agreeing[position], n)
        if policy == "pard":
            adaptive.observe([0], n, [accepted])
        unseen = accepted + 1 if n else unseen + 1
        if position:  # the first step (the prefill) is not counted
            tokens, seconds = tokens + accepted + 1, seconds + cost
            histogram[n] += 1
        position += accepted + 1
    return tokens, seconds, histogram


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--engine", required=True)
    rec.add_argument("--out", required=True)
    rec.add_argument("--sets", default="chat,docs,random")
    rep = commands.add_parser("replay")
    rep.add_argument("--trace", required=True)
    rep.add_argument("--engine", required=True, help="whose calibration (step costs, acceptance) to use")
    rep.add_argument("--set", action="append", default=[], help="NAME=VALUE: a constant of runtime/drafting.py")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.engine, Path(args.out), [s for s in args.sets.split(",") if s])
        return 0
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        setattr(drafting, name, type(getattr(drafting, name))(float(value)))
    with Session(args.engine) as session:
        calibration = session.calibration
    trace = json.loads(Path(args.trace).read_text())
    ar, fixed, adaptive = (replay(trace, calibration, policy) for policy in ("ar", "pard-fixed", "pard"))
    print(f"{'group':12} {'fixed/ar':>8} {'pard/ar':>7} {'pard/best':>9}  n histogram (pard)")
    for group in ar:
        best = max(ar[group][0], fixed[group][0])
        print(
            f"{group:12} {fixed[group][0] / ar[group][0]:8.3f} {adaptive[group][0] / ar[group][0]:7.3f} "
            f"{adaptive[group][0] / best:9.3f}  {adaptive[group][1].tolist()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
