"""ONNX graphs vs the transformers model they came from (fp32): logits, KV and the draft's mask slots."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import tiny_models
from pard_export.contract import (
    ATTENTION_MASK,
    DRAFT_IDS,
    DRAFT_LOGITS,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    past_name,
    present_name,
)

K = 4
TOL = 1e-4
# (batch, new tokens, past): prefill, decode (S=1) and verify (S=K+1), with and without a cache
CASES = [(1, 7, 0), (2, 7, 0), (1, 1, 6), (2, 1, 6), (1, K + 1, 6), (2, K + 1, 9), (2, K + 1, 0)]


def _reference(model_dir, prefix, new):
    """Logits of `new` after `prefix`, and the full KV cache, from transformers."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        if prefix.shape[1]:
            model(input_ids=prefix, cache=cache, use_cache=True)
        past = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers] if prefix.shape[1] else None
        out = model(input_ids=new, cache=cache, use_cache=True)
    return model, past, out.logits.numpy(), [(layer.keys.numpy(), layer.values.numpy()) for layer in out.cache.layers]


def _feeds(model, past, prefix, new):
    b, p, s = new.shape[0], prefix.shape[1], new.shape[1]
    cfg = model.config
    feeds = {
        INPUT_IDS: new.numpy(),
        POSITION_IDS: np.broadcast_to(np.arange(p, p + s), (b, s)).copy(),
        ATTENTION_MASK: np.ones((b, p + s), dtype=np.int64),
    }
    for i in range(cfg.num_hidden_layers):
        for j, kind in enumerate(("key", "value")):
            empty = np.zeros((b, cfg.num_key_value_heads, 0, cfg.head_dim), dtype=np.float32)
            feeds[past_name(i, kind)] = past[i][j].numpy() if past else empty
    return feeds


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("batch,new,past", CASES)
def test_target_graph_matches_torch(arch, batch, new, past, tiny_pair, engine):
    target, draft = tiny_pair(arch)
    session = ort.InferenceSession(str(engine(target, draft, K, attention="plain") / "target.onnx"))
    gen = torch.Generator().manual_seed(batch * 100 + new * 10 + past)
    prefix = torch.randint(4, tiny_models.VOCAB, (batch, past), generator=gen)
    tokens = torch.randint(4, tiny_models.VOCAB, (batch, new), generator=gen)
    model, past_kv, logits, kv = _reference(target, prefix, tokens)
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, _feeds(model, past_kv, prefix, tokens)))
    )
    assert np.abs(outputs[LOGITS] - logits).max() <= TOL
    for i, (key, value) in enumerate(kv):
        assert np.abs(outputs[present_name(i, "key")] - key).max() <= TOL
        assert np.abs(outputs[present_name(i, "value")] - value).max() <= TOL


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("batch,new,past", [(1, 6, 0), (2, 1, 5), (2, 3, 8)])
def test_draft_graph_appends_masks_and_drops_their_kv(arch, batch, new, past, tiny_pair, engine):
    target, draft = tiny_pair(arch)
    session = ort.InferenceSession(str(engine(target, draft, K, attention="plain") / "draft.onnx"))
    gen = torch.Generator().manual_seed(7 + batch + new + past)
    prefix = torch.randint(4, tiny_models.VOCAB, (batch, past), generator=gen)
    tokens = torch.randint(4, tiny_models.VOCAB, (batch, new), generator=gen)
    with_masks = torch.cat([tokens, torch.full((batch, K - 1), tiny_models.MASK)], 1)
    model, past_kv, logits, kv = _reference(draft, prefix, with_masks)
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, _feeds(model, past_kv, prefix, tokens)))
    )
    expected_logits = logits[:, -K:, : tiny_models.VOCAB]
    assert np.abs(outputs[DRAFT_LOGITS] - expected_logits).max() <= TOL
    assert (outputs[DRAFT_IDS] == expected_logits.argmax(-1)).all()
    real = past + new
    for i, (key, value) in enumerate(kv):
        assert outputs[present_name(i, "key")].shape[2] == real
        assert np.abs(outputs[present_name(i, "key")] - key[:, :, :real]).max() <= TOL
        assert np.abs(outputs[present_name(i, "value")] - value[:, :, :real]).max() <= TOL
