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


def test_a_second_generation_while_a_stream_is_open_is_refused(session, expected):
    """Two generators would share (and corrupt) the KV caches: the second is a GenerationError, before any work for
    stream_batch and at the first step for stream; the open stream goes on unharmed."""
    first = session.stream_batch([PROMPT], max_new_tokens=12, mode="pard")
    tokens = next(first).token_ids
    with pytest.raises(GenerationError, match="already generating"):
        session.stream_batch([PROMPT], max_new_tokens=4)
    with pytest.raises(GenerationError, match="already generating"):
        next(session.stream(PROMPT, max_new_tokens=4))
    with pytest.raises(GenerationError, match="already generating"):
        session.generate(PROMPT, max_new_tokens=4, mode="ar")
    with pytest.raises(GenerationError, match="already generating"):
        session.calibrate(force=True)
    for event in first:
        tokens += event.token_ids
    assert tokens == expected[:12]
    assert session.generate(PROMPT, max_new_tokens=6).token_ids == expected[:6]  # free again once it finished


def test_a_dropped_or_closed_stream_frees_the_session(session, expected):
    stream = session.stream_batch([PROMPT], max_new_tokens=12)
    next(stream)
    stream.close()
    assert session.generate(PROMPT, max_new_tokens=5, mode="ar").token_ids == expected[:5]
    stream = session.stream_batch([PROMPT], max_new_tokens=12)
    next(stream)
    del stream
    assert session.generate(PROMPT, max_new_tokens=5).token_ids == expected[:5]


def test_another_thread_cannot_generate_while_a_stream_is_open(session):
    import threading

    stream = session.stream_batch([PROMPT], max_new_tokens=8)
    next(stream)
    errors = []

    def generate():
        try:
            session.generate(PROMPT, max_new_tokens=4)
        except GenerationError as e:
            errors.append(str(e))

    worker = threading.Thread(target=generate)
    worker.start()
    worker.join()
    stream.close()
    assert len(errors) == 1 and "give each thread its own Session" in errors[0]


def test_close_frees_the_graphs_and_refuses_work(pair, engine, expected):
    s = Session(engine(*pair, 4))
    graphs = [cache.graph for cache in s._caches.values()]
    stream = s.stream_batch([PROMPT], max_new_tokens=8, mode="pard-fixed")
    next(stream)
    s.close()
    assert all(graph.session is None for graph in graphs)  # the ONNX Runtime sessions are gone
    with pytest.raises(GenerationError, match="Session is closed"):
        next(stream)  # the open stream stops at its next step
    for call in (lambda: s.generate(PROMPT), lambda: s.stream_batch([PROMPT]), lambda: s.calibrate(force=True)):
        with pytest.raises(GenerationError, match="Session is closed; create a new Session"):
            call()
    s.close()  # closing twice is harmless
    with Session(engine(*pair, 4)) as again:  # the engine itself is untouched
        assert again.generate(PROMPT, max_new_tokens=5, mode="ar").token_ids == expected[:5]


def test_backend_seconds_counts_backend_time(session):
    before = session.backend_seconds
    session.generate(PROMPT, max_new_tokens=4, mode="ar")
    assert session.backend_seconds > before
    assert session.onnxruntime_seconds == session.backend_seconds  # the old name, kept
