"""Greedy PARD and AR output == the target's own greedy decoding (transformers), token for token."""

from __future__ import annotations

import pytest

import tiny_models
from pard_export.runtime import Session

NEW_TOKENS = tiny_models.NEW_TOKENS


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_pard_and_ar_equal_target_greedy(arch, k, tiny_pair, engine, references):
    target, draft = tiny_pair(arch)
    with Session(engine(target, draft, k)) as session:
        for prompt_ids, expected in references(arch):
            for mode in ("pard", "ar"):
                result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode=mode)
                assert result.token_ids == expected, (arch, k, mode)


def test_draft_copy_of_target_accepts_more_and_stays_lossless(tiny_pair, engine, references, tmp_path):
    target, _ = tiny_pair("llama")
    draft = tiny_models.make_model(tmp_path / "copy", "llama", tiny_models.TARGET_SIZE, seed=0)  # same weights
    with Session(engine(target, draft, 4)) as session:
        for prompt_ids, expected in references("llama"):
            result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS)
            assert result.token_ids == expected
            assert result.stats.mean_accepted_tokens > 1.0
            assert result.stats.per_position_acceptance[0] == 1.0  # its first draft is the target's own token


def test_random_draft_is_lossless_with_little_acceptance(tiny_pair, engine, references):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 8)) as session:
        prompt_ids, expected = references("llama")[0]
        result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS)
    assert result.token_ids == expected
    assert result.stats.mean_accepted_tokens < 1.5
