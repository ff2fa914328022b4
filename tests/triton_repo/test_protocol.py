"""Requests as the model reads them: defaults, limits, and a one-line reason for each refusal."""

from __future__ import annotations

import numpy as np
import pytest

from pard_export.runtime.decoding import GenerationStats
from pard_export.runtime.session import GenerationResult
from pard_export.triton_repo.protocol import INPUTS, NUMPY_TYPES, OUTPUTS, RequestError, outputs, parse_request


def tensors(**values) -> dict[str, np.ndarray]:
    types = {t.name: NUMPY_TYPES[t.data_type] for t in INPUTS}
    made = {}
    for name, value in values.items():
        if name == "text_input":
            made[name] = np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
        else:
            made[name] = np.array([value if isinstance(value, list) else [value]], dtype=types[name])
    return made


def parse(limit=100, **values):
    given = tensors(**values)
    return parse_request(given.get, limit)


def test_defaults_are_greedy_and_not_streamed():
    request = parse(text_input="héllo", max_tokens=5)
    assert (request.prompt, request.max_tokens, request.temperature, request.stream, request.seed) == (
        "héllo",
        5,
        0.0,
        False,
        None,
    )


def test_every_knob_is_read():
    request = parse(
        input_ids=[3, 4, 5], max_tokens=7, temperature=0.5, top_p=0.9, top_k=20, seed=11, stream=True, chat=True
    )
    assert request.prompt == [3, 4, 5]
    assert request.settings() == dict(temperature=0.5, top_p=np.float32(0.9).item(), top_k=20, seed=11, chat=True)
    assert request.stream


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(max_tokens=5), "exactly one of text_input and input_ids"),
        (dict(text_input="a", input_ids=[1], max_tokens=5), "exactly one of"),
        (dict(text_input="a", max_tokens=0), r"max_tokens must lie in 1\.\.100, got 0"),
        (dict(text_input="a", max_tokens=101), "got 101"),
        (dict(text_input="a"), "got None"),
        (dict(text_input=b"\xff\xfe", max_tokens=5), "not valid UTF-8"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(values, message):
    with pytest.raises(RequestError, match=message):
        parse(**values)


def test_one_prompt_per_request():
    given = tensors(text_input="a", max_tokens=5)
    given["text_input"] = np.array([[b"a"], [b"b"]], dtype=np.object_)
    with pytest.raises(RequestError, match="one prompt per request"):
        parse_request(given.get, 100)


def test_final_outputs_carry_the_metrics_with_a_batch_dimension():
    stats = GenerationStats(
        mode="pard",
        k=4,
        new_tokens=3,
        drafted_tokens=8,
        accepted_drafts=2,
        mean_accepted_tokens=1.5,
        acceptance_rate=0.25,
        finish_reason="length",
    )
    made = outputs("añb", [1, 2, 3], GenerationResult([1, 2, 3], "añb", stats))
    assert set(made) == {t.name for t in OUTPUTS}
    assert made["text_output"][0, 0].decode() == "añb" and made["output_ids"].tolist() == [[1, 2, 3]]
    assert made["finish_reason"][0, 0] == b"length" and made["total_draft_tokens"].tolist() == [[8]]
    assert all(a.shape[0] == 1 and a.dtype == NUMPY_TYPES[t.data_type] for t in OUTPUTS for a in [made[t.name]])
    assert set(outputs("a", [1])) == {"text_output", "output_ids"}  # a streamed piece
