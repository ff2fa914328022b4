"""`pard-export triton`: the repository's config is valid protobuf with the model's IO, everything it refers to
exists, and bad input writes nothing."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pard_export.cli import main
from pard_export.errors import PardExportError
from pard_export.triton_repo import RepositoryError, check_repository, write_repository
from pard_export.triton_repo.config import parse_config
from pard_export.triton_repo.protocol import INPUTS, OUTPUTS


def test_repository_layout_and_config(tiny_engine, tmp_path):
    model_dir = write_repository(tiny_engine, tmp_path / "repo", max_tokens_limit=50, instances=2, kind="gpu")
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1",
        "1/model.py",
        "1/python_path.txt",
        "config.pbtxt",
    ]
    config = parse_config((model_dir / "config.pbtxt").read_text(), "config")
    assert config.name == "pard" and config.backend == "python" and config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == [t.name for t in INPUTS]
    assert [o.name for o in config.output] == [t.name for t in OUTPUTS]
    assert [i.name for i in config.input if not i.optional] == ["max_tokens"]
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (2, 1)  # KIND_GPU
    assert config.parameters["engine_dir"].string_value == str(Path(tiny_engine).resolve())
    assert config.parameters["max_tokens_limit"].string_value == "50"
    site = (model_dir / "1" / "python_path.txt").read_text().split()
    assert site and all(Path(p).is_dir() for p in site)


def test_copied_engine_is_referred_to_relatively(tiny_engine, tmp_path):
    model_dir = write_repository(tiny_engine, tmp_path / "repo", copy_engine=True)
    assert (model_dir / "1" / "engine" / "manifest.json").is_file()
    assert parse_config((model_dir / "config.pbtxt").read_text(), "c").parameters["engine_dir"].string_value == "engine"
    shutil.move(tmp_path / "repo", tmp_path / "moved")  # the repository can move with its engine
    check_repository(tmp_path / "moved")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("max_batch_size: 8", "max_batch_size: eight"), "not a valid Triton model config"),
        (lambda t: t.replace("data_type: TYPE_INT32", "data_type: TYPE_INT33", 1), "not a valid Triton model config"),
        (lambda t: t.replace('backend: "python"', 'backend: "onnxruntime"'), 'backend is "onnxruntime"'),
        (lambda t: t.replace('name: "top_k"', 'name: "topk"'), "input top_k is missing; input topk is not one"),
        (lambda t: t.replace("decoupled: true", "decoupled: false"), "decoupled must be true"),
        (lambda t: t.replace('name: "pard"', 'name: "other"', 1), 'name is "other"'),
    ],
)
def test_a_broken_config_is_named(tiny_engine, tmp_path, edit, message):
    model_dir = write_repository(tiny_engine, tmp_path / "repo")
    config = model_dir / "config.pbtxt"
    config.write_text(edit(config.read_text()))
    with pytest.raises(RepositoryError, match=message):
        check_repository(tmp_path / "repo")


def test_missing_pieces_are_named(tiny_engine, tmp_path):
    model_dir = write_repository(tiny_engine, tmp_path / "repo")
    (model_dir / "1" / "python_path.txt").write_text("/no/such/site-packages\n")
    with pytest.raises(RepositoryError, match="folder /no/such/site-packages does not exist"):
        check_repository(tmp_path / "repo")
    (model_dir / "1" / "model.py").unlink()
    with pytest.raises(RepositoryError, match="model.py is missing"):
        check_repository(tmp_path / "repo")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--kind", "tpu"], "--kind 'tpu' is not one of cpu, gpu"),
        (["--instances", "0"], "--instances must be at least 1"),
        (["--max-tokens-limit", "500"], "--max-tokens-limit must lie in 1..127"),
        (["--backend", "tensorrt"], "was built for onnxruntime, not tensorrt"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tiny_engine, tmp_path, capsys, flags, message):
    out = tmp_path / "repo"
    assert main(["triton", "--engine", str(tiny_engine), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_a_missing_engine_and_an_existing_out(tiny_engine, tmp_path, capsys):
    assert main(["triton", "--engine", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "none does not exist; build one" in capsys.readouterr().err
    assert main(["triton", "--engine", str(tiny_engine), "--out", str(tmp_path / "r")]) == 0
    assert "config.pbtxt validated" in capsys.readouterr().out
    assert main(["triton", "--engine", str(tiny_engine), "--out", str(tmp_path / "r")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["triton", "--engine", str(tiny_engine), "--out", str(tmp_path / "r"), "--force"]) == 0


def test_a_failed_copy_leaves_nothing(tiny_engine, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(tiny_engine, engine)
    data = bytearray((engine / "target.onnx").read_bytes())
    data[-1] ^= 1  # same size, another hash: found only when the copy is verified
    (engine / "target.onnx").write_bytes(bytes(data))
    with pytest.raises(PardExportError, match="target.onnx"):
        write_repository(engine, tmp_path / "repo", copy_engine=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_default_python_path_is_this_interpreters(tiny_engine, tmp_path):
    import sysconfig

    model_dir = write_repository(tiny_engine, tmp_path / "repo")
    assert (model_dir / "1" / "python_path.txt").read_text().split() == [sysconfig.get_paths()["purelib"]]
    assert sys.prefix in sysconfig.get_paths()["purelib"]
