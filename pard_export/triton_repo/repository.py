"""`pard-export triton`: a Triton Inference Server model repository whose `pard` model serves an engine."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

from ..errors import RepositoryError
from ..files import staging_dir
from ..manifest import Manifest, read_manifest, verify_hashes
from .config import (
    ENGINE_DIR,
    KINDS,
    MAX_TOKENS_LIMIT,
    MODEL_NAME,
    ServingSettings,
    build_config,
    check_config,
    parse_config,
    render,
)

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "runtime" / "triton"
MODEL_FILE = "model.py"
PYTHON_PATH_FILE = "python_path.txt"  # beside model.py: site-packages folders, one per line (read before imports)
VERSION = "1"
COPIED_ENGINE = "engine"  # the engine's folder inside the version folder, with copy_engine


def write_repository(
    engine: str | Path,
    out: str | Path,
    *,
    backend: str | None = None,
    copy_engine: bool = False,
    max_tokens_limit: int | None = None,
    max_batch_size: int = 8,
    instances: int = 1,
    kind: str = "cpu",
    threads: int = 0,
    python_path: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Write REPO/pard/{config.pbtxt, 1/model.py[, 1/engine/]} and return the model's folder.

    python_path: site-packages folders the model puts on sys.path (default: this interpreter's), so the Triton
    python backend finds pard_export and its runtime dependencies."""
    engine, out = Path(engine).resolve(), Path(out)
    manifest = read_manifest(engine)
    _check_arguments(manifest, engine, out, backend, kind, instances, max_batch_size, threads, force)
    limit = _token_limit(manifest, max_tokens_limit)
    paths = tuple(python_path) if python_path is not None else (sysconfig.get_paths()["purelib"],)
    settings = ServingSettings(
        COPIED_ENGINE if copy_engine else str(engine), limit, max_batch_size, instances, kind, threads
    )
    template = _template()
    with staging_dir(out) as staging:
        version_dir = staging / MODEL_NAME / VERSION
        version_dir.mkdir(parents=True)
        shutil.copyfile(TEMPLATE_DIR / MODEL_NAME / VERSION / MODEL_FILE, version_dir / MODEL_FILE)
        (version_dir / PYTHON_PATH_FILE).write_text("".join(f"{p}\n" for p in paths))
        if copy_engine:
            shutil.copytree(engine, version_dir / COPIED_ENGINE)
            verify_hashes(version_dir / COPIED_ENGINE, manifest)
        header = f"# Written by pard-export triton from {TEMPLATE_DIR / MODEL_NAME / 'config.pbtxt'}\n"
        (staging / MODEL_NAME / "config.pbtxt").write_text(header + render(build_config(template, settings)))
        check_repository(staging)
    return out / MODEL_NAME


def check_repository(repo: str | Path) -> None:
    """Parse and check REPO/pard: its config, its model file, its engine and its python path."""
    model_dir = Path(repo) / MODEL_NAME
    config_file = model_dir / "config.pbtxt"
    if not config_file.is_file():
        raise RepositoryError(f"{config_file} is missing; write the repository with pard-export triton")
    config = parse_config(config_file.read_text(), str(config_file))
    check_config(config, str(config_file))
    if config.name and config.name != MODEL_NAME:
        raise RepositoryError(f'{config_file}: name is "{config.name}" but the folder is {MODEL_NAME}')
    version_dir = model_dir / VERSION
    for name in (MODEL_FILE, PYTHON_PATH_FILE):
        if not (version_dir / name).is_file():
            raise RepositoryError(f"{version_dir / name} is missing; write the repository with pard-export triton")
    engine = version_dir / config.parameters[ENGINE_DIR].string_value  # an absolute value replaces the prefix
    read_manifest(engine)  # names the problem if the engine is missing or broken
    folders = (version_dir / PYTHON_PATH_FILE).read_text().split()
    missing = [folder for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise RepositoryError(f"{version_dir / PYTHON_PATH_FILE}: folder {missing[0]} does not exist")
    if int(config.parameters[MAX_TOKENS_LIMIT].string_value) < 1:
        raise RepositoryError(f"{config_file}: {MAX_TOKENS_LIMIT} must be at least 1")


def _check_arguments(
    manifest: Manifest, engine: Path, out: Path, backend, kind, instances, max_batch_size, threads, force
) -> None:
    if backend is not None and backend != manifest.backend:
        raise RepositoryError(
            f"{engine} was built for {manifest.backend}, not {backend}; "
            f"build an engine with --backend {backend} or leave --backend out"
        )
    if kind not in KINDS:
        raise RepositoryError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
    for name, value, least in (
        ("--instances", instances, 1),
        ("--max-batch-size", max_batch_size, 1),
        ("--threads", threads, 0),
    ):
        if value < least:
            raise RepositoryError(f"{name} must be at least {least}, got {value}")
    if out.exists() and any(out.iterdir()) and not force:
        raise RepositoryError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
    if out.resolve() == engine or engine in out.resolve().parents:
        raise RepositoryError(f"--out {out} lies inside the engine; choose a folder outside {engine}")


def _token_limit(manifest: Manifest, requested: int | None) -> int:
    most = manifest.max_seq_len - 1  # a prompt needs at least one token
    if requested is None:
        return most
    if not 1 <= requested <= most:
        raise RepositoryError(
            f"--max-tokens-limit must lie in 1..{most} (the engine's max_seq_len - 1), got {requested}"
        )
    return requested


def _template() -> str:
    path = TEMPLATE_DIR / MODEL_NAME / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(
            f"the Triton templates are missing ({path}); run from a checkout of pard-export (pip install -e .)"
        )
    return path.read_text()
