"""The slim runtime: numpy + onnxruntime + tokenizers. Importing it never imports torch or transformers."""

from .decoding import GenerationStats
from .scheduler import Handle, Scheduler
from .session import MODES, GenerationResult, Session, StreamEvent

__all__ = ["MODES", "GenerationResult", "GenerationStats", "Handle", "Scheduler", "Session", "StreamEvent"]
