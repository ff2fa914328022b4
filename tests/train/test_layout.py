"""The PARD training layout: equivalence with inference inputs (a) and the COD keep rule (b)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from pard_export.train.layout import FULL, IGNORE, CodSettings, build_layout, collate, keep_sets

MASK = tiny_models.MASK


@pytest.fixture(scope="module")
def tiny_draft(tiny_pair):
    _, draft = tiny_pair("llama")
    return AutoModelForCausalLM.from_pretrained(draft, dtype=torch.float32, attn_implementation="sdpa").eval()


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 300, (n,), generator=torch.Generator().manual_seed(seed))


def _inference_logits(model, tokens, n: int, depth: int) -> torch.Tensor:
    """Logits at the last position of [x_0..x_n, MASK x depth]."""
    ids = torch.cat([tokens[: n + 1], torch.full((depth,), MASK)])[None]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


@pytest.mark.parametrize("cod", [FULL, CodSettings()], ids=["all-kept", "cod"])
def test_layout_logits_equal_inference_logits(tiny_draft, cod):
    tokens = _tokens(24)
    layout = build_layout(tokens, keep_sets(len(tokens), cod, torch.Generator().manual_seed(1)), MASK)
    batch = collate([layout])
    with torch.no_grad():
        logits = tiny_draft(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask
        ).logits[0]
    checked = 0
    for slot, (b, j) in enumerate(zip(layout.block.tolist(), layout.index.tolist())):
        if j < b:
            continue
        expected = _inference_logits(tiny_draft, tokens, j - b, b)
        assert torch.allclose(logits[slot], expected, atol=1e-5), (b, j, (logits[slot] - expected).abs().max())
        checked += 1
    assert checked >= 2 * len(tokens)


def test_batch_padding_changes_nothing(tiny_draft):
    """A short layout padded beside a long one gives the same logits as alone."""
    short, long = _tokens(9, 1), _tokens(20, 2)
    layouts = [
        build_layout(t, keep_sets(len(t), CodSettings(), torch.Generator().manual_seed(3)), MASK) for t in (short, long)
    ]
    with torch.no_grad():
        both = collate(layouts)
        together = tiny_draft(
            input_ids=both.input_ids, position_ids=both.position_ids, attention_mask=both.attention_mask
        ).logits
        alone_batch = collate(layouts[:1])
        alone = tiny_draft(
            input_ids=alone_batch.input_ids,
            position_ids=alone_batch.position_ids,
            attention_mask=alone_batch.attention_mask,
        ).logits
    n = len(layouts[0].input_ids)
    assert torch.allclose(together[0, :n], alone[0], atol=1e-5)


def test_labels_predict_the_next_real_token():
    tokens = _tokens(12)
    layout = build_layout(tokens, keep_sets(12, FULL), MASK, first_label=4, ignore_ids=(int(tokens[7]),))
    for b, j, label in zip(layout.block.tolist(), layout.index.tolist(), layout.labels.tolist()):
        trained = j + 1 < 12 and j >= b and j + 1 >= 4 and int(tokens[j + 1]) != int(tokens[7])
        assert label == (int(tokens[j + 1]) if trained else IGNORE)
    assert (layout.input_ids[layout.block > 0] == MASK).all()
    assert torch.equal(layout.input_ids[layout.block == 0], tokens)


def test_cod_keeps_real_tokens_rates_and_whole_chains():
    cod, length = CodSettings(), 512
    counts = torch.zeros(cod.blocks)
    trials = 20
    for seed in range(trials):
        kept = keep_sets(length, cod, torch.Generator().manual_seed(seed))
        assert torch.equal(kept[0], torch.arange(length))
        for depth in range(1, cod.blocks):
            previous = set(kept[depth - 1].tolist())
            assert all(j - 1 in previous and j >= depth for j in kept[depth].tolist())
            counts[depth] += len(kept[depth])
    for depth in range(1, cod.blocks):
        expected = max(0.7**depth, 0.2) * length
        assert abs(counts[depth] / trials - expected) <= 0.02 * length, depth
    total = sum(len(k) for k in keep_sets(length, cod, torch.Generator().manual_seed(0)))
    assert 3.2 * length <= total <= 3.5 * length  # "about 3.4 L instead of 8 L"


def test_cod_chains_differ_between_draws():
    a = keep_sets(64, CodSettings(), torch.Generator().manual_seed(0))
    b = keep_sets(64, CodSettings(), torch.Generator().manual_seed(1))
    assert any(not torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
