"""Self-distillation data: the target's own greedy answers to a prompt file, as token ids (JSON lines).

The draft learns to predict exactly what the target emits at temperature 0, so its training text is the
target's output. Uses an engine's target graph (mode "ar"); appends, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def distill(
    engine: str | Path,
    prompts_file: str | Path,
    out: str | Path,
    *,
    max_new_tokens: int = 192,
    batch: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Answer every prompt (greedy; text prompts through the chat template) and append {"prompt_ids",
    "response_ids"} lines to `out`. Returns the number of answer tokens written in this run."""
    from tqdm import tqdm

    from ..prompts import load_prompts
    from ..runtime import Session

    prompts = load_prompts(Path(prompts_file))[:limit]
    out = Path(out)
    done = _complete_lines(out)
    session = Session(engine)
    written = 0
    start = time.perf_counter()
    with (
        out.open("a") as f,
        tqdm(
            total=len(prompts),
            initial=done,
            desc="distill",
            unit="prompt",
            disable=None if progress else True,
            file=sys.stderr,
        ) as bar,
    ):
        for first in range(done, len(prompts), batch):
            chunk = [_prompt_ids(session, item) for item in prompts[first : first + batch]]
            results = session.generate_batch(chunk, max_new_tokens=max_new_tokens, mode="ar")
            for ids, result in zip(chunk, results):
                record = {"prompt_ids": ids, "response_ids": result.token_ids}
                f.write(json.dumps(record) + "\n")
                written += len(result.token_ids)
            f.flush()
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{written / (time.perf_counter() - start):.0f}")
    return written


def _prompt_ids(session, item: dict) -> list[int]:
    """A text prompt is a user turn (chat template); prompt_ids are taken as they are."""
    return item["prompt_ids"] if "prompt_ids" in item else session.codec.encode_chat(item["prompt"])


def _complete_lines(path: Path) -> int:
    """Lines already written; a torn last line (killed mid-write) is cut off so the run resumes cleanly."""
    if not path.exists():
        return 0
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    return text.count("\n")
