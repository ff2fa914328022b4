"""COD training on a tiny model: the loss falls (c), checkpoints resume, the saved draft loads and exports."""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest
import torch

import pard_export
import tiny_models
from pard_export.errors import PardExportError
from pard_export.export.pard_draft import draft_to_target, load_draft
from pard_export.train.config import load_config
from pard_export.train.trainer import train


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """Answers that follow a simple rule (counting up through a cycle), so a few steps can learn it."""
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    rng = torch.Generator().manual_seed(0)
    with path.open("w") as f:
        for _ in range(24):
            start = int(torch.randint(0, 40, (1,), generator=rng))
            answer = [10 + (start + i) % 40 for i in range(30)]
            f.write(json.dumps({"prompt_ids": [1, 5, 6], "response_ids": answer + [tiny_models.EOS]}) + "\n")
    return path


def _config(tiny_pair, data_file, out, **overrides):
    target, _ = tiny_pair("llama")
    settings = dict(
        data=str(data_file),
        init=str(target),
        out=str(out),
        layers=[0, -1],
        draft_vocab=64,
        lr=3e-3,
        warmup_steps=2,
        batch_size=4,
        max_steps=24,
        checkpoint_every=8,
        mask_token_id=tiny_models.MASK,
    )
    return load_config(None, settings | overrides)


def _losses(out):
    checkpoints = sorted(out.with_name(out.name + ".checkpoints").glob("checkpoint-*"))
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["losses"]


def test_a_few_steps_lower_the_loss_and_save_a_pard_draft(tiny_pair, data_file, tmp_path):
    out = train(_config(tiny_pair, data_file, tmp_path / "draft", validation_fraction=0.2), progress=False)
    losses = _losses(out)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    report = json.loads((out / "training.json").read_text())
    held = [loss for _, loss in report["validation_losses"]]
    assert report["validation_sequences"] == 5 and len(held) >= 4 and held[-1] < held[0]
    assert report["kept_step"] == min(report["validation_losses"], key=lambda x: x[1])[0]
    config = json.loads((out / "config.json").read_text())
    assert config["pard_token"] == tiny_models.MASK and config["spd_type"] == "pard"
    assert config["draft_vocab_size"] == 64 and config["num_hidden_layers"] == 2
    draft = load_draft(out)
    ids = draft_to_target(draft)
    assert len(ids) == 64 and set(range(10, 50)) <= set(ids.tolist()) and tiny_models.EOS in ids.tolist()
    assert (out / "tokenizer.json").is_file() and (out / "training.json").is_file()
    assert "out" not in report["config"] and report["config"]["data"] == str(data_file)  # outside: as given
    redo = report["reproduce"]
    assert redo["data_sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest() and redo["data_lines"] == 24
    assert redo["init"] == report["config"]["init"] and redo["pard_export_version"] == pard_export.__version__
    assert shlex.split(redo["command"])[:2] == ["pard-export", "train"]


def test_the_report_records_paths_under_the_current_directory_relative(tiny_pair, data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    local = tmp_path / "data" / "d.jsonl"
    local.write_bytes(data_file.read_bytes())
    out = train(_config(tiny_pair, local, tmp_path / "draft", max_steps=2, checkpoint_every=1), progress=False)
    report = json.loads((out / "training.json").read_text())
    assert report["config"]["data"] == "data/d.jsonl"
    words = shlex.split(report["reproduce"]["command"])
    assert words[words.index("--data") + 1] == "data/d.jsonl" and words[words.index("--out") + 1] == "draft"
    checkpoints = tmp_path / "draft.checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-000001", "checkpoint-000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "draft", "draft.checkpoints"]  # no staging left


def test_resume_continues_where_the_checkpoint_stopped(tiny_pair, data_file, tmp_path):
    straight = train(_config(tiny_pair, data_file, tmp_path / "a", max_steps=16), progress=False)
    train(_config(tiny_pair, data_file, tmp_path / "b", max_steps=8), progress=False)
    resumed = train(_config(tiny_pair, data_file, tmp_path / "b", max_steps=16), resume="latest", progress=False)
    a, b = load_draft(straight), load_draft(resumed)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-2), name  # saved in float16; the same steps on the same data


def test_layout_workers_build_the_same_batches(tiny_pair, data_file, tmp_path):
    inline = train(_config(tiny_pair, data_file, tmp_path / "a", max_steps=4), progress=False)
    workers = train(_config(tiny_pair, data_file, tmp_path / "b", max_steps=4, loader_workers=2), progress=False)
    for (name, x), (_, y) in zip(load_draft(inline).state_dict().items(), load_draft(workers).state_dict().items()):
        assert torch.equal(x, y), name


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(PardExportError, match="unknown training setting"):
        load_config(None, {"data": "x", "init": "y", "out": "z", "learning_rate": 1})
    with pytest.raises(PardExportError, match="needs --data"):
        load_config(None, {"init": "y", "out": "z"})
    (tmp_path / "c.toml").write_text("lr = 1e-3\nlayers = [0, 1]\n")
    assert load_config(str(tmp_path / "c.toml"), {"data": "x", "init": "y", "out": "z", "lr": 5e-4}).lr == 5e-4
