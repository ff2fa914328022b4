"""`pard-export distill` and `pard-export train` through the CLI: a tiny end-to-end run and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

import tiny_models
from pard_export.cli import _parser, main
from pard_export.train import trainer
from pard_export.train.config import TrainConfig, command_line


def _one_line_error(capsys, argv, match):
    capsys.readouterr()
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert "Traceback" not in err[0]


def test_distill_then_train_then_build(capsys, tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in tiny_models.PROMPTS))
    data = tmp_path / "data.jsonl"
    argv = [
        "distill",
        "--engine",
        str(engine(target, draft, 4)),
        "--prompts",
        str(prompts),
        "--out",
        str(data),
        "--max-new-tokens",
        "12",
        "--batch",
        "2",
        "--quiet",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 3 and all(0 < len(r["response_ids"]) <= 12 for r in rows)
    assert main(argv) == 0 and len(data.read_text().splitlines()) == 3  # resumes: nothing left to do
    out = tmp_path / "draft"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--init",
                str(target),
                "--out",
                str(out),
                "--layers",
                "0",
                "--draft-vocab",
                "32",
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--mask-token-id",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["draft_vocab_size"] == 32
    assert (
        main(
            ["build", "--target", str(target), "--draft", str(out), "--k", "3", "--out", str(tmp_path / "e"), "--quiet"]
        )
        == 0
    )


def test_train_bad_input(capsys, tmp_path, tiny_pair):
    target, _ = tiny_pair("llama")
    _one_line_error(capsys, ["train", "--init", str(target), "--out", str(tmp_path / "o")], "needs --data")
    _one_line_error(
        capsys,
        ["train", "--data", str(tmp_path / "none.jsonl"), "--init", str(target), "--out", str(tmp_path / "o")],
        "cannot read training data",
    )
    (tmp_path / "bad.toml").write_text("nonsense = 3\n")
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "bad.toml")], "unknown training setting")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt_ids": [1], "response_ids": [5, 6, 7]}) + "\n")
    _one_line_error(
        capsys,
        [
            "train",
            "--data",
            str(data),
            "--init",
            str(target),
            "--out",
            str(tmp_path / "o"),
            "--layers",
            "0,9",
            "--mask-token-id",
            "3",
        ],
        "outside the model",
    )
    assert not (tmp_path / "o").exists()


def test_distill_bad_prompts(capsys, tmp_path, tiny_pair, engine):
    target, draft = tiny_pair("llama")
    (tmp_path / "p.jsonl").write_text('{"text": "no prompt field"}\n')
    _one_line_error(
        capsys,
        [
            "distill",
            "--engine",
            str(engine(target, draft, 4)),
            "--prompts",
            str(tmp_path / "p.jsonl"),
            "--out",
            str(tmp_path / "d.jsonl"),
        ],
        '"prompt"',
    )


@pytest.fixture
def trained_with(monkeypatch):
    """Runs `pard-export train` up to the training itself: returns the TrainConfig the CLI made."""
    seen = []
    monkeypatch.setattr(trainer, "train", lambda config, **_: seen.append(config) or "trained")

    def run(argv: list[str]) -> TrainConfig:
        assert main(["train", *argv, "--quiet"]) == 0
        return seen[-1]

    return run


def test_every_train_setting_is_a_flag_left_none_when_not_given():
    args = _parser().parse_args(["train"])
    settings = dataclasses.fields(TrainConfig)
    assert {s.name: getattr(args, s.name, "no flag") for s in settings} == {s.name: None for s in settings}
    assert all(s.metadata.get("help") for s in settings)


def test_flags_override_the_toml_and_the_rest_comes_from_it(tmp_path, trained_with):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'data = "d.jsonl"\ninit = "m"\nout = "o"\nlr = 1e-3\nbatch_size = 4\nlayers = [0, 1]\n'
        'keep_best = true\nschedule = "cosine"\n'
    )
    config = trained_with(
        [
            "--config",
            str(toml),
            "--lr",
            "5e-4",
            "--layers",
            "0,-1",
            "--no-keep-best",
            "--schedule",
            "constant",
            "--mask-token-id",
            "3",
            "--max-minutes",
            "1.5",
        ]
    )
    assert (config.lr, config.layers, config.keep_best, config.schedule) == (5e-4, [0, -1], False, "constant")
    assert (config.mask_token_id, config.max_minutes) == (3, 1.5)
    assert (config.data, config.batch_size, config.epochs) == ("d.jsonl", 4, TrainConfig().epochs)


def test_the_recorded_command_line_gives_the_same_settings(trained_with):
    config = TrainConfig(
        data="d.jsonl",
        init="smollm2-135m",
        out="drafts/x",
        layers=[-1, 0],
        lr=1e-3,
        keep_best=False,
        mask_token_id=16,
        schedule="constant",
        validation_fraction=0.03,
    )
    words = shlex.split(command_line(config))
    assert words[:2] == ["pard-export", "train"] and "--epochs" not in words  # defaults are left out
    assert trained_with(words[2:]) == config
