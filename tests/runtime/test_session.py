"""Session behaviour: stopping, statistics, input checks, and staying usable after bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tiny_models
from pard_export.errors import GenerationError
from pard_export.runtime import Session

PROMPT = [276, 297, 298, 294]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair("llama")


@pytest.fixture(scope="module")
def session(pair, engine):
    with Session(engine(*pair, 4)) as s:
        yield s


@pytest.fixture(scope="module")
def expected(pair):
    return tiny_models.reference_greedy(pair[0], PROMPT, 40)


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_exactly_max_new_tokens(session, expected, n):
    result = session.generate(PROMPT, max_new_tokens=n)
    assert result.token_ids == expected[:n]
    assert result.finish_reason == "length"


def test_stats_are_consistent(session):
    pard = session.generate(PROMPT, max_new_tokens=30, mode="pard-fixed").stats
    assert pard.new_tokens == 30
    # one draft forward per step, except a last step with room for one token only (nothing to draft for)
    assert pard.target_forwards - 1 <= pard.draft_forwards <= pard.target_forwards
    assert pard.mean_accepted_tokens == pytest.approx(30 / pard.target_forwards)
    assert pard.acceptance_rate == pytest.approx(pard.accepted_drafts / pard.drafted_tokens)
    assert len(pard.per_position_acceptance) == 4
    assert pard.ttft_ms > 0 and pard.tokens_per_second > 0
    assert pard.drafts_per_step[-1] >= pard.target_forwards - 4 and sum(pard.drafts_per_step) == pard.target_forwards
    ar = session.generate(PROMPT, max_new_tokens=30, mode="ar").stats
    assert (ar.target_forwards, ar.draft_forwards, ar.mean_accepted_tokens) == (30, 0, 1.0)
    assert ar.drafts_per_step == [30, 0, 0, 0, 0] and ar.modelled_tokens_per_second == 0.0
    with Session(session.engine_dir, calibration=tiny_models.cpu_like_calibration(4)) as drafting:
        adaptive = drafting.generate(PROMPT, max_new_tokens=30, mode="pard").stats
    assert sum(adaptive.drafts_per_step) == adaptive.target_forwards and adaptive.drafts_per_step[0] < 30
    assert adaptive.draft_forwards == sum(adaptive.drafts_per_step[1:]) and adaptive.modelled_tokens_per_second > 0


def test_stops_at_eos_and_keeps_it(pair, engine, expected, tmp_path):
    root = Path(shutil.copytree(engine(*pair, 4), tmp_path / "e"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["eos_token_ids"] = [expected[6]]  # pretend the 7th greedy token ends the sequence
    (root / "manifest.json").write_text(json.dumps(manifest))
    first = expected.index(expected[6])
    with Session(root) as s:
        for mode in ("pard", "ar"):
            result = s.generate(PROMPT, max_new_tokens=40, mode=mode)
            assert result.token_ids == expected[: first + 1]
            assert result.finish_reason == "stop"


def test_max_seq_len_ends_with_length(pair, engine, expected):
    with Session(engine(*pair, 4, max_seq_len=12)) as s:
        result = s.generate(PROMPT, max_new_tokens=100)
    assert result.token_ids == expected[: 12 - len(PROMPT)]
    assert result.finish_reason == "length"


@pytest.mark.parametrize(
    "prompt,kwargs,match",
    [
        ("", {}, "empty"),
        ([], {}, "empty"),
        (PROMPT, {"max_new_tokens": 0}, "max_new_tokens"),
        (PROMPT, {"mode": "beam"}, "unknown mode"),
        ([5, 100000], {}, "token ids"),
        ([5] * 512, {}, "max_seq_len"),
    ],
)
def test_bad_input_then_still_usable(session, expected, prompt, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        session.generate(prompt, **kwargs)
    assert session.generate(PROMPT, max_new_tokens=5).token_ids == expected[:5]


def test_text_prompt_and_decoded_text(session, pair):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    result = session.generate("The quick brown fox", max_new_tokens=10)
    assert result.token_ids == tiny_models.reference_greedy(pair[0], tokenizer("The quick brown fox").input_ids, 10)
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)
