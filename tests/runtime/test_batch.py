"""Batches: rows of different prompt lengths and different acceptance per step; at temperature 0 every row
equals its own batch-1 output (and the target's greedy decoding)."""

from __future__ import annotations

import pytest

import tiny_models
from pard_export.contract import DRAFT_IDS, DRAFT_LOGITS, LOGITS, TARGET
from pard_export.runtime import Session, decoding

PROMPTS = [
    [276, 297, 298, 294],
    [302, 73, 308, 272, 268, 72, 11, 91, 316],
    [54, 83],
    [120, 121, 122, 123, 124, 125, 126],
]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def session(tiny_pair, engine, tmp_path_factory):
    target, _ = tiny_pair("qwen2")
    # a copy of the target as draft: its first draft is right, its mask drafts vary -> acceptance differs per row
    draft = tiny_models.make_model(tmp_path_factory.mktemp("copy") / "d", "qwen2", tiny_models.TARGET_SIZE, seed=0)
    with Session(engine(target, draft, 4, with_ar_draft=True)) as s:
        yield s


@pytest.fixture(scope="module")
def singles(session):
    return {
        mode: [session.generate(p, max_new_tokens=NEW_TOKENS, mode=mode).token_ids for p in PROMPTS]
        for mode in session.modes
    }


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["pard", "pard-fixed", "ar", "ar-draft"])
def test_rows_equal_their_batch_of_one(session, singles, mode, batch):
    results = session.generate_batch(PROMPTS[:batch], max_new_tokens=NEW_TOKENS, mode=mode)
    assert [r.token_ids for r in results] == singles[mode][:batch]
    assert singles["pard"] == singles["pard-fixed"] == singles["ar"] == singles["ar-draft"]


def test_acceptance_differs_between_rows(session):
    results = session.generate(PROMPTS, max_new_tokens=NEW_TOKENS, mode="pard-fixed")  # a list of prompts is a batch
    assert len({r.stats.accepted_drafts for r in results}) > 1


def test_rows_that_finish_early_leave_the_batch(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 4, max_seq_len=16)) as s:  # rows reach max_seq_len at different steps
        singles = [s.generate(p, max_new_tokens=100).token_ids for p in PROMPTS]
        batch = s.generate_batch(PROMPTS, max_new_tokens=100)
    assert [r.token_ids for r in batch] == singles
    assert [len(r.token_ids) for r in batch] == [16 - len(p) for p in PROMPTS]
    assert {r.finish_reason for r in batch} == {"length"}


def test_a_batch_with_an_over_long_prompt_generates_nothing(session):
    from pard_export.errors import GenerationError

    with pytest.raises(GenerationError, match="prompt 1 has"):
        session.generate_batch([PROMPTS[0], [5] * 600], max_new_tokens=4)
    assert len(session.generate_batch(PROMPTS[:2], max_new_tokens=4)) == 2


def test_each_row_may_have_its_own_token_limit(session, singles):
    limits = [3, 40, 1, 17]
    results = session.generate_batch(PROMPTS, max_new_tokens=limits)
    assert [r.token_ids for r in results] == [ids[:n] for ids, n in zip(singles["pard"], limits)]
    with pytest.raises(ValueError, match="2 limits for 4 prompts"):
        session.generate_batch(PROMPTS, max_new_tokens=[3, 4])


def test_stream_batch_events_add_up_to_each_rows_result(session, singles):
    tokens, texts, results = {}, {}, {}
    for event in session.stream_batch(PROMPTS[:3], max_new_tokens=NEW_TOKENS):
        assert event.row not in results  # nothing after a row's last event
        tokens.setdefault(event.row, []).extend(event.token_ids)
        texts[event.row] = texts.get(event.row, "") + event.text
        if event.result is not None:
            results[event.row] = event.result
    assert [tokens[i] for i in range(3)] == [results[i].token_ids for i in range(3)] == singles["pard"][:3]
    assert [texts[i] for i in range(3)] == [results[i].text for i in range(3)]


@pytest.mark.parametrize("attention", ["inplace", "plain"])
def test_prompts_prefilled_in_chunks_give_the_same_tokens(tiny_pair, engine, monkeypatch, attention):
    """Long prompts go in chunks without logits (decoding.prefill_chunks); here chunks of 3 tokens against one chunk
    each, so rows of a batch run out at different chunks (some chunks hold no token of a row), and the draft's
    catch-up is chunked too."""
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 4, attention=attention, with_ar_draft=True)) as s:
        whole = {mode: [s.generate(p, max_new_tokens=16, mode=mode).token_ids for p in PROMPTS] for mode in s.modes}
        monkeypatch.setattr(decoding, "DRAFT_CHUNKED_FROM", 1)
        monkeypatch.setattr(decoding, "PREFILL_CHUNK", 3)
        headless = []
        for cache in s._caches.values():

            def recording(*args, _forward=cache.forward, **kwargs):
                headless.append(kwargs.get("skip"))
                return _forward(*args, **kwargs)

            monkeypatch.setattr(cache, "forward", recording)
        for mode in s.modes:
            assert [s.generate(p, max_new_tokens=16, mode=mode).token_ids for p in PROMPTS] == whole[mode], mode
            assert [r.token_ids for r in s.generate_batch(PROMPTS, max_new_tokens=16, mode=mode)] == whole[mode], mode
    assert headless.count((LOGITS,)) >= 2 * len(PROMPTS) and (DRAFT_IDS, DRAFT_LOGITS) in headless


@pytest.mark.parametrize("mode", ["pard", "ar", "ar-draft"])
def test_every_prompt_token_but_the_last_goes_in_prefill_calls(session, monkeypatch, mode):
    """Prefill and step calls attend differently (contract.PREFILL), each row-invariantly; a token's logits are the
    same whatever the mode or the batch only if its call kind is: the target reads a prompt's tokens but the last in
    prefill calls however few they are (here 1 to 8), and the last prompt token and every later one in step calls."""
    assert session.calibration  # measured before the recording starts
    target, calls = session._caches[TARGET], []
    forward = type(target).forward

    def recording(cache, tokens, valid, skip=(), prefill=False):
        if cache is target:
            calls.append(([(int(n), int(v.sum())) for n, v in zip(cache.lengths, valid)], prefill))
        return forward(cache, tokens, valid, skip, prefill)

    monkeypatch.setattr(type(target), "forward", recording)
    for prompts in (PROMPTS, PROMPTS[:1]):
        calls.clear()
        session.generate_batch(prompts, max_new_tokens=8, mode=mode)
        for rows, prefill in calls:
            for (first, count), prompt in zip(rows, prompts):  # the positions first .. first + count - 1 of each row
                if count:
                    assert (first + count < len(prompt)) if prefill else (first >= len(prompt) - 1), (rows, prefill)
        assert any(prefill for _, prefill in calls) and not all(prefill for _, prefill in calls)
