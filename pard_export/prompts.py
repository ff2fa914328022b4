"""Prompt files: JSON lines, each with "prompt" (a user turn) or "prompt_ids" (token ids)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PardExportError

CALIBRATION_PROMPTS = Path(__file__).with_name("calibration_prompts.jsonl")  # bundled: chat, code, maths, prose


def load_prompts(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PardExportError(
            f"prompt file {path} not found; pass a JSON lines file with a prompt or prompt_ids per line"
        )
    items = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PardExportError(f"prompt file {path} cannot be read ({e}); pass a UTF-8 JSON lines file") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise PardExportError(
                f"{path}:{number} is not JSON ({e.msg}); each line needs a prompt or prompt_ids"
            ) from e
        if not isinstance(item, dict) or not ("prompt" in item or "prompt_ids" in item):
            raise PardExportError(f'{path}:{number} has neither "prompt" nor "prompt_ids"')
        items.append(item)
    if not items:
        raise PardExportError(f"{path} holds no prompts")
    return items
