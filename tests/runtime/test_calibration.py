"""Calibration: measured once per engine and host, kept beside the engine (or in the user's cache), measured again
where a kept file belongs to another engine or cannot be read, never a crash."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from pard_export.manifest import CALIBRATION_FILE, read_manifest, verify_hashes
from pard_export.runtime import Session, calibration
from pard_export.runtime.calibration import Calibration, conditional_acceptance, modelled_speeds
from pard_export.runtime.drafting import StepCosts

K = 3


@pytest.fixture
def engine_copy(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("llama")
    copy = tmp_path / "engine"
    shutil.copytree(engine(target, draft, K), copy, ignore=shutil.ignore_patterns(CALIBRATION_FILE))
    return copy


def _no_measuring(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("measured again although a calibration was kept")

    monkeypatch.setattr(calibration, "measure_costs", refuse)
    monkeypatch.setattr("pard_export.runtime.session.measure_costs", refuse)


def test_first_use_measures_and_keeps_it_beside_the_engine(engine_copy, monkeypatch):
    with Session(engine_copy) as session:
        measured = session.calibration
        assert session.calibration_file == engine_copy / CALIBRATION_FILE
    costs = measured.costs
    assert measured.k == K == costs.k
    assert all(0.0 <= a <= 1.0 for a in measured.acceptance)
    assert all(s > 0 for row in costs.seconds for s in row) and costs.batch > 1
    assert len(costs.catch_up) == len(costs.contexts) and min(costs.catch_up) >= 0
    verify_hashes(engine_copy, read_manifest(engine_copy))  # the engine's files are untouched
    _no_measuring(monkeypatch)
    with Session(engine_copy) as session:
        assert session.calibration == measured


def test_other_settings_get_their_own_entry(engine_copy):
    with Session(engine_copy) as session:
        session.calibration
    with Session(engine_copy, threads=1) as session:
        session.calibration
    assert len(json.loads((engine_copy / CALIBRATION_FILE).read_text())["entries"]) == 2


def test_a_file_from_another_engine_is_measured_again(engine_copy, tiny_pair, engine, caplog):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 4)) as other:
        other.calibration
        (engine_copy / CALIBRATION_FILE).write_text((other.engine_dir / CALIBRATION_FILE).read_text())
    with caplog.at_level(logging.WARNING), Session(engine_copy) as session:
        assert session.calibration.k == K
    assert "measured for another engine; calibrating again" in caplog.text
    assert len([r for r in caplog.records if r.name.startswith("pard_export")]) == 1  # one line
    assert json.loads((engine_copy / CALIBRATION_FILE).read_text())["engine"] == calibration.engine_id(engine_copy)


def test_a_file_of_an_older_format_is_measured_again(engine_copy, caplog):
    with Session(engine_copy) as session:
        session.calibration
    kept = json.loads((engine_copy / CALIBRATION_FILE).read_text())
    (engine_copy / CALIBRATION_FILE).write_text(json.dumps(kept | {"format": calibration.FORMAT - 1}))
    with caplog.at_level(logging.WARNING), Session(engine_copy) as session:
        assert session.calibration.k == K
    assert f"holds calibration format {calibration.FORMAT - 1}, this version keeps format" in caplog.text
    assert json.loads((engine_copy / CALIBRATION_FILE).read_text())["format"] == calibration.FORMAT


@pytest.mark.parametrize("content", ["{not json", "[]", '{"entries": {"x": {"costs": 1}}, "engine": "?"}'])
def test_an_unreadable_file_is_measured_again(engine_copy, caplog, content):
    (engine_copy / CALIBRATION_FILE).write_text(content)
    with caplog.at_level(logging.WARNING), Session(engine_copy) as session:
        assert session.calibration.k == K
    assert "calibrating again" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_engine_keeps_it_in_the_user_cache(engine_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine_copy.chmod(0o555)
    try:
        with Session(engine_copy) as session:
            session.calibration
            assert session.calibration_file.is_relative_to(tmp_path / "cache")
    finally:
        engine_copy.chmod(0o755)


def test_a_read_only_engine_keeps_it_in_the_user_cache_when_the_engine_file_cannot_be_written(
    engine_copy, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (engine_copy / CALIBRATION_FILE).mkdir()  # a folder in the way: writing the file fails, as on a read-only mount
    with Session(engine_copy) as session:
        session.calibration
        assert session.calibration_file.parent == tmp_path / "cache" / "pard-export" / "calibration"


def test_calibrate_with_prompts_measures_again(engine_copy, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt_ids": [5, 6, 7, 8]}\n{"prompt": "The quick brown"}\n')
    with Session(engine_copy) as session:
        first = session.calibration
        again = session.calibrate(prompts=prompts)
    assert again.measured >= first.measured and again.seconds > 0


def test_conditional_acceptance_divides_by_the_steps_that_reached_a_position():
    # 10 steps drafted 3: 6 accepted the first, 3 of those the second, 3 of those the third
    assert conditional_acceptance([6, 3, 3], [10, 10, 10]) == (0.6, 0.5, 1.0)
    assert conditional_acceptance([0, 0], [4, 4]) == (0.0, 0.0)


def test_modelled_speeds_prefer_more_slots_when_drafts_agree_and_fewer_when_they_cost():
    costs = StepCosts((32,), ((1.0, 1.1, 1.2, 1.3, 1.4),), catch_up=(0.01,))
    agreeing = modelled_speeds(Calibration(costs, (0.9, 0.9, 0.9, 0.9)), 4, range(1, 5))
    assert max(agreeing, key=agreeing.get) == 4
    poor = modelled_speeds(Calibration(costs, (0.3, 0.0, 0.0, 0.0)), 4, range(1, 5))
    assert max(poor, key=poor.get) == 1 and poor[1] > 1.0  # a draft of 1 slot reads 3 tokens fewer than one of 4
    assert np.allclose(list(agreeing.values()), sorted(agreeing.values()))
