"""Peak memory and time of `pard-export build` on synthetic checkpoints of a real model's width, per depth.

    .venv/bin/python benchmarks/build_memory.py --layers 2,4,8 --json docs/build-memory.json

The target has Llama-3.1-8B's width (vocab 128,256, hidden 4,096, FFN 14,336, 32 query / 8 KV heads, llama3 rope
scaling) and the given number of layers; the draft is a 1-layer, 2,048-wide Llama with tied embeddings and the
same word-level tokenizer. Weights are random bf16, saved once under --cache as sharded safetensors (a shard per
layer, model.safetensors.index.json), as the real 8B/70B repositories ship them. Each build runs in its own process;
its peak RSS is the kernel's (wait4's ru_maxrss), its time the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 128_256
SPECIALS = ["<|pad|>", "<|begin|>", "<|end|>", "<|mask|>"]
MASK = 3
TARGET_WIDTH = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
DRAFT_WIDTH = dict(
    hidden_size=2048, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=8, num_hidden_layers=1
)


def tokenizer() -> PreTrainedTokenizerFast:
    words = {token: i for i, token in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), VOCAB)}
    tok = Tokenizer(models.WordLevel(words, unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[1], eos_token=SPECIALS[2], pad_token=SPECIALS[0]
    )


def save_checkpoint(directory: Path, config: LlamaConfig) -> Path:
    """Random bf16 weights, one shard per decoder layer plus one for the rest, never all in memory at once."""
    if (directory / "config.json").is_file():
        return directory
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(config).named_parameters()}
    shards: dict[str, dict[str, torch.Size]] = {}
    for name, shape in shapes.items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(layer, {})[name] = shape
    weight_map, generator = {}, torch.Generator().manual_seed(0)
    for index, (part, members) in enumerate(shards.items(), start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random(shape, generator) for name, shape in members.items()}
        save_file(tensors, staging / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(members, file)
    (staging / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(staging)
    tokenizer().save_pretrained(staging)
    staging.rename(directory)
    return directory


def _random(shape, generator) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)  # norms
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def target_config(layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, num_hidden_layers=layers, max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", **TARGET_WIDTH,
    )  # fmt: skip


def draft_config() -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        torch_dtype="bfloat16", rope_theta=500000.0, rope_scaling=TARGET_WIDTH["rope_scaling"], **DRAFT_WIDTH,
    )  # fmt: skip
    config.pard_token, config.spd_type = MASK, "pard"
    return config


def measure_build(target: Path, draft: Path, out: Path, flags: list[str]) -> dict:
    """Run `pard-export build` in a fresh process: its wall time and peak RSS."""
    command = [sys.executable, "-m", "pard_export.cli", "build", "--target", str(target), "--draft", str(draft)]
    command += ["--out", str(out), "--force", "--quiet", *flags]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"build failed ({process.returncode}): {' '.join(command)}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,4,8", help="target depths, comma-separated")
    parser.add_argument("--flags", default="--dtype float16 --k 8", help="build flags")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "pard-export" / "build-memory"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    draft = save_checkpoint(cache / "draft-1x2048", draft_config())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for layers in (int(n) for n in args.layers.split(",")):
            target = save_checkpoint(cache / f"target-{layers}x4096", target_config(layers))
            result = measure_build(target, draft, Path(scratch) / "engine", args.flags.split())
            engine_gb = sum(f.stat().st_size for f in (Path(scratch) / "engine").rglob("*") if f.is_file()) / 1e9
            rows.append({"layers": layers, **result, "engine_gb": round(engine_gb, 2)})
            print(f"{layers:3d} layers: {result['seconds']:6.1f} s, peak RSS {result['peak_rss_gb']:5.2f} GB, "
                  f"engine {engine_gb:.2f} GB", flush=True)  # fmt: skip
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        per_layer = (last["peak_rss_gb"] - first["peak_rss_gb"]) / (last["layers"] - first["layers"])
        print(f"peak RSS per layer: {per_layer:+.3f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps({"flags": args.flags, "builds": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
