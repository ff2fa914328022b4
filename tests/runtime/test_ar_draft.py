"""The ar-draft baseline: the same draft run autoregressively; lossless, and counted honestly."""

from __future__ import annotations

import pytest

from pard_export.errors import GenerationError
from pard_export.runtime import Session
from tiny_models import NEW_TOKENS


@pytest.mark.parametrize("k", [1, 4])
def test_ar_draft_equals_target_greedy(tiny_pair, engine, references, k):
    target, draft = tiny_pair("qwen3")
    with Session(engine(target, draft, k, with_ar_draft=True)) as session:
        for prompt_ids, expected in references("qwen3"):
            result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode="ar-draft")
            assert result.token_ids == expected
            assert result.stats.draft_forwards == result.stats.drafted_tokens  # one forward per draft


def test_engine_without_ar_draft_refuses_the_mode(tiny_pair, engine):
    target, draft = tiny_pair("qwen3")
    with Session(engine(target, draft, 4)) as session:
        assert session.modes == ("ar", "pard", "pard-fixed")
        with pytest.raises(GenerationError, match="--with-ar-draft"):
            session.generate([5, 6], mode="ar-draft")
