"""Greedy PARD and AR output == the target's own greedy decoding (transformers), token for token."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models
from pard_export.runtime import Session, drafting

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


@pytest.mark.parametrize("mode", ["pard", "pard-fixed"])
def test_draft_copy_of_target_accepts_more_and_stays_lossless(tiny_pair, engine, references, tmp_path, mode):
    target, _ = tiny_pair("llama")
    draft = tiny_models.make_model(tmp_path / "copy", "llama", tiny_models.TARGET_SIZE, seed=0)  # same weights
    with Session(engine(target, draft, 4), calibration=tiny_models.cpu_like_calibration(4)) as session:
        for prompt_ids, expected in references("llama"):
            result = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode=mode)
            assert result.token_ids == expected
            assert result.stats.mean_accepted_tokens > 1.0
            assert result.stats.per_position_acceptance[0] == 1.0  # its first draft is the target's own token
            steps = result.stats.drafts_per_step
            assert sum(steps[1:]) >= 0.95 * sum(steps), steps  # adaptive: it drafts on (nearly) every step


def test_random_draft_is_lossless_with_little_acceptance(tiny_pair, engine, references):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 8), calibration=tiny_models.cpu_like_calibration(8)) as session:
        prompt_ids, expected = references("llama")[0]
        fixed = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS, mode="pard-fixed")
        adaptive = session.generate(prompt_ids, max_new_tokens=NEW_TOKENS)
    assert fixed.token_ids == adaptive.token_ids == expected
    assert fixed.stats.mean_accepted_tokens < 1.5
    steps = adaptive.stats.drafts_per_step
    assert steps[0] >= 0.8 * sum(steps), steps  # adaptive: mostly ar steps
    assert sum(steps[1:]) >= 2, steps  # the first step, and probes


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_drafts_per_step_changing_every_step_stay_lossless(tiny_pair, engine, references, monkeypatch, k, batch):
    """Whatever n the choice makes, 0 included, the output is the target's own."""
    target, draft = tiny_pair("llama")
    choices = np.random.default_rng(k)
    monkeypatch.setattr(drafting, "best_drafts", lambda speeds: int(choices.integers(len(speeds))))
    cases = references("llama")[:batch]
    with Session(engine(target, draft, k), calibration=tiny_models.cpu_like_calibration(k)) as session:
        results = session.generate_batch([ids for ids, _ in cases], max_new_tokens=NEW_TOKENS)
    assert [r.token_ids for r in results] == [expected for _, expected in cases]
    steps = results[0].stats.drafts_per_step
    assert steps[0] > 0 and sum(1 for count in steps if count) >= min(k + 1, 3), steps
