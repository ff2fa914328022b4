"""`pard-export serve`: an engine behind OpenAI's HTTP API (completions, chat completions, models) on FastAPI and
uvicorn, the `serve` extra. The slim runtime never imports this package; it imports the runtime."""

from .server import serve

__all__ = ["serve"]
