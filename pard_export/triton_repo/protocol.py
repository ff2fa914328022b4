"""The `pard` Triton model's inputs and outputs (design §6), defined once for the config, the model and clients.

Names follow TensorRT-LLM's Triton models. The model batches requests (max_batch_size > 0), so every tensor a
request carries has a leading batch dimension of 1 before the dims below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import RequestError

TEXT_INPUT, INPUT_IDS, MAX_TOKENS = "text_input", "input_ids", "max_tokens"
TEMPERATURE, TOP_P, TOP_K, SEED, STREAM, CHAT = "temperature", "top_p", "top_k", "seed", "stream", "chat"
TEXT_OUTPUT, OUTPUT_IDS, FINISH_REASON = "text_output", "output_ids", "finish_reason"
ACCEPTANCE_RATE, ACCEPTED_DRAFTS, DRAFTED, MEAN_ACCEPTED = (
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
    "mean_accepted_tokens",
)

NUMPY_TYPES = {
    "TYPE_STRING": np.object_,
    "TYPE_INT32": np.int32,
    "TYPE_UINT64": np.uint64,
    "TYPE_FP32": np.float32,
    "TYPE_BOOL": np.bool_,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # a Triton config type, a key of NUMPY_TYPES
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = True


INPUTS = (
    Tensor(TEXT_INPUT, "TYPE_STRING", (1,)),  # UTF-8 text; or input_ids
    Tensor(INPUT_IDS, "TYPE_INT32", (-1,)),
    Tensor(MAX_TOKENS, "TYPE_INT32", (1,), optional=False),
    Tensor(TEMPERATURE, "TYPE_FP32", (1,)),  # 0 (default): greedy, token for token the target's own output
    Tensor(TOP_P, "TYPE_FP32", (1,)),
    Tensor(TOP_K, "TYPE_INT32", (1,)),
    Tensor(SEED, "TYPE_UINT64", (1,)),
    Tensor(STREAM, "TYPE_BOOL", (1,)),  # True: a response per step with the new text; the last one is flagged final
    Tensor(CHAT, "TYPE_BOOL", (1,)),  # True: wrap text_input in the tokenizer's chat template
)
OUTPUTS = (
    Tensor(TEXT_OUTPUT, "TYPE_STRING", (1,)),
    Tensor(OUTPUT_IDS, "TYPE_INT32", (-1,)),
    Tensor(FINISH_REASON, "TYPE_STRING", (1,)),  # "stop" or "length"; final response only
    Tensor(ACCEPTANCE_RATE, "TYPE_FP32", (1,)),  # these four: final response only
    Tensor(ACCEPTED_DRAFTS, "TYPE_INT32", (1,)),
    Tensor(DRAFTED, "TYPE_INT32", (1,)),
    Tensor(MEAN_ACCEPTED, "TYPE_FP32", (1,)),
)


@dataclass(frozen=True)
class Request:
    prompt: str | list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stream: bool = False
    chat: bool = False

    def settings(self) -> dict:
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed, chat=self.chat)


def parse_request(read: Callable[[str], np.ndarray | None], max_tokens_limit: int) -> Request:
    """A Request from a reader of input tensors by name (None when absent); RequestError names what is wrong."""
    present = {t.name: read(t.name) for t in INPUTS}
    present = {name: array for name, array in present.items() if array is not None}
    for name, array in present.items():
        if array.ndim == 0 or array.shape[0] != 1:
            raise RequestError(f"{name} has shape {list(array.shape)}; send one prompt per request (batch dimension 1)")
    max_tokens = _scalar(present, MAX_TOKENS, int, None)
    if max_tokens is None or not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(f"max_tokens must lie in 1..{max_tokens_limit}, got {max_tokens}")
    seed = _scalar(present, SEED, int, None)
    return Request(
        _prompt(present),
        max_tokens,
        _scalar(present, TEMPERATURE, float, 0.0),
        _scalar(present, TOP_P, float, 1.0),
        _scalar(present, TOP_K, int, 0),
        seed,
        _scalar(present, STREAM, bool, False),
        _scalar(present, CHAT, bool, False),
    )


def _prompt(present: dict[str, np.ndarray]) -> str | list[int]:
    if (TEXT_INPUT in present) == (INPUT_IDS in present):
        raise RequestError(f"send exactly one of {TEXT_INPUT} and {INPUT_IDS}")
    if INPUT_IDS in present:
        return [int(i) for i in present[INPUT_IDS].reshape(-1)]
    text = present[TEXT_INPUT].reshape(-1)
    if text.size != 1:
        raise RequestError(f"{TEXT_INPUT} must hold one string, got {text.size}")
    value = text[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as e:
        raise RequestError(f"{TEXT_INPUT} is not valid UTF-8 ({e.reason}); send UTF-8 text") from e


def _scalar(present: dict[str, np.ndarray], name: str, kind: type, default):
    if name not in present:
        return default
    values = present[name].reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name} must hold one value, got {values.size}")
    return kind(values[0].item())


def outputs(text: str, token_ids: list[int], result=None) -> dict[str, np.ndarray]:
    """A response's tensors: the text and ids it adds, and on the final response the finish reason and metrics
    (result is a GenerationResult)."""
    tensors = {
        TEXT_OUTPUT: np.array([[text.encode("utf-8")]], dtype=np.object_),
        OUTPUT_IDS: np.array([token_ids], dtype=np.int32).reshape(1, -1),
    }
    if result is not None:
        stats = result.stats
        tensors |= {
            FINISH_REASON: np.array([[stats.finish_reason.encode()]], dtype=np.object_),
            ACCEPTANCE_RATE: np.array([[stats.acceptance_rate]], dtype=np.float32),
            ACCEPTED_DRAFTS: np.array([[stats.accepted_drafts]], dtype=np.int32),
            DRAFTED: np.array([[stats.drafted_tokens]], dtype=np.int32),
            MEAN_ACCEPTED: np.array([[stats.mean_accepted_tokens]], dtype=np.float32),
        }
    return tensors
