"""`Session`: load an engine directory once, then generate with PARD or the target-only baseline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..contract import DRAFT, TARGET
from ..errors import EngineError, GenerationError
from ..manifest import TOKENIZER_DIR, Manifest, read_manifest, verify_hashes
from .backend_ort import OrtGraph
from .cache import CachedGraph
from .decoding import GenerationStats, StatsRecorder, ar_step, pard_step
from .text import TextCodec

MODES = ("pard", "ar")


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]  # the new tokens only
    text: str
    stats: GenerationStats

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason

    def to_dict(self) -> dict:
        return {"token_ids": self.token_ids, "text": self.text, "stats": self.stats.to_dict()}


class Session:
    """The compiled draft and target of one engine directory (numpy + onnxruntime; no torch)."""

    def __init__(self, engine_dir: str | Path, *, verify: bool = False, threads: int | None = None,
                 providers: Sequence[str] | None = None):
        self.engine_dir = Path(engine_dir)
        self.manifest: Manifest = read_manifest(self.engine_dir)
        if verify:
            verify_hashes(self.engine_dir, self.manifest)
        if self.manifest.backend != "onnxruntime":
            raise EngineError(f"{self.engine_dir} was built for {self.manifest.backend!r}; this runtime runs onnxruntime engines")
        self.codec = TextCodec(self.engine_dir / TOKENIZER_DIR)
        self._target = self._cached_graph(TARGET, threads, providers)
        self._draft = self._cached_graph(DRAFT, threads, providers)
        self._eos = frozenset(self.manifest.eos_token_ids)

    def generate(self, prompt: str | Sequence[int], *, max_new_tokens: int = 128, mode: str = "pard",
                 chat: bool = False) -> GenerationResult:
        """Greedy decoding; the output equals the target's own greedy decoding token for token."""
        if mode not in MODES:
            raise GenerationError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        prompt_ids = self._prompt_ids(prompt, chat)
        tokens, stats = self._decode(prompt_ids, max_new_tokens, mode)
        return GenerationResult(tokens, self.codec.decode(tokens), stats)

    def close(self) -> None:
        self._target = self._draft = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cached_graph(self, role: str, threads, providers) -> CachedGraph:
        entry = self.manifest.models[role]
        graph = OrtGraph(self.engine_dir / entry.file, entry.io, threads=threads, providers=providers)
        return CachedGraph(graph, entry.io, entry.kv_heads, entry.head_dim, self.manifest.max_seq_len)

    def _prompt_ids(self, prompt: str | Sequence[int], chat: bool) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise GenerationError("the prompt is empty; pass some text or token ids")
            ids = self.codec.encode_chat(prompt) if chat else self.codec.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
            rows = self.manifest.models[TARGET].vocab_rows
            if any(not 0 <= i < rows for i in ids):
                raise GenerationError(f"prompt token ids must lie in 0..{rows - 1}")
        if not ids:
            raise GenerationError("the prompt is empty; pass some text or token ids")
        if len(ids) >= self.manifest.max_seq_len:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens but the engine's max_seq_len is {self.manifest.max_seq_len}; "
                "shorten the prompt or rebuild with a larger --max-seq-len"
            )
        return ids

    def _decode(self, prompt_ids: list[int], max_new_tokens: int, mode: str) -> tuple[list[int], GenerationStats]:
        k, max_seq_len = self.manifest.k, self.manifest.max_seq_len
        target, draft = self._target, self._draft
        target.reset()
        draft.reset()
        recorder = StatsRecorder(mode, k, uses_draft=mode == "pard")
        out: list[int] = []
        target_new, draft_new = list(prompt_ids), list(prompt_ids)  # tokens each model has not seen yet
        start, ttft, first_step_tokens, reason = time.perf_counter(), None, 0, "length"
        while (budget := min(max_new_tokens - len(out), max_seq_len - len(prompt_ids) - len(out))) > 0:
            if mode == "pard" and budget > 1:
                step = pard_step(target, draft, target_new, draft_new, min(k, budget - 1))
            else:
                step = ar_step(target, target_new)
            emitted = self._until_eos(step.emitted)
            out += emitted
            recorder.record(step, len(emitted))
            if ttft is None:
                ttft, first_step_tokens = time.perf_counter() - start, len(emitted)
            if emitted[-1] in self._eos:
                reason = "stop"
                break
            target_new, draft_new = [emitted[-1]], emitted
        return out, recorder.finish(reason, ttft or 0.0, time.perf_counter() - start, first_step_tokens)

    def _until_eos(self, tokens: list[int]) -> list[int]:
        for i, token in enumerate(tokens):
            if token in self._eos:
                return tokens[: i + 1]
        return tokens
