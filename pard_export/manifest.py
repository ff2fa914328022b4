"""The engine directory's manifest (design §5): written by the build, verified by the runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .contract import (
    ATTENTION_KERNELS,
    ATTENTIONS,
    NATIVE_KERNEL,
    NATIVE_KERNEL_LIBRARY,
    ONNX_KERNEL,
    PLAIN,
    ROLES,
    GraphSpec,
    graph_spec_from_dict,
)
from .errors import EngineError

FORMAT = "pard-export/1"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SMALL_FILE_BYTES = 16 << 20  # graphs, tokenizer: hashed at every load (milliseconds); weights only when verifying
CALIBRATION_FILE = "calibration.json"  # measured on each host that runs the engine (runtime/calibration.py): not hashed
_REBUILD = "rebuild it with pard-export build"


@dataclass(frozen=True)
class ModelEntry:
    source: str
    revision: str | None
    file: str
    architecture: str
    layers: int
    kv_heads: int
    head_dim: int
    vocab_rows: int
    io: GraphSpec

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "io"}, "io": self.io.to_dict()}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    k: int
    mask_token_id: int
    vocab_size: int  # ids shared by draft and target (the tokenizer's ids): drafts are drawn from these
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    max_seq_len: int
    dtype: str
    backend: str
    models: dict[str, ModelEntry]
    files: dict[str, FileEntry] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    attention: str = PLAIN  # the graphs' attention flavour (contract.py); absent in engines built before plugins
    # role -> its weight-only quantization (export/quantize.py QuantScheme.to_dict(): name, bits, block_size,
    # accuracy_level, symmetric, head_quantized); a role left out is float; absent in engines built before it
    quantization: dict[str, dict] = field(default_factory=dict)
    # build --k auto: {"prompts", "acceptance", "k_sweep": {k: modelled tokens/s}, "k"}; empty for a given k
    k_selection: dict = field(default_factory=dict)
    attention_kernel: str = ONNX_KERNEL  # inplace graphs: onnx ops or the native op (contract.py); absent before it

    def to_dict(self) -> dict:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        data["models"] = {role: entry.to_dict() for role, entry in self.models.items()}
        return data


def graph_file(role: str) -> str:
    return f"{role}.onnx"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(root: Path) -> dict[str, FileEntry]:
    """Every file under root except the manifest and the calibration, keyed by its relative POSIX path."""
    entries = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST_FILE, CALIBRATION_FILE)):
        entries[path.relative_to(root).as_posix()] = FileEntry(sha256_of(path), path.stat().st_size)
    return entries


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_manifest(root: Path) -> Manifest:
    """Parse and check the manifest: format, required keys, files present, inside root, of the right size, and the
    small files (graphs, tokenizer: SMALL_FILE_BYTES at most) matching their hashes. verify_hashes checks the rest."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise EngineError(f"engine directory {root} does not exist; build one with pard-export build")
    if not path.is_file():
        raise EngineError(f"{root} has no {MANIFEST_FILE}, so it is not an engine directory; {_REBUILD}")
    try:
        data = json.loads(path.read_text())
        manifest = _from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"corrupted {path}: not valid JSON ({e}); {_REBUILD}") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EngineError(f"corrupted {path}: missing or malformed field {e}; {_REBUILD}") from e
    if manifest.format != FORMAT:
        raise EngineError(f"{path} has format {manifest.format!r}, this runtime reads {FORMAT!r}; {_REBUILD}")
    _check_files(root, manifest)
    verify_hashes(root, manifest, largest=SMALL_FILE_BYTES)
    return manifest


def verify_hashes(root: Path, manifest: Manifest, *, largest: int | None = None) -> None:
    """EngineError unless every file (of at most `largest` bytes; None: all) matches its sha256 in the manifest."""
    for name, entry in manifest.files.items():
        if largest is not None and entry.bytes > largest:
            continue
        if sha256_of(Path(root) / name) != entry.sha256:
            raise EngineError(
                f"{Path(root) / name} does not match its sha256 in the manifest (modified or corrupted); {_REBUILD}"
            )


def _check_files(root: Path, manifest: Manifest) -> None:
    resolved_root = root.resolve()
    for name, entry in manifest.files.items():
        path = (root / name).resolve()
        if not path.is_relative_to(resolved_root):
            raise EngineError(f"manifest names {name!r}, which lies outside {root}; refusing to read it; {_REBUILD}")
        if not path.is_file():
            raise EngineError(f"{root} is missing {name} listed in its manifest; {_REBUILD}")
        if path.stat().st_size != entry.bytes:
            raise EngineError(
                f"{root / name} has {path.stat().st_size} bytes, the manifest says {entry.bytes}; {_REBUILD}"
            )
    for role, model in manifest.models.items():
        if model.file not in manifest.files:
            raise EngineError(f"manifest's {role} graph {model.file!r} is not among its files; {_REBUILD}")
    if manifest.attention_kernel == NATIVE_KERNEL and NATIVE_KERNEL_LIBRARY not in manifest.files:
        raise EngineError(
            f"manifest's native attention kernel {NATIVE_KERNEL_LIBRARY} is not among its files; {_REBUILD}"
        )


def _attention(value) -> str:
    if value not in ATTENTIONS:
        raise ValueError(f"attention {value!r} (expected {', '.join(ATTENTIONS)})")
    return value


def _attention_kernel(value) -> str:
    if value not in ATTENTION_KERNELS:
        raise ValueError(f"attention_kernel {value!r} (expected {', '.join(ATTENTION_KERNELS)})")
    return value


def _quantization(value, models: dict) -> dict[str, dict]:
    if not isinstance(value, dict):
        raise TypeError("quantization is not an object")
    for role, scheme in value.items():
        if role not in models:
            raise ValueError(f"quantization.{role} (expected one of the models: {', '.join(models)})")
        if not (
            isinstance(scheme, dict) and isinstance(scheme.get("name"), str) and isinstance(scheme.get("bits"), int)
        ):
            raise ValueError(f"quantization.{role} (expected an object with a name and bits)")
    return {role: dict(scheme) for role, scheme in value.items()}


def _from_dict(data: dict) -> Manifest:
    if not isinstance(data, dict):
        raise TypeError("top level is not an object")
    models = {}
    for role, m in data["models"].items():
        if role not in ROLES:
            raise ValueError(f"models.{role} (expected {', '.join(ROLES)})")
        models[role] = ModelEntry(**{**m, "io": graph_spec_from_dict(role, m["io"])})
    return Manifest(
        format=data["format"],
        k=int(data["k"]),
        mask_token_id=int(data["mask_token_id"]),
        vocab_size=int(data["vocab_size"]),
        bos_token_id=data["bos_token_id"],
        eos_token_ids=tuple(int(i) for i in data["eos_token_ids"]),
        max_seq_len=int(data["max_seq_len"]),
        dtype=data["dtype"],
        backend=data["backend"],
        attention=_attention(data.get("attention", PLAIN)),
        models=models,
        files={name: FileEntry(**entry) for name, entry in data["files"].items()},
        tools=dict(data.get("tools", {})),
        quantization=_quantization(data.get("quantization", {}), models),
        k_selection=dict(data.get("k_selection", {})),
        attention_kernel=_attention_kernel(data.get("attention_kernel", ONNX_KERNEL)),
    )
