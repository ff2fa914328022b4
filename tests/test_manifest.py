from __future__ import annotations

import json

import pytest

from pard_export import manifest as manifest_module
from pard_export.contract import target_spec
from pard_export.errors import EngineError
from pard_export.manifest import Manifest, ModelEntry, hash_files, read_manifest, verify_hashes, write_manifest


def _engine(tmp_path):
    (tmp_path / "target.onnx").write_bytes(b"graph")
    entry = ModelEntry("src", None, "target.onnx", "llama", 1, 1, 4, 10, target_spec(1, 1, 4, 10))
    manifest = Manifest(
        k=4,
        mask_token_id=3,
        vocab_size=10,
        bos_token_id=None,
        eos_token_ids=(2,),
        max_seq_len=64,
        dtype="float32",
        backend="onnxruntime",
        models={"target": entry},
        files=hash_files(tmp_path),
    )
    write_manifest(tmp_path, manifest)
    return manifest


def test_round_trip(tmp_path):
    written = _engine(tmp_path)
    read = read_manifest(tmp_path)
    assert read == written
    verify_hashes(tmp_path, read)


def test_a_small_file_is_hashed_at_every_load(tmp_path):
    _engine(tmp_path)
    (tmp_path / "target.onnx").write_bytes(b"grapH")  # same size
    with pytest.raises(EngineError, match="target.onnx does not match its sha256"):
        read_manifest(tmp_path)


def test_a_large_file_is_hashed_only_when_verifying(tmp_path, monkeypatch):
    _engine(tmp_path)
    monkeypatch.setattr(manifest_module, "SMALL_FILE_BYTES", 4)  # target.onnx (5 bytes) counts as large
    (tmp_path / "target.onnx").write_bytes(b"grapH")
    manifest = read_manifest(tmp_path)
    with pytest.raises(EngineError, match="target.onnx does not match its sha256"):
        verify_hashes(tmp_path, manifest)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(format="other/9"), "format"),
        (lambda d: d.pop("k"), "malformed field"),
        (lambda d: d["files"].update({"../outside": {"sha256": "0", "bytes": 1}}), "outside"),
        (lambda d: d["files"].update({"gone.bin": {"sha256": "0", "bytes": 1}}), "missing gone.bin"),
        (lambda d: d["files"]["target.onnx"].update(bytes=99), "bytes"),
    ],
)
def test_bad_manifests(tmp_path, edit, message):
    _engine(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match=message):
        read_manifest(tmp_path)


def test_not_json(tmp_path):
    _engine(tmp_path)
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(EngineError, match="corrupted"):
        read_manifest(tmp_path)
