"""Streaming: incremental detokenization never splits a character; stop strings end the text before them."""

from __future__ import annotations

import pytest

from pard_export.runtime import Session
from pard_export.runtime.streaming import IncrementalDetokenizer, RowText
from pard_export.runtime.text import TextCodec

MULTIBYTE = "déjà vu ✓ 日本語 🙂 naïve"


@pytest.fixture(scope="module")
def codec(tiny_pair):
    return TextCodec(tiny_pair("llama")[0])


def test_multibyte_characters_are_never_split(codec):
    ids = codec.encode(MULTIBYTE)
    assert len(ids) > len(MULTIBYTE.split())  # the tiny BPE splits these characters into byte tokens
    detokenizer = IncrementalDetokenizer(codec)
    pieces = [detokenizer.add([i]) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == MULTIBYTE == codec.decode(ids)
    assert sum(1 for p in pieces if p == "") > 0  # some tokens had to wait for the rest of their character


def test_stop_string_is_cut_and_never_shown(codec):
    text = RowText(codec, stop=["STOP"])
    shown = []
    stopped = False
    for token in codec.encode("one two STOP three"):
        stopped = text.add(token)
        shown.append(text.take_visible(final=stopped))
        if stopped:
            break
    assert stopped and text.text == "one two " and "".join(shown) == "one two "
    assert not any("S" in piece for piece in shown)


@pytest.fixture(scope="module")
def session(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, 4)) as s:
        yield s


def test_stream_equals_generate(session):
    full = session.generate("The quick brown fox", max_new_tokens=40)
    pieces = list(session.stream("The quick brown fox", max_new_tokens=40))
    assert len(pieces) > 1
    assert "".join(pieces) == full.text


def test_stop_strings_in_generate_and_stream(session):
    full = session.generate("The quick brown fox", max_new_tokens=40)
    stop = full.text[12:15]
    assert stop.strip() and stop in full.text
    cut = full.text[: full.text.index(stop)]
    stopped = session.generate("The quick brown fox", max_new_tokens=40, stop=[stop])
    assert stopped.text == cut and stopped.finish_reason == "stop"
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids < full.token_ids
    assert "".join(session.stream("The quick brown fox", max_new_tokens=40, stop=stop)) == cut


def test_stream_with_sampling_is_reproducible(session):
    first = "".join(session.stream("def square(x):", max_new_tokens=20, temperature=0.9, seed=3))
    again = "".join(session.stream("def square(x):", max_new_tokens=20, temperature=0.9, seed=3))
    assert first == again
