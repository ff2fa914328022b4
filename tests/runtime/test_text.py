from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pard_export.errors import GenerationError
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


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "déjà vu?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "Again"},
]


def test_encode_messages_matches_transformers(tiny_pair):
    directory = tiny_pair("llama")[0]
    codec, reference = TextCodec(directory), AutoTokenizer.from_pretrained(directory)
    rendered = reference.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert codec.encode_messages(CONVERSATION) == reference(rendered, add_special_tokens=False).input_ids
    assert codec.encode_chat("hi") == codec.encode_messages([{"role": "user", "content": "hi"}])


def test_a_conversation_the_template_cannot_render_is_a_generation_error(tiny_pair):
    codec = TextCodec(tiny_pair("llama")[0])
    with pytest.raises(GenerationError, match="cannot render"):
        codec.encode_messages([{"role": "user"}])  # the template reads message['content']
