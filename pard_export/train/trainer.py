"""COD fine-tuning of a draft (pard-method.md §5): full fine-tune, cross-entropy, AdamW, atomic checkpoints."""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import PardExportError
from .config import TrainConfig
from .data import Sequence, read_sequences
from ..export.pard_draft import load_draft, most_frequent_ids, save_draft, shrink, target_to_draft
from .layout import IGNORE, Batch, CodSettings, build_layout, collate, keep_sets

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def train(config: TrainConfig, *, resume: str | None = None, progress: bool = True) -> Path:
    """Train and write the draft to config.out; returns that path."""
    if config.threads:
        torch.set_num_threads(config.threads)
    sequences = read_sequences(config.data, config.max_len)
    tokenizer, mask_id, eos_ids, draft = _initial_draft(config, sequences)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if resume:
        draft, optimizer, step = _resume(config, resume)
    runner = _Runner(config, draft, optimizer, sequences, mask_id, eos_ids)
    runner.run(step, progress)
    _write_final(config, runner, tokenizer)
    return Path(config.out)


def _initial_draft(config: TrainConfig, sequences: list[Sequence]):
    from ..export.checks import resolve_mask_id
    from ..export.sources import resolve, resolve_pair
    from ..presets import PRESETS

    if config.init in PRESETS:
        source, _, preset_mask, _ = resolve_pair(config.init, None)
    else:
        source, preset_mask = resolve(config.init), None
    model = source.load_model(torch.float32)
    tokenizer = source.load_tokenizer()
    mask_id = resolve_mask_id(model.config, config.mask_token_id, preset_mask)
    eos_ids = tuple(i for i in {tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)} if i is not None)
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


class _Runner:
    """The training loop's state: model, optimizer, data order and the running statistics."""

    def __init__(self, config: TrainConfig, draft, optimizer, sequences, mask_id: int, eos_ids):
        self.config, self.draft, self.optimizer, self.sequences = config, draft, optimizer, sequences
        self.mask_id, self.eos_ids = mask_id, eos_ids
        self.cod = CodSettings(config.blocks, config.keep_rate, config.min_keep_rate)
        self.t2d = target_to_draft(draft, draft.config.vocab_size)
        per_epoch = math.ceil(len(sequences) / config.batch_size)
        self.total_steps = config.max_steps or per_epoch * config.epochs
        self.per_epoch = per_epoch
        self.losses: list[float] = []
        self.seconds = 0.0
        self.real_tokens = 0

    def run(self, step: int, progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                   disable=None if progress else True, file=sys.stderr)
        with bar:
            while step < self.total_steps:
                started = time.perf_counter()
                loss, real = self._step(step)
                self.seconds += time.perf_counter() - started
                self.real_tokens += real
                self.losses.append(loss)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{_smoothed(self.losses):.3f}", tok_s=f"{self.real_tokens / self.seconds:.0f}")
                if step % self.config.checkpoint_every == 0 or step == self.total_steps:
                    self._checkpoint(step)
                    if progress and bar.disable:  # no bar (stderr is not a terminal): a log line instead
                        print(f"step {step}/{self.total_steps} loss {_smoothed(self.losses):.3f} "
                              f"{self.real_tokens / self.seconds:.0f} tok/s", file=sys.stderr, flush=True)

    def _step(self, step: int) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(self.config, step, self.total_steps)
        batch, real = self._batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            logits = self.draft(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                attention_mask=batch.attention_bias).logits
        loss = pard_loss(logits, batch.labels, self.t2d)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.draft.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), real

    def _batch(self, step: int) -> tuple[Batch, int]:
        """The step's sequences (a fresh shuffle per epoch) in the COD layout; seeded by step, so resumable."""
        epoch, offset = divmod(step, self.per_epoch)
        order = torch.randperm(len(self.sequences), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        size = self.config.batch_size
        picked = [self.sequences[int(i)] for i in order[offset * size : (offset + 1) * size]]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        layouts = [
            build_layout(torch.tensor(s.ids), keep_sets(len(s.ids), self.cod, generator), self.mask_id,
                         first_label=s.first_label, ignore_ids=self.eos_ids)
            for s in picked
        ]
        return collate(layouts), sum(len(s.ids) for s in picked)

    def _checkpoint(self, step: int) -> None:
        root = self.config.checkpoint_dir()
        final = root / f"checkpoint-{step:06d}"
        staging = root / f".checkpoint-{step:06d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        save_draft(self.draft, staging, dtype=torch.float32)
        torch.save(self.optimizer.state_dict(), staging / OPTIMIZER_FILE)
        state = {"step": step, "config": asdict(self.config), "losses": self.losses[-200:]}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
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


def _resume(config: TrainConfig, where: str):
    root = config.checkpoint_dir()
    path = Path(where) if where != "latest" else max(root.glob("checkpoint-*"), default=None)
    if path is None or not (Path(path) / STATE_FILE).is_file():
        raise PardExportError(f"no checkpoint at {where if where != 'latest' else root}; pass a checkpoint-N directory")
    draft = load_draft(path).train()
    optimizer = torch.optim.AdamW(draft.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizer.load_state_dict(torch.load(Path(path) / OPTIMIZER_FILE))
    step = json.loads((Path(path) / STATE_FILE).read_text())["step"]
    return draft, optimizer, step


def _write_final(config: TrainConfig, runner: _Runner, tokenizer) -> None:
    out = Path(config.out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_draft(runner.draft, staging, tokenizer, dtype=getattr(torch, config.save_dtype))
    report = {
        "config": asdict(config),
        "sequences": len(runner.sequences),
        "answer_tokens": sum(len(s.ids) - s.first_label for s in runner.sequences),
        "steps": runner.total_steps,
        "train_seconds_this_run": round(runner.seconds, 1),
        "final_loss": round(_smoothed(runner.losses), 4) if runner.losses else None,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
    }
    (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
