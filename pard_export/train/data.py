"""Training sequences: JSON lines {"prompt_ids": [...], "response_ids": [...]} (pard-export distill writes them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import PardExportError


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    first_label: int  # the first index whose token is trained as a label (the answer's first token)


def read_sequences(path: str | Path, max_len: int) -> list[Sequence]:
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
    except (OSError, json.JSONDecodeError) as e:
        raise PardExportError(f"cannot read training data {path}: {e}; make it with pard-export distill") from e
    sequences = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("response_ids"), list):
            raise PardExportError(f'{path}:{number} has no "response_ids" list; make the data with pard-export distill')
        prompt = row.get("prompt_ids") or []
        ids = (prompt + row["response_ids"])[:max_len]
        if len(ids) > len(prompt) + 1:
            sequences.append(Sequence(ids, len(prompt)))
    if not sequences:
        raise PardExportError(f"{path} holds no usable sequence (each needs at least two answer tokens)")
    return sequences
