"""Move a draft directory through a channel that takes few, small files (the project's GPU machine takes
64 MiB in and gives back at most 8 files of 16 MiB): pack it into shards, unpack it on the other side.

    python training/transfer.py pack DRAFT_DIR PACK_DIR [--max-mib 15] [--int8 embed_tokens,lm_head] [--no-tokenizer]
    python training/transfer.py unpack PACK_DIR DRAFT_DIR [--tokenizer-from DIR]

Tensors named in --int8 travel as int8 with one float32 scale per row (|error| <= max|row| / 254), the rest
as stored; the draft's own quality does not depend on bit-exact weights (the target verifies every token).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
SMALL_FILES = ("config.json", "training.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def pack(draft: Path, out: Path, max_bytes: int, int8_names: tuple[str, ...], tokenizer: bool) -> list[Path]:
    pieces = []  # (key, tensor) with every tensor at most max_bytes
    for name, tensor in load_file(str(draft / WEIGHTS)).items():
        if any(part in name for part in int8_names) and tensor.dim() == 2:
            scale = tensor.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
            pieces += _split(f"{name}|int8", torch.round(tensor.float() / scale).to(torch.int8), max_bytes)
            pieces += _split(f"{name}|scale", scale, max_bytes)
        else:
            pieces += _split(name, tensor, max_bytes)
    names = SMALL_FILES + (TOKENIZER_FILES if tokenizer else ())
    files = {
        n: torch.frombuffer(bytearray((draft / n).read_bytes()), dtype=torch.uint8)
        for n in names
        if (draft / n).is_file()
    }
    pieces += [(f"file|{n}", t) for n, t in files.items()]
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for key, tensor in pieces:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = tensor.contiguous(), size + nbytes
    shards.append(current)
    paths = []
    for i, shard in enumerate(shards):
        paths.append(out / f"pack-{i:02d}.safetensors")
        save_file(shard, str(paths[-1]))
    return paths


def _split(key: str, tensor: torch.Tensor, max_bytes: int) -> list[tuple[str, torch.Tensor]]:
    row_bytes = max(1, tensor[0].numel() * tensor.element_size()) if tensor.dim() else tensor.element_size()
    rows = max(1, (max_bytes - 4096) // row_bytes)
    if tensor.dim() == 0 or tensor.shape[0] <= rows:
        return [(f"{key}#0", tensor)]
    return [(f"{key}#{i}", part) for i, part in enumerate(torch.split(tensor, rows))]


def unpack(packed: Path, draft: Path, tokenizer_from: Path | None) -> None:
    entries = {}
    for path in sorted(packed.glob("pack-*.safetensors")):
        entries |= load_file(str(path))
    if not entries:
        raise SystemExit(f"{packed} holds no pack-*.safetensors")
    draft.mkdir(parents=True, exist_ok=True)
    weights = {}
    for key in sorted({k.rsplit("#", 1)[0] for k in entries if not k.startswith("file|")}):
        parts = sorted((k for k in entries if k.rsplit("#", 1)[0] == key), key=lambda k: int(k.rsplit("#", 1)[1]))
        weights[key] = torch.cat([entries[k] for k in parts]) if len(parts) > 1 else entries[parts[0]]
    state = {}
    for key, tensor in weights.items():
        name, _, kind = key.partition("|")
        if kind == "int8":
            state[name] = (tensor.float() * weights[f"{name}|scale"]).to(torch.float16)
        elif kind != "scale":
            state[name] = tensor
    save_file(state, str(draft / WEIGHTS), metadata={"format": "pt"})
    for key, tensor in entries.items():
        if key.startswith("file|"):
            (draft / key.removeprefix("file|")).write_bytes(tensor.numpy().tobytes())
    for name in TOKENIZER_FILES if tokenizer_from else ():
        if (tokenizer_from / name).is_file() and not (draft / name).exists():
            shutil.copy(tokenizer_from / name, draft / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack")
    p.add_argument("draft", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-mib", type=float, default=15)
    p.add_argument("--int8", default="embed_tokens,lm_head")
    p.add_argument("--no-tokenizer", action="store_true")
    u = commands.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("draft", type=Path)
    u.add_argument("--tokenizer-from", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        paths = pack(
            args.draft,
            args.out,
            int(args.max_mib * 2**20),
            tuple(filter(None, args.int8.split(","))),
            not args.no_tokenizer,
        )
        print(json.dumps({str(p): p.stat().st_size for p in paths}))
    else:
        unpack(args.packed, args.draft, args.tokenizer_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
