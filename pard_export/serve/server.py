"""Run the app on uvicorn: one Session, one Scheduler, until interrupted."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from ..errors import BackendUnavailableError, PardExportError

GRACEFUL_SHUTDOWN_S = 5  # then open streams are cut and the scheduler cancels their rows


def serve(
    engine_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    max_tokens_limit: int | None = None,
    kv_budget_mib: int | None = None,
    threads: int | None = None,
) -> None:
    """Serve the engine over OpenAI's HTTP API at http://host:port/v1 until Ctrl-C or SIGTERM. model_name: the id
    clients send (default: the engine directory's name); max_tokens_limit: the largest max_tokens a request may ask
    for (default: the engine's max_seq_len); kv_budget_mib: the KV memory the running requests may reserve (default:
    only max_batch bounds them)."""
    uvicorn = _serving_packages()
    from ..runtime import Scheduler, Session
    from .app import create_app

    model_name = model_name or Path(engine_dir).resolve().name
    listener = _listen(host, port)  # before the engine loads: a port in use fails at once
    with listener, Session(engine_dir, threads=threads) as session:
        limit = _max_tokens_limit(max_tokens_limit, session.manifest.max_seq_len)
        budget = None if kv_budget_mib is None else kv_budget_mib << 20
        with Scheduler(session, max_batch=max_batch, max_queue=max_queue, kv_budget_bytes=budget) as scheduler:
            app = create_app(scheduler, model_name, limit)
            config = uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, log_level="info")
            url = f"http://{host}:{listener.getsockname()[1]}/v1"
            logging.getLogger("uvicorn.error").info("serving the model %r at %s", model_name, url)
            uvicorn.Server(config).run(sockets=[listener])


def _serving_packages():
    """uvicorn (fastapi is imported by the app), or one line naming the extra that installs both."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise BackendUnavailableError(
            f"pard-export serve needs fastapi and uvicorn ({e.name} is missing): pip install 'pard-export[serve]'"
        ) from e
    return uvicorn


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise PardExportError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def _max_tokens_limit(given: int | None, max_seq_len: int) -> int:
    if given is None:
        return max_seq_len
    if not 1 <= given <= max_seq_len:
        raise PardExportError(f"max_tokens_limit must lie in 1..{max_seq_len} (the engine's max_seq_len), got {given}")
    return given
