"""The ar-draft baseline: the same draft run autoregressively; lossless, and counted honestly."""

from __future__ import annotations

import pytest

from pard_export.contract import DRAFT, DRAFT_AR, INPUT_IDS, LOGITS, TARGET
from pard_export.errors import GenerationError
from pard_export.runtime import Session
from tiny_models import NEW_TOKENS


def record_graph_calls(session: Session, monkeypatch) -> dict[str, list[tuple[int, bool]]]:
    """Wrap every graph's `run`: per role, (new tokens S, whether it computed logits) of each real call."""
    calls = {role: [] for role in session._caches}
    for role, cache in session._caches.items():

        def run(feeds, skip=(), kv=None, _run=cache.graph.run, _calls=calls[role]):
            _calls.append((feeds[INPUT_IDS].shape[1], LOGITS not in skip))
            return _run(feeds, skip, kv=kv)

        monkeypatch.setattr(cache.graph, "run", run)
    return calls


@pytest.mark.parametrize("k", [1, 4])
def test_ar_draft_equals_target_greedy(tiny_pair, engine, references, k):
    target, draft = tiny_pair("qwen3")
    with Session(engine(target, draft, k, with_ar_draft=True)) as session:
        for prompt_ids, expected in references("qwen3"):
            result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode="ar-draft")
            assert result.token_ids == expected


@pytest.mark.parametrize("k", [1, 4])
def test_ar_draft_stats_count_the_graph_calls_made(tiny_pair, engine, references, monkeypatch, k):
    target, draft = tiny_pair("qwen3")
    with Session(engine(target, draft, k, with_ar_draft=True)) as session:
        calls = record_graph_calls(session, monkeypatch)
        for prompt_ids, _ in references("qwen3"):
            for role_calls in calls.values():
                role_calls.clear()
            stats = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode="ar-draft").stats
            # A prompt of 9 tokens or more goes in chunks first (no logits); the stats count forwards with logits.
            assert stats.draft_forwards == sum(with_logits for _, with_logits in calls[DRAFT_AR])
            assert stats.target_forwards == sum(with_logits for _, with_logits in calls[TARGET])
            assert calls[DRAFT] == []  # the PARD draft graph has no part in this mode
            # The target reads each drafted token once; besides them, the prompt, then one pending token per step.
            target_tokens = sum(length for length, _ in calls[TARGET])
            assert stats.drafted_tokens == target_tokens - len(prompt_ids) - (stats.target_forwards - 1)


def test_engine_without_ar_draft_refuses_the_mode(tiny_pair, engine):
    target, draft = tiny_pair("qwen3")
    with Session(engine(target, draft, 4)) as session:
        assert session.modes == ("ar", "pard", "pard-fixed")
        with pytest.raises(GenerationError, match="--with-ar-draft"):
            session.generate([5, 6], mode="ar-draft")
