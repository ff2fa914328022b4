"""Training settings: defaults here, a TOML file over them, CLI flags over both.

Each setting's help text is its field's metadata; `pard-export train` makes one flag per field from it
(`flag(name)` spells it), so a new setting is a new flag without a second list to keep in step.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import PardExportError


def _setting(default, help: str):
    """A field with its default and the help text of its flag (a list default is copied per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: str = _setting("", "JSON lines from pard-export distill")
    init: str = _setting("", "the model the draft starts from: a preset (its target), a directory or a .gguf file")
    out: str = _setting("", "where the trained draft (a Hugging Face directory) goes")
    layers: list[int] = _setting([0, 1, 2, -1], "decoder layers of --init to keep, comma-separated (-1: the last)")
    draft_vocab: int = _setting(0, "LM head rows: the most frequent answer ids (0 keeps the whole vocabulary)")
    mask_token_id: int | None = _setting(None, "the mask id (default: the init's config, else the preset's)")
    blocks: int = _setting(8, "COD P: blocks in the layout (the deepest mask is P - 1)")
    keep_rate: float = _setting(0.7, "COD r")
    min_keep_rate: float = _setting(0.2, "COD r_min")
    max_len: int = _setting(256, "tokens per sequence (prompt + answer); longer ones are cut")
    batch_size: int = _setting(8, "sequences per optimizer step")
    lr: float = _setting(3e-4, "peak learning rate")
    warmup_steps: int = _setting(50, "steps of linear warm-up")
    schedule: str = _setting("cosine", "after warm-up: cosine (down to lr/10) or constant")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    grad_clip: float = _setting(1.0, "gradient norm clip (0: none)")
    epochs: int = _setting(1, "passes over the training data")
    max_steps: int = _setting(0, "optimizer steps (0: epochs decide)")
    max_minutes: float = _setting(0.0, "> 0: stop and save after this many minutes; the schedule still spans all steps")
    seed: int = _setting(0, "seeds the shuffles, the mask draws and the held-out share")
    checkpoint_every: int = _setting(200, "steps between checkpoints in <out>.checkpoints/")
    keep_checkpoints: int = _setting(2, "checkpoints kept (the latest ones)")
    threads: int = _setting(0, "torch intra-op threads (0: torch's default)")
    save_dtype: str = _setting("float16", "dtype of the saved weights: float16, bfloat16 or float32")
    device: str = _setting("cpu", "cpu or cuda")
    loader_workers: int = _setting(0, "processes building the COD layouts (0: in the training process)")
    validation_fraction: float = _setting(0.0, "share of the sequences held out; their loss is measured every epoch")
    keep_best: bool = _setting(True, "with validation: save the weights of the epoch with the lowest held-out loss")
    precision: str = _setting(
        "float32",
        "float32, or bfloat16: autocast matmuls over float32 master weights (about 1.6x faster on AVX512-BF16 CPUs)",
    )

    def checkpoint_dir(self) -> Path:
        return Path(f"{self.out.rstrip('/')}.checkpoints")


def flag(name: str) -> str:
    """The `pard-export train` flag of a setting: --draft-vocab for draft_vocab."""
    return "--" + name.replace("_", "-")


def command_line(config: TrainConfig) -> str:
    """The `pard-export train` command that gives these settings: one flag per setting that is not the default."""
    defaults = TrainConfig()
    words = ["pard-export", "train"]
    for setting in dataclasses.fields(TrainConfig):
        value = getattr(config, setting.name)
        if value != getattr(defaults, setting.name):
            words += _flag_words(setting.name, value)
    return shlex.join(words)


def _flag_words(name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name).removeprefix("--")]
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return [f"{flag(name)}={text}"] if text.startswith("-") else [flag(name), text]  # "-1,0" is not read as a flag


def load_config(path: str | None, overrides: dict) -> TrainConfig:
    values = {}
    if path:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise PardExportError(f"cannot read training config {path}: {e}") from e
    values |= {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PardExportError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = TrainConfig(**values)
    _check(config)
    return config


def _check(c: TrainConfig) -> None:
    for name in ("data", "init", "out"):
        if not getattr(c, name):
            raise PardExportError(f"training needs {flag(name)} (or `{name} = ...` in the config file)")
    if c.schedule not in ("cosine", "constant"):
        raise PardExportError(f"schedule {c.schedule!r} is not one of cosine, constant")
    if not 1 <= c.blocks <= 32 or not 0 < c.min_keep_rate <= c.keep_rate <= 1:
        raise PardExportError("need 1 <= blocks <= 32 and 0 < min_keep_rate <= keep_rate <= 1")
    if c.batch_size < 1 or c.max_len < 2 or c.lr <= 0 or not c.layers:
        raise PardExportError("need batch_size >= 1, max_len >= 2, lr > 0 and at least one layer")
    if c.precision not in ("float32", "bfloat16"):
        raise PardExportError(f"precision {c.precision!r} is not one of float32, bfloat16")
    if c.save_dtype not in ("float16", "bfloat16", "float32"):
        raise PardExportError(f"save_dtype {c.save_dtype!r} is not one of float16, bfloat16, float32")
