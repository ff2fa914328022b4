"""The CLI: success paths, and bad input -> exit code 2, one line, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_models
from pard_export.cli import main
from plugins.cached_attention import build as native_build


def _fails_cleanly(capsys, argv, match, out: Path | None = None):
    capsys.readouterr()  # drop what fixtures printed
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return lines[0]


@pytest.fixture
def pair(tiny_pair):
    return tiny_pair("llama")


@pytest.fixture
def engine_copy(pair, engine, tmp_path):
    """A private copy of a tiny engine that a test may damage."""
    target, draft = pair
    return Path(shutil.copytree(engine(target, draft, 4), tmp_path / "engine"))


def test_unknown_preset_lists_presets(capsys, tmp_path):
    line = _fails_cleanly(
        capsys, ["build", "--target", "nope", "--out", str(tmp_path / "o")], "smollm2-135m", tmp_path / "o"
    )
    assert "llama3.1-8b" in line


def test_missing_path(capsys, tmp_path, pair):
    out = tmp_path / "o"
    _fails_cleanly(
        capsys,
        ["build", "--target", str(tmp_path / "no" / "model"), "--draft", str(pair[1]), "--out", str(out)],
        "does not exist",
        out,
    )


def test_vocab_mismatch(capsys, tmp_path, pair):
    other = tiny_models.make_tokenizer(corpus=["a completely different corpus gives other merges"] * 4)
    draft = tiny_models.make_model(tmp_path / "d", "llama", tiny_models.DRAFT_SIZE, seed=3, tokenizer=other)
    out = tmp_path / "o"
    _fails_cleanly(
        capsys, ["build", "--target", str(pair[0]), "--draft", str(draft), "--out", str(out)], "tokenizers differ", out
    )


def test_missing_mask_id(capsys, tmp_path, pair):
    out = tmp_path / "o"
    # the target's own directory has no pard_token, and it is no preset
    _fails_cleanly(
        capsys, ["build", "--target", str(pair[0]), "--draft", str(pair[0]), "--out", str(out)], "--mask-token-id", out
    )


@pytest.mark.parametrize(
    "mask,match", [("5000", "outside"), ("-1", "outside"), (str(tiny_models.EOS), "end-of-sequence")]
)
def test_bad_mask_id(capsys, tmp_path, pair, mask, match):
    out = tmp_path / "o"
    argv = ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out), "--mask-token-id", mask]
    _fails_cleanly(capsys, argv, match, out)


@pytest.mark.parametrize("k", ["0", "33"])
def test_k_out_of_range(capsys, tmp_path, pair, k):
    out = tmp_path / "o"
    _fails_cleanly(
        capsys,
        ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--k", k, "--out", str(out)],
        "between 1 and 32",
        out,
    )


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--attention", "bogus"], "argument --attention: invalid choice: 'bogus'"),
        (["--attention", "plugin", "--dtype", "float16"], "float32 only"),
        (["--attention", "plain", "--backend", "tensorrt", "--dtype", "float16"], "plugin-attention graphs only"),
        (["--attention-kernel", "fast"], "argument --attention-kernel: invalid choice: 'fast'"),
        (["--attention-kernel", "native", "--attention", "plain"], "runs float32 inplace graphs on ONNX Runtime's CPU"),
        (["--attention-kernel", "native", "--dtype", "float16"], "use --attention inplace --dtype float32"),
    ],
)
def test_bad_attention(capsys, tmp_path, pair, flags, match):
    out = tmp_path / "o"
    _fails_cleanly(
        capsys, ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out), *flags], match, out
    )


def test_native_kernel_without_the_headers(capsys, tmp_path, pair, monkeypatch):
    monkeypatch.setattr(native_build, "find_headers", lambda: None)
    out = tmp_path / "o"
    argv = ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out)]
    _fails_cleanly(capsys, [*argv, "--attention-kernel", "native"], "C++ API headers (onnxruntime_cxx_api.h)", out)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--backend", "openvino"], "argument --backend: invalid choice: 'openvino'"),
        (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
        (["--max-batch", "4"], "--max-batch apply to --backend tensorrt only; drop them for a onnxruntime build"),
        (
            ["--opt-batch", "2", "--timing-cache", "t.cache"],
            "--opt-batch, --timing-cache apply to --backend tensorrt only",
        ),
    ],
)
def test_build_choices_and_flags_of_another_backend(capsys, tmp_path, pair, flags, match):
    out = tmp_path / "o"
    _fails_cleanly(
        capsys, ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out), *flags], match, out
    )


@pytest.mark.parametrize("opt_batch", ["0", "5"])
def test_opt_batch_outside_the_batches_the_plans_serve(capsys, tmp_path, pair, opt_batch):
    out = tmp_path / "o"
    argv = [
        "build",
        "--target",
        str(pair[0]),
        "--draft",
        str(pair[1]),
        "--out",
        str(out),
        "--backend",
        "tensorrt",
        "--dtype",
        "float16",
        "--max-batch",
        "4",
        "--opt-batch",
        opt_batch,
    ]
    _fails_cleanly(capsys, argv, f"--opt-batch {opt_batch} must lie between 1 and --max-batch 4", out)


def test_argparse_errors_are_one_line(capsys):
    _fails_cleanly(capsys, ["build", "--target", "x", "--k", "eight"], "expected a number of drafts or auto")
    _fails_cleanly(capsys, ["generate", "--engine", "e", "--prompt-ids", "1,x"], "comma-separated")


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--k", "auto", "--calibration", "missing.jsonl"], "prompt file missing.jsonl not found"),
        (["--k", "auto", "--calibration", "EMPTY"], "holds no prompts"),
        (["--k", "auto", "--backend", "tensorrt"], "--k auto measures the engine on this machine"),
        (["--k", "4", "--calibration", "p.jsonl"], "--calibration is read by --k auto only"),
    ],
)
def test_bad_k_auto(capsys, tmp_path, pair, flags, match):
    out = tmp_path / "o"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    flags = [str(empty) if flag == "EMPTY" else flag for flag in flags]
    _fails_cleanly(
        capsys, ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out), *flags], match, out
    )


def test_k_auto_keeps_the_best_modelled_k_and_its_sweep(capsys, tmp_path, pair):
    out = tmp_path / "auto"
    assert (
        main(
            ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out), "--k", "auto"]
            + ["--with-ar-draft", "--quiet"]
        )
        == 0
    )
    from pard_export.manifest import CALIBRATION_FILE, read_manifest, verify_hashes
    from pard_export.runtime import Session

    manifest = read_manifest(out)
    verify_hashes(out, manifest)
    sweep = {int(k): v for k, v in manifest.k_selection["k_sweep"].items()}
    assert sorted(sweep) == list(range(1, 17)) and manifest.k == manifest.k_selection["k"]
    assert sweep[manifest.k] == max(sweep.values())
    assert len(manifest.k_selection["acceptance"]) == 16
    assert (out / CALIBRATION_FILE).is_file()
    with Session(out) as session:
        assert session.calibration.k == manifest.k  # kept for the final engine: no measuring at first use
        ids = [5, 9, 14, 3]
        expected = session.generate(ids, max_new_tokens=12, mode="ar").token_ids
        assert session.generate(ids, max_new_tokens=12).token_ids == expected
        assert session.generate(ids, max_new_tokens=12, mode="ar-draft").token_ids == expected
    assert "draft_ar.onnx.data" not in manifest.files  # the AR draft reads the (re-exported) draft's weights


def test_calibrate_prints_and_keeps_the_measurement(capsys, engine_copy):
    assert main(["calibrate", "--engine", str(engine_copy)]) == 0
    out = capsys.readouterr().out
    assert "kept in" in out and str(engine_copy) in out and "context" in out
    assert (engine_copy / "calibration.json").is_file()


def test_refuses_non_empty_out_without_force(capsys, tmp_path, pair):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails_cleanly(capsys, ["build", "--target", str(pair[0]), "--draft", str(pair[1]), "--out", str(out)], "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_missing_engine_file(capsys, engine_copy):
    (engine_copy / "draft.onnx.data").unlink()
    _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi"], "missing draft.onnx.data")


def test_missing_engine_dir(capsys, tmp_path):
    _fails_cleanly(capsys, ["generate", "--engine", str(tmp_path / "none"), "--prompt", "hi"], "does not exist")


def test_corrupted_manifest(capsys, engine_copy):
    (engine_copy / "manifest.json").write_text('{"format": "pard-export/1", "k": ')
    _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi"], "corrupted")


def _flip_a_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # same size, different content
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file", ["tokenizer/tokenizer.json", "draft.onnx", "target.onnx"])
def test_a_tampered_small_file_fails_every_load(capsys, engine_copy, file):
    _flip_a_byte(engine_copy / file, len((engine_copy / file).read_bytes()) // 2)
    line = _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi"], "sha256")
    assert file in line


def test_a_tampered_weight_file_fails_with_verify(capsys, engine_copy, monkeypatch):
    from pard_export import manifest

    weights = engine_copy / "target.onnx.data"
    monkeypatch.setattr(manifest, "SMALL_FILE_BYTES", weights.stat().st_size - 1)  # the tiny weights count as large
    _flip_a_byte(weights, 100)
    _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi", "--verify"], "sha256")


def test_manifest_naming_a_file_outside(capsys, engine_copy, tmp_path):
    (tmp_path / "secret").write_text("x")
    manifest = json.loads((engine_copy / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (engine_copy / "manifest.json").write_text(json.dumps(manifest))
    _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi"], "outside")


def test_prompt_longer_than_max_seq_len(capsys, engine_copy):
    ids = ",".join(["5"] * 600)  # tiny models: max_seq_len 512
    _fails_cleanly(capsys, ["generate", "--engine", str(engine_copy), "--prompt-ids", ids], "max_seq_len")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_max_new_tokens_not_positive(capsys, engine_copy, n):
    _fails_cleanly(
        capsys, ["generate", "--engine", str(engine_copy), "--prompt", "hi", "--max-new-tokens", n], "max_new_tokens"
    )


def test_generate_json(capsys, engine_copy):
    assert (
        main(["generate", "--engine", str(engine_copy), "--prompt", "The quick", "--max-new-tokens", "12", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"token_ids", "text", "stats"}
    assert 1 <= len(result["token_ids"]) <= 12
    assert result["stats"]["new_tokens"] == len(result["token_ids"])


def test_entry_point_in_a_subprocess(tmp_path):
    """The installed console script: exit code 2 and one line, as the user sees it."""
    exe = Path(sys.executable).with_name("pard-export")
    done = subprocess.run(
        [str(exe), "build", "--target", "nope", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "presets" in done.stderr


def test_generate_streams_by_default(capsys, engine_copy):
    assert main(["generate", "--engine", str(engine_copy), "--prompt", "The quick", "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "[pard]" in captured.err


def test_generate_sampling_flags(capsys, engine_copy):
    argv = [
        "generate",
        "--engine",
        str(engine_copy),
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "8",
        "--json",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--seed",
        "4",
        "--draft-sampling",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == first["token_ids"]


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--top-k", "-2"], "top_k"),
        (["--mode", "beam"], "invalid choice: 'beam'"),
        (["--mode", "ar-draft"], "--with-ar-draft"),
        (["--prompt", ""], "empty"),
    ],
)
def test_generate_bad_settings(capsys, engine_copy, flags, match):
    argv = ["generate", "--engine", str(engine_copy), "--prompt", "hi", *flags]
    _fails_cleanly(capsys, argv, match)
