"""COD fine-tuning of a draft (pard-method.md §5): full fine-tune, cross-entropy, AdamW, atomic checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from .. import __version__
from ..errors import PardExportError
from ..export.pard_draft import load_draft, most_frequent_ids, save_draft, shrink, target_to_draft
from ..files import staging_dir
from ..manifest import sha256_of
from .config import TrainConfig, command_line
from .data import Sequence, read_sequences
from .layout import IGNORE, Batch, CodSettings, build_layout, collate, keep_sets

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def train(config: TrainConfig, *, resume: str | None = None, progress: bool = True) -> Path:
    """Train and write the draft to config.out; returns that path."""
    if config.threads:
        torch.set_num_threads(config.threads)
    sequences = read_sequences(config.data, config.max_len)
    tokenizer, mask_id, eos_ids, draft = _initial_draft(config, sequences)
    optimizer = None
    step = 0
    if resume:
        draft, optimizer, step = _resume(config, resume)
    training, validation = _split(sequences, config)
    runner = _Runner(config, draft.to(config.device), training, validation, mask_id, eos_ids, optimizer)
    runner.run(step, progress)
    _write_final(config, runner, tokenizer)
    return Path(config.out)


def _initial_draft(config: TrainConfig, sequences: list[Sequence]):
    """The draft to train: a saved PARD draft as it is, or the chosen layers of `init` with a trimmed head."""
    from ..export.checks import resolve_mask_id
    from ..export.pard_draft import is_trimmed_draft
    from ..export.sources import resolve
    from ..presets import PRESETS

    preset = PRESETS.get(config.init)  # a preset: start from its target
    source = resolve(preset.target if preset else config.init)
    preset_mask = preset.mask_token_id if preset else None
    model = source.load_model(torch.float32)
    tokenizer = source.load_tokenizer()
    mask_id = resolve_mask_id(model.config, config.mask_token_id, preset_mask)
    eos_ids = tuple(i for i in {tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)} if i is not None)
    if is_trimmed_draft(model.config):  # already a PARD draft: go on training it
        return tokenizer, mask_id, eos_ids, model.float().train()
    layers = _layer_indices(config.layers, model.config.num_hidden_layers)
    rows = model.get_output_embeddings().weight.shape[0]
    size = config.draft_vocab or rows
    vocab_ids = most_frequent_ids((s.ids[s.first_label :] for s in sequences), size, rows, always=eos_ids)
    if size < rows:
        draft = shrink(model, layers, vocab_ids, mask_id)
    else:
        draft = shrink(model, layers, torch.arange(rows), mask_id)
        draft.d2t = None  # a full head needs no map
    return tokenizer, mask_id, eos_ids, draft.float().train()


def _layer_indices(layers: list[int], available: int) -> list[int]:
    resolved = [i % available if -available <= i < available else None for i in layers]
    if None in resolved:
        raise PardExportError(f"layers {layers} are outside the model's 0..{available - 1}")
    return resolved


def _split(sequences: list[Sequence], config: TrainConfig) -> tuple[list[Sequence], list[Sequence]]:
    """A seeded validation share, held out of training (used to keep the best epoch)."""
    count = round(len(sequences) * config.validation_fraction)
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(config.seed + 7919)).tolist()
    held = set(order[:count])
    return [s for i, s in enumerate(sequences) if i not in held], [sequences[i] for i in sorted(held)]


class StepBatches(torch.utils.data.Dataset):
    """Batch number `step` in the COD layout: the step's sequences (a fresh shuffle per epoch) and mask draws,
    both seeded by the step, so any worker builds the same batch and a resumed run continues exactly."""

    def __init__(
        self, sequences: list[Sequence], config: TrainConfig, mask_id: int, eos_ids, first_step: int, total_steps: int
    ):
        self.sequences, self.config, self.mask_id, self.eos_ids = sequences, config, mask_id, eos_ids
        self.cod = cod_settings(config)
        self.per_epoch = math.ceil(len(sequences) / config.batch_size)
        self.first_step, self.total_steps = first_step, total_steps

    def __len__(self) -> int:
        return self.total_steps - self.first_step

    def __getitem__(self, index: int) -> tuple[Batch, int]:
        step = self.first_step + index
        epoch, offset = divmod(step, self.per_epoch)
        order = torch.randperm(len(self.sequences), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        size = self.config.batch_size
        picked = [self.sequences[int(i)] for i in order[offset * size : (offset + 1) * size]]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return layout_batch(picked, self.cod, self.mask_id, self.eos_ids, generator), sum(len(s.ids) for s in picked)


def cod_settings(config: TrainConfig) -> CodSettings:
    return CodSettings(config.blocks, config.keep_rate, config.min_keep_rate)


def layout_batch(sequences: list[Sequence], cod: CodSettings, mask_id: int, eos_ids, generator) -> Batch:
    layouts = [
        build_layout(
            torch.tensor(s.ids),
            keep_sets(len(s.ids), cod, generator),
            mask_id,
            first_label=s.first_label,
            ignore_ids=eos_ids,
        )
        for s in sequences
    ]
    return collate(layouts)


class _Runner:
    """The training loop's state: model, optimizer, data and the running statistics."""

    def __init__(self, config: TrainConfig, draft, training, validation, mask_id: int, eos_ids, optimizer=None):
        self.config, self.draft, self.training, self.validation = config, draft, training, validation
        self.mask_id, self.eos_ids = mask_id, eos_ids
        self.optimizer = optimizer or torch.optim.AdamW(
            draft.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.device = torch.device(config.device)
        self.t2d = target_to_draft(draft, draft.config.vocab_size).to(self.device)
        self.per_epoch = math.ceil(len(training) / config.batch_size)
        self.total_steps = config.max_steps or self.per_epoch * config.epochs
        self.losses: list[float] = []
        self.validation_losses: list[tuple[int, float]] = []
        self.best: tuple[float, int, dict] | None = None  # (loss, step, weights on the CPU)
        self.seconds = 0.0
        self.real_tokens = 0
        self.stopped_at: int | None = None  # set when max_minutes ended the run early

    def run(self, step: int, progress: bool) -> None:
        from tqdm import tqdm

        data = StepBatches(self.training, self.config, self.mask_id, self.eos_ids, step, self.total_steps)
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=self.config.loader_workers, pin_memory=self.device.type == "cuda"
        )
        bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            unit="step",
            disable=None if progress else True,
            file=sys.stderr,
        )
        with bar:
            started = time.perf_counter()
            for batch, real in loader:
                loss = self._step(step, batch.to(self.device))
                step += 1
                self.losses.append(loss)
                self.real_tokens += real
                self.seconds = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{_smoothed(self.losses):.3f}", tok_s=f"{self.real_tokens / self.seconds:.0f}")
                self._after_step(step, progress and bar.disable)
                if self.config.max_minutes and self.seconds > 60 * self.config.max_minutes:
                    self.stopped_at = step
                    if self.validation and (not self.validation_losses or self.validation_losses[-1][0] != step):
                        self._validate(step)
                    break

    def _after_step(self, step: int, log: bool) -> None:
        if self.validation and (step % self.per_epoch == 0 or step == self.total_steps):
            self._validate(step)
        if step % self.config.checkpoint_every == 0 or step == self.total_steps:
            self._checkpoint(step)
            if log:  # no bar (stderr is not a terminal): a log line instead
                held = f" validation {self.validation_losses[-1][1]:.3f}" if self.validation_losses else ""
                print(
                    f"step {step}/{self.total_steps} loss {_smoothed(self.losses):.3f}{held} "
                    f"{self.real_tokens / self.seconds:.0f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )

    def _step(self, step: int, batch: Batch) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(self.config, step, self.total_steps)
        loss = pard_loss(self._logits(batch), batch.labels, self.t2d)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.draft.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def _logits(self, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            return self.draft(
                input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask
            ).logits

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        """Mean loss over the held-out sequences (fixed mask draws); remembers the best weights."""
        self.draft.eval()
        cod = cod_settings(self.config)
        total, count = 0.0, 0
        size = self.config.batch_size
        for first in range(0, len(self.validation), size):
            chunk = self.validation[first : first + size]
            batch = layout_batch(chunk, cod, self.mask_id, self.eos_ids, torch.Generator().manual_seed(first))
            batch = batch.to(self.device)
            total += float(pard_loss(self._logits(batch), batch.labels, self.t2d)) * len(chunk)
            count += len(chunk)
        self.draft.train()
        loss = total / count
        self.validation_losses.append((step, loss))
        if self.config.keep_best and (self.best is None or loss < self.best[0]):
            self.best = (loss, step, {k: v.detach().to("cpu", copy=True) for k, v in self.draft.state_dict().items()})

    def _checkpoint(self, step: int) -> None:
        root = self.config.checkpoint_dir()
        with staging_dir(root / f"checkpoint-{step:06d}") as staging:
            save_draft(self.draft, staging, dtype=torch.float32)
            torch.save(self.optimizer.state_dict(), staging / OPTIMIZER_FILE)
            state = {
                "step": step,
                "config": dataclasses.asdict(self.config),
                "losses": self.losses[-200:],
                "validation_losses": self.validation_losses,
            }
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        for old in sorted(root.glob("checkpoint-*"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)


def pard_loss(logits: torch.Tensor, labels: torch.Tensor, t2d: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over trained positions; a label the draft head cannot produce is not trained."""
    rows = torch.where(labels == IGNORE, IGNORE, t2d[labels.clamp(min=0)])
    rows = torch.where(rows < 0, IGNORE, rows)
    return F.cross_entropy(logits.flatten(0, 1).float(), rows.flatten(), ignore_index=IGNORE)


def _learning_rate(c: TrainConfig, step: int, total: int) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.schedule == "constant":
        return c.lr
    progress = (step - c.warmup_steps) / max(1, total - c.warmup_steps)
    return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _smoothed(losses: list[float], window: int = 20) -> float:
    recent = losses[-window:]
    return sum(recent) / len(recent)


def _machine(config: TrainConfig) -> dict:
    if config.device.startswith("cuda"):
        return {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    return {
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _resume(config: TrainConfig, where: str):
    root = config.checkpoint_dir()
    path = Path(where) if where != "latest" else max(root.glob("checkpoint-*"), default=None)
    if path is None or not (Path(path) / STATE_FILE).is_file():
        raise PardExportError(f"no checkpoint at {where if where != 'latest' else root}; pass a checkpoint-N directory")
    draft = load_draft(path).to(config.device).train()
    optimizer = torch.optim.AdamW(draft.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizer.load_state_dict(torch.load(Path(path) / OPTIMIZER_FILE, map_location=config.device))
    step = json.loads((Path(path) / STATE_FILE).read_text())["step"]
    return draft, optimizer, step


def _write_final(config: TrainConfig, runner: _Runner, tokenizer) -> None:
    """The draft (the best epoch's weights, if kept) and its training.json, written to config.out at once."""
    if runner.best is not None:
        runner.draft.load_state_dict(runner.best[2])
    with staging_dir(Path(config.out)) as staging:
        save_draft(runner.draft, staging, tokenizer, dtype=getattr(torch, config.save_dtype))
        (staging / "training.json").write_text(json.dumps(_report(config, runner), indent=2) + "\n")


def _report(config: TrainConfig, runner: _Runner) -> dict:
    """The settings (paths relative to the current directory where they lie under it), how to redo the run, results."""
    portable = dataclasses.replace(
        config, data=_relative(config.data), init=_relative(config.init), out=_relative(config.out)
    )
    settings = dataclasses.asdict(portable)
    del settings["out"]  # the report lives in the output
    return {
        "config": settings,
        "reproduce": _reproduction(portable),
        "sequences": len(runner.training),
        "validation_sequences": len(runner.validation),
        "answer_tokens": sum(len(s.ids) - s.first_label for s in runner.training),
        "steps": runner.stopped_at or runner.total_steps,
        "planned_steps": runner.total_steps,
        "train_seconds_this_run": round(runner.seconds, 1),
        "final_loss": round(_smoothed(runner.losses), 4) if runner.losses else None,
        "validation_losses": runner.validation_losses,
        "kept_step": runner.best[1] if runner.best else (runner.stopped_at or runner.total_steps),
        "machine": _machine(config),
    }


def _reproduction(config: TrainConfig) -> dict:
    """The command that redoes the run from the directory it ran in, the data it needs, the init and the code."""
    with open(config.data, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    return {
        "command": command_line(config),
        "data_sha256": sha256_of(Path(config.data)),
        "data_lines": lines,
        "init": config.init,
        "pard_export_version": __version__,
    }


def _relative(path: str) -> str:
    """`path` relative to the current directory where it lies under it, else as given (a preset name stays one)."""
    absolute, here = Path(os.path.abspath(path)), Path.cwd()
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else path
