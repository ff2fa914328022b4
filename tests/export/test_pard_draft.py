"""A draft with a trimmed LM head (d2t map) exports, drafts only its head's ids, and stays lossless."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny_models
from pard_export.export.pard_draft import draft_to_target, load_draft, save_draft, shrink
from pard_export.runtime import Session

HEAD = torch.arange(4, 320, 3)  # every third id: drafts of the others are impossible


@pytest.fixture(scope="module")
def trimmed_draft(tiny_pair, tmp_path_factory):
    target, draft = tiny_pair("llama")
    model = AutoModelForCausalLM.from_pretrained(draft, dtype=torch.float32).eval()
    small = shrink(model, [0, 0], HEAD, tiny_models.MASK)  # the tiny draft has one layer: use it twice
    out = tmp_path_factory.mktemp("trimmed") / "draft"
    save_draft(small, out, AutoTokenizer.from_pretrained(draft), dtype=torch.float32)
    return target, out


def test_save_and_load_round_trip(trimmed_draft):
    _, path = trimmed_draft
    draft = load_draft(path)
    assert torch.equal(draft_to_target(draft), HEAD)
    assert draft.lm_head.weight.shape == (len(HEAD), draft.config.hidden_size)
    assert draft.config.pard_token == tiny_models.MASK and draft.config.spd_type == "pard"


def test_draft_graph_maps_head_rows_to_target_ids(trimmed_draft, engine):
    target, draft_dir = trimmed_draft
    out = engine(target, draft_dir, 4, with_ar_draft=True, attention="plain")
    draft = load_draft(draft_dir)
    ids = [5, 17, 42, 99, 7]
    with torch.no_grad():
        expected = draft(input_ids=torch.tensor([ids + [tiny_models.MASK] * 3])).logits[0, -4:]
    session = ort.InferenceSession(str(out / "draft.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.array([ids]),
        "position_ids": np.arange(5)[None],
        "attention_mask": np.ones((1, 5), np.int64),
    }
    for inp in session.get_inputs()[3:]:
        feeds[inp.name] = np.zeros((1, inp.shape[1], 0, inp.shape[3]), np.float32)
    draft_ids, logits = session.run(["draft_ids", "draft_logits"], feeds)
    assert draft_ids[0].tolist() == HEAD[expected.argmax(-1)].tolist()
    assert np.allclose(logits[0][:, HEAD.numpy()], expected.numpy(), atol=1e-4)
    outside = np.setdiff1d(np.arange(logits.shape[-1]), HEAD.numpy())
    assert np.isneginf(logits[0][:, outside]).all()


@pytest.mark.parametrize("mode", ["pard", "ar-draft"])
def test_trimmed_draft_is_lossless(trimmed_draft, engine, references, mode):
    target, draft_dir = trimmed_draft
    session = Session(engine(target, draft_dir, 4, with_ar_draft=True, attention="plain"))
    for prompt, expected in references("llama"):
        result = session.generate(prompt, max_new_tokens=tiny_models.NEW_TOKENS, mode=mode)
        assert result.token_ids == expected[: len(result.token_ids)] and len(result.token_ids) == len(expected)


def test_trimmed_draft_samples_only_head_ids(trimmed_draft, engine):
    target, draft_dir = trimmed_draft
    session = Session(engine(target, draft_dir, 4, with_ar_draft=True, attention="plain"))
    results = [
        session.generate(
            [5, 17, 42], max_new_tokens=24, temperature=1.0, seed=seed, draft_sampling=True, mode="pard-fixed"
        )
        for seed in range(4)
    ]
    assert all(r.stats.drafted_tokens > 0 and r.token_ids for r in results)
    assert sum(r.stats.accepted_drafts for r in results) > 0  # -inf outside the head still samples and verifies
