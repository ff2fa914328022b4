"""`pard-export bench`: the report of design §2, a plot, and bad input."""

from __future__ import annotations

import json

import pytest

from pard_export.cli import main

MODE_KEYS = {
    "tokens_per_second",
    "mean_accepted_tokens",
    "target_forwards",
    "draft_forwards",
    "new_tokens",
    "ttft_ms",
    "per_position_acceptance",
    "draft_step_ms",
    "verify_step_ms",
    "outside_onnxruntime_pct",
    "drafts_per_step",
    "modelled_tokens_per_second",
}


@pytest.fixture(scope="module")
def bench_engine(tiny_pair, engine):
    return engine(*tiny_pair("llama"), 4, with_ar_draft=True)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "The quick brown fox", "category": "prose"}\n\n{"prompt_ids": [5, 6, 7]}\n')
    return path


def test_report_and_plot(bench_engine, prompts, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = [
        "bench",
        "--engine",
        str(bench_engine),
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "24",
        "--json",
        str(out),
        "--plot",
        str(png),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"modes", "speedup", "k", "prompts", "machine"}
    assert list(report["modes"]) == ["ar", "pard", "pard-fixed", "ar-draft"]
    assert (report["k"], report["prompts"]) == (4, 2)
    for mode, numbers in report["modes"].items():
        assert MODE_KEYS <= set(numbers), mode
        assert numbers["new_tokens"] > 0 and numbers["tokens_per_second"] > 0
    assert report["modes"]["ar"]["mean_accepted_tokens"] == 1.0 and report["modes"]["ar"]["draft_forwards"] == 0
    assert len(report["modes"]["pard-fixed"]["per_position_acceptance"]) == 4
    assert set(report["speedup"]) == {"pard_vs_ar", "pard_fixed_vs_ar", "pard_vs_ar_draft"}
    assert report["modes"]["pard"]["modelled_tokens_per_second"] > 0  # adaptive: its cost model's expectation
    assert sum(report["modes"]["pard-fixed"]["drafts_per_step"][:-1]) <= 4 * report["prompts"]  # k but at the end
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup pard_vs_ar" in capsys.readouterr().out


def test_the_projects_own_prompt_set():
    from pard_export.bench import DEFAULT_PROMPTS, load_prompts

    items = load_prompts(DEFAULT_PROMPTS)
    assert {item["category"] for item in items} == {"chat", "code", "math", "prose"}


@pytest.mark.parametrize(
    "extra,match",
    [(["--modes", "ar,beam"], "unavailable"), (["--max-new-tokens", "0"], "must be positive")],
)
def test_bad_input(bench_engine, prompts, capsys, extra, match):
    capsys.readouterr()
    assert main(["bench", "--engine", str(bench_engine), "--prompts", str(prompts), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_bad_prompt_file(bench_engine, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    capsys.readouterr()
    assert main(["bench", "--engine", str(bench_engine), "--prompts", str(bad)]) == 2
    assert "neither" in capsys.readouterr().err
    assert main(["bench", "--engine", str(bench_engine), "--prompts", str(tmp_path / "none.jsonl")]) == 2
