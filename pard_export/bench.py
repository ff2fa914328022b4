"""`pard-export bench`: every mode on the same prompts, interleaved prompt by prompt, in one run.

Per mode: median tokens/s (prefill excluded) and TTFT over prompts, tokens per target forward, per-position
acceptance, draft and verify step times, and the share of decode time spent outside ONNX Runtime.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PardExportError
from .host import cpu_count, cpu_name
from .prompts import load_prompts
from .runtime import GenerationStats, Session

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "prompts.jsonl"
WARMUP_TOKENS = 16


def bench(
    engine: str | Path,
    *,
    prompts: str | Path | None = None,
    max_new_tokens: int = 128,
    modes: Sequence[str] | None = None,
    json_out: str | Path | None = None,
    plot: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Measure the modes side by side; returns (and optionally writes) the report of design §2."""
    if max_new_tokens <= 0:  # checked here: the warm-up runs would not catch it
        raise PardExportError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    items = load_prompts(Path(prompts) if prompts else DEFAULT_PROMPTS)
    with Session(engine) as session:
        modes = _check_modes(modes, session)
        runs = _measure(session, items, modes, max_new_tokens, progress)
        report = {
            "modes": {mode: summarize(runs[mode]) for mode in modes},
            "k": session.manifest.k,
            "prompts": len(items),
            "max_new_tokens": max_new_tokens,
            "engine": str(engine),
            "machine": machine_info(session),
        }
    report["speedup"] = _speedups(report["modes"])
    report["step_cost"] = _step_costs(report["modes"])
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    if plot:
        plot_report(report, Path(plot))
    return report


def _check_modes(modes: Sequence[str] | None, session: Session) -> list[str]:
    if not modes:
        return list(session.modes)
    unknown = [m for m in modes if m not in session.modes]
    if unknown:
        raise PardExportError(
            f"mode(s) {', '.join(unknown)} unavailable with this engine (it offers {', '.join(session.modes)}; "
            "ar-draft needs a build with --with-ar-draft)"
        )
    return list(modes)


def _measure(session: Session, items: list[dict], modes: list[str], max_new_tokens: int, progress: bool):
    from tqdm import tqdm

    def run(item, mode, tokens):
        # Text prompts are user turns: chat template when the tokenizer has one.
        prompt = item.get("prompt_ids") or item["prompt"]
        chat = "prompt_ids" not in item and session.codec.chat_template is not None
        busy = session.backend_seconds
        result = session.generate(prompt, max_new_tokens=tokens, mode=mode, chat=chat)
        return result.stats, session.backend_seconds - busy

    for mode in modes:  # warm up every mode (and the shapes of a first step) before timing anything
        run(items[0], mode, WARMUP_TOKENS)
    runs = {mode: [] for mode in modes}
    with tqdm(
        total=len(items) * len(modes),
        desc="bench",
        unit="run",
        disable=None if progress else True,
        leave=False,
        file=sys.stderr,
    ) as bar:
        for item in items:
            for mode in modes:  # interleaved: machine noise hits every mode alike
                runs[mode].append(run(item, mode, max_new_tokens))
                bar.update(1)
    return runs


def summarize(runs: list[tuple[GenerationStats, float]]) -> dict:
    stats = [s for s, _ in runs]
    total = lambda name: sum(getattr(s, name) for s in stats)  # noqa: E731
    accepted = [sum(col) for col in zip(*(s.per_position_accepted for s in stats if s.per_position_accepted))]
    drafted = [sum(col) for col in zip(*(s.per_position_drafted for s in stats if s.per_position_drafted))]
    wall_s = sum(s.total_ms for s in stats) / 1e3
    return {
        "tokens_per_second": statistics.median(s.tokens_per_second for s in stats),
        "mean_accepted_tokens": total("new_tokens") / max(total("target_forwards"), 1),
        "acceptance_rate": total("accepted_drafts") / total("drafted_tokens") if total("drafted_tokens") else 0.0,
        "per_position_acceptance": [a / d if d else 0.0 for a, d in zip(accepted, drafted)],
        "target_forwards": total("target_forwards"),
        "draft_forwards": total("draft_forwards"),
        "new_tokens": total("new_tokens"),
        "ttft_ms": statistics.median(s.ttft_ms for s in stats),
        "draft_step_ms": statistics.median(s.draft_step_ms for s in stats),
        "verify_step_ms": statistics.median(s.verify_step_ms for s in stats),
        "outside_onnxruntime_pct": 100 * (wall_s - sum(busy for _, busy in runs)) / wall_s if wall_s else 0.0,
        "drafts_per_step": [sum(col) for col in zip(*(s.drafts_per_step for s in stats))],
        "modelled_tokens_per_second": statistics.median(s.modelled_tokens_per_second for s in stats),
    }


def _speedups(modes: dict) -> dict:
    rate = {mode: m["tokens_per_second"] for mode, m in modes.items()}
    speedup = {}
    if "pard" in rate and "ar" in rate:
        speedup["pard_vs_ar"] = rate["pard"] / rate["ar"]
    if "pard-fixed" in rate and "ar" in rate:
        speedup["pard_fixed_vs_ar"] = rate["pard-fixed"] / rate["ar"]
    if "pard" in rate and "ar-draft" in rate:
        speedup["pard_vs_ar_draft"] = rate["pard"] / rate["ar-draft"]
    return speedup


def _step_costs(modes: dict) -> dict:
    """Draft and verify step times in units of one target decode step (the ar mode's step)."""
    if "ar" not in modes or not modes["ar"]["verify_step_ms"]:
        return {}
    decode = modes["ar"]["verify_step_ms"]
    costs = {"target_decode_ms": decode}
    for mode in ("pard", "ar-draft"):
        if mode in modes:
            costs[f"{mode}_draft_vs_decode"] = modes[mode]["draft_step_ms"] / decode
            costs[f"{mode}_verify_vs_decode"] = modes[mode]["verify_step_ms"] / decode
    return costs


def machine_info(session: Session) -> dict:
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "cpus": cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": session.providers,
    }


def format_report(report: dict) -> str:
    lines = [
        f"k={report['k']}, {report['prompts']} prompts x {report['max_new_tokens']} new tokens, "
        f"{report['machine']['cpu']}",
        f"{'mode':10} {'tok/s':>8} {'tau':>6} {'ttft ms':>8} {'draft ms':>9} {'verify ms':>10} {'outside ORT':>12}",
    ]
    for mode, m in report["modes"].items():
        lines.append(
            f"{mode:10} {m['tokens_per_second']:8.1f} {m['mean_accepted_tokens']:6.2f} {m['ttft_ms']:8.1f} "
            f"{m['draft_step_ms']:9.2f} {m['verify_step_ms']:10.2f} {m['outside_onnxruntime_pct']:11.1f}%"
        )
        if m["per_position_acceptance"]:
            lines.append(
                f"{'':10} per-position acceptance: " + " ".join(f"{x:.2f}" for x in m["per_position_acceptance"])
            )
        if m["modelled_tokens_per_second"]:
            lines.append(
                f"{'':10} steps by drafts verified (n = 0..k): {m['drafts_per_step']}; modelled "
                f"{m['modelled_tokens_per_second']:.1f} tok/s"
            )
    lines += [f"speedup {name}: {value:.2f}x" for name, value in report["speedup"].items()]
    costs = report.get("step_cost", {})
    if "pard_draft_vs_decode" in costs:
        lines.append(
            f"pard step cost in target decode steps ({costs['target_decode_ms']:.2f} ms): "
            f"draft {costs['pard_draft_vs_decode']:.2f}, verify {costs['pard_verify_vs_decode']:.2f}"
        )
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PardExportError("--plot needs matplotlib: pip install matplotlib") from e
    modes = report["modes"]
    fig, (speed, acceptance) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"ar": "#888888", "pard": "#dd6622", "pard-fixed": "#eeaa44", "ar-draft": "#4488aa"}
    speed.bar(list(modes), [m["tokens_per_second"] for m in modes.values()], color=[colors[m] for m in modes])
    speed.set_ylabel("tokens / s (prefill excluded)")
    speed.set_title(f"decode speed, k={report['k']}")
    for mode, m in modes.items():
        if m["per_position_acceptance"]:
            xs = range(1, len(m["per_position_acceptance"]) + 1)
            acceptance.plot(xs, m["per_position_acceptance"], marker="o", label=mode, color=colors[mode])
    acceptance.set_xlabel("draft position")
    acceptance.set_ylabel("acceptance")
    acceptance.set_ylim(0, 1.05)
    acceptance.set_title("per-position acceptance")
    if acceptance.lines:
        acceptance.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
