"""The slim runtime: numpy + onnxruntime + tokenizers. Importing it never imports torch or transformers."""

from .decoding import GenerationStats
from .session import MODES, GenerationResult, Session, StreamEvent

__all__ = ["MODES", "GenerationResult", "GenerationStats", "Session", "StreamEvent"]
