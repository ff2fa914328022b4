from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pard_export.runtime.text import TextCodec

TEXTS = ["The quick brown fox", "déjà vu — ünïcode ✓", "  spaces\n\nand newlines  "]


@pytest.fixture(scope="module")
def saved_tokenizer(tiny_pair):
    return tiny_pair("llama")[0]


def test_encode_and_chat_match_transformers(saved_tokenizer):
    codec = TextCodec(saved_tokenizer)
    reference = AutoTokenizer.from_pretrained(saved_tokenizer)
    for text in TEXTS:
        assert codec.encode(text) == reference(text).input_ids
        chat = reference.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        assert codec.encode_chat(text) == reference(chat, add_special_tokens=False).input_ids
        assert codec.decode(codec.encode(text)) == reference.decode(reference(text).input_ids, skip_special_tokens=True)
