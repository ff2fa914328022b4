"""`pard-export demo`: the embedded default, fully offline: build the smollm2-135m preset, then generate."""

from __future__ import annotations

from pathlib import Path

from .presets import PRESETS

DEMO_PRESET = "smollm2-135m"
DEMO_K = 3  # the best k of the sweep in docs/benchmarks.md
DEMO_PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "List three colors of the rainbow.",
)


def _current(engine: Path) -> bool:
    """Built, and from the preset's present draft (an engine from an older draft is rebuilt)."""
    from .contract import DRAFT
    from .errors import EngineError
    from .manifest import read_manifest

    try:
        return read_manifest(engine).models[DRAFT].source == PRESETS[DEMO_PRESET].draft
    except EngineError:
        return False


def run_demo(engines: str | Path = "engines", *, max_new_tokens: int = 64, prompts=DEMO_PROMPTS) -> None:
    from .runtime import Session

    engine = Path(engines) / f"{DEMO_PRESET}-k{DEMO_K}-onnxruntime"
    if not _current(engine):
        from .export import build

        print(f"building {engine} (first run only) ...", flush=True)
        build(DEMO_PRESET, DEMO_K, out=engine, force=True, with_ar_draft=True)  # ar-draft serves pard-export bench
    note = PRESETS[DEMO_PRESET].note
    print(f"engine: {engine}\nnote: {note}\n")
    with Session(engine) as session:
        for prompt in prompts:
            pard = session.generate(prompt, max_new_tokens=max_new_tokens, chat=True)
            ar = session.generate(prompt, max_new_tokens=max_new_tokens, chat=True, mode="ar")
            same = "identical to" if pard.token_ids == ar.token_ids else "DIFFERENT FROM"
            print(f">>> {prompt}\n{pard.text.strip()}")
            print(
                f"    pard: {pard.stats.tokens_per_second:6.1f} tok/s, "
                f"{pard.stats.mean_accepted_tokens:.2f} tokens per target forward | "
                f"ar: {ar.stats.tokens_per_second:6.1f} tok/s | output {same} the target's own\n"
            )
