from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest

MODEL = "tiny-pard"  # the id the test servers serve (Served.model)


@pytest.fixture(scope="session")
def serve_engine(tiny_pair, engine):
    """A tiny llama engine (k 4, max_seq_len 128) whose draft differs from its target, so acceptance varies."""
    target, draft = tiny_pair("llama")
    return engine(target, draft, 4, max_seq_len=128)


class ServerThread:
    """A real uvicorn server for `app` on a free port of 127.0.0.1, in a thread of the test process."""

    def __init__(self, app):
        import uvicorn

        listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Served:
    url: str
    session: object
    scheduler: object
    model: str = MODEL


@pytest.fixture(scope="session")
def start_app():
    """start_app(app) -> its URL on a real uvicorn server; every server stops at the end of the test session."""
    servers = []

    def start(app) -> str:
        servers.append(ServerThread(app))
        return servers[-1].url

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope="session")
def start_server(start_app):
    """start_server(session, max_tokens_limit=..., **scheduler_settings) -> Served: a Scheduler over the session
    and the app on a real server. The schedulers and sessions close at the end of the test session."""
    from pard_export.runtime import Scheduler
    from pard_export.serve.app import create_app

    started = []

    def start(session, *, max_tokens_limit=None, **scheduler_settings) -> Served:
        scheduler = Scheduler(session, **scheduler_settings)
        started.append((scheduler, session))
        app = create_app(scheduler, MODEL, max_tokens_limit or session.manifest.max_seq_len)
        return Served(start_app(app), session, scheduler)

    yield start
    for scheduler, session in reversed(started):
        scheduler.close()
        session.close()


@pytest.fixture(scope="session")
def served(serve_engine, start_server) -> Served:
    """The server most tests share: max_batch 4, max_queue 16."""
    from pard_export.runtime import Session

    return start_server(Session(serve_engine), max_batch=4, max_queue=16)


@pytest.fixture(scope="session")
def reference(serve_engine):
    """A Session of its own in the test process: what the server's answers must equal."""
    from pard_export.runtime import Session

    with Session(serve_engine) as session:
        yield session


@pytest.fixture
def client(served):
    import openai

    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=30)
