"""A real Triton Inference Server on this machine, for tests, benchmarks and trying a repository on CPU.

The server is the one bundled in nvidia-pytriton (Triton 2.51 with the python backend). That package needs
numpy < 2, so it lives in its own environment (`--env`, made by `make install`: .venv-tritonserver), which also
holds pard-export's runtime for the model; pass that environment's site-packages as the repository's python_path.

    python -m pard_export.triton_repo.server --repo REPO [--env .venv-tritonserver] [--grpc-port 8001]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import RepositoryError
from .config import MODEL_NAME

DEFAULT_ENV = Path(__file__).resolve().parents[2] / ".venv-tritonserver"
_PYTRITON = "pytriton/tritonserver"


def site_packages(env: str | Path) -> Path:
    """The site-packages folder of a virtual environment that holds nvidia-pytriton."""
    found = sorted(Path(env).glob(f"lib/python3.*/site-packages/{_PYTRITON}"))
    if not found:
        raise RepositoryError(
            f"no nvidia-pytriton in {env}; create it with `make install` "
            "(python3 -m venv ENV && ENV/bin/pip install nvidia-pytriton 'numpy<2' -e .)"
        )
    return found[-1].parents[1]


class LocalTritonServer:
    """`with LocalTritonServer(repo) as server:` starts tritonserver on free loopback ports, loads `pard`, waits
    until it is ready, and stops it (and its python backend processes) on exit."""

    def __init__(
        self,
        repo: str | Path,
        env: str | Path = DEFAULT_ENV,
        *,
        models: tuple[str, ...] = (MODEL_NAME,),
        ready_timeout_s: float = 120.0,
        grpc_port: int = 0,
        http_port: int = 0,
    ):
        """Ports 0: free ones, chosen at start."""
        self.repo, self.models, self.ready_timeout_s = Path(repo).resolve(), models, ready_timeout_s
        self.wanted_ports = {"http": http_port, "grpc": grpc_port}
        self.site = site_packages(env)
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    def __enter__(self) -> LocalTritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pard-tritonserver-"))
        self.log_path = self.workdir / "server.log"
        free = iter(_free_ports(2))
        self.ports = {name: port or next(free) for name, port in self.wanted_ports.items()}
        command = [
            str(self.site / _PYTRITON / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={self._backends()}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        env = server_environment(self.site, os.environ)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_ready()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # tritonserver stops its python backend stubs on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _backends(self) -> Path:
        """The python backend beside the stub for this Python (the server looks for the stub there)."""
        backends = self.workdir / "backends"
        shutil.copytree(self.site / _PYTRITON / "backends", backends)
        version = self.site.parent.name.removeprefix("python")  # the environment's Python, which runs model.py
        stub = self.site / _PYTRITON / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        urls = [f"http://{self.http_url}/v2/health/ready"]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RepositoryError(
                    f"tritonserver exited with code {self.process.returncode}: {_last_error(self.log())}"
                )
            if all(_ok(url) for url in urls):
                return
            time.sleep(0.25)
        self.stop()
        raise RepositoryError(f"tritonserver was not ready after {self.ready_timeout_s:.0f} s")


def server_environment(site: Path, environ: dict[str, str]) -> dict[str, str]:
    """The server's environment variables: the python backend's stubs find their Python through PATH, so the server
    environment's bin goes first and an activated virtual environment's bin goes (an activated .venv gave the stubs
    its numpy 2, and every response came back with empty tensors)."""
    env = {name: value for name, value in environ.items() if name != "VIRTUAL_ENV"}
    activated = Path(environ["VIRTUAL_ENV"], "bin") if "VIRTUAL_ENV" in environ else None
    path = [p for p in environ.get("PATH", "").split(os.pathsep) if p and Path(p) != activated]
    env["PATH"] = os.pathsep.join([str(site.parents[2] / "bin"), *path])
    env["LD_LIBRARY_PATH"] = str(site / "nvidia_pytriton.libs")
    return env


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _last_error(log: str) -> str:
    errors = [line for line in log.splitlines() if line.startswith("E") or "error" in line.lower()]
    return (errors or log.splitlines() or ["no output"])[-1].strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve a model repository with the Triton server from nvidia-pytriton."
    )
    parser.add_argument("--repo", required=True)
    parser.add_argument("--env", default=str(DEFAULT_ENV), help="the environment holding nvidia-pytriton")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0: a free one")
    parser.add_argument("--http-port", type=int, default=8000, help="0: a free one")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too (the with block exits)
    with LocalTritonServer(args.repo, args.env, grpc_port=args.grpc_port, http_port=args.http_port) as server:
        print(f"serving {args.repo}: gRPC {server.grpc_url}, HTTP {server.http_url} (Ctrl-C stops)", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
