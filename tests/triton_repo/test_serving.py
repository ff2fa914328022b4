"""The model's batch handling without a server: greedy requests that arrive together decode as one batch and
each equals Session.generate; streamed pieces add up to the text; a bad request fails alone."""

from __future__ import annotations

import pytest

from pard_export.runtime import Session
from pard_export.triton_repo.protocol import Request
from pard_export.triton_repo.serving import serve

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19]]


class Recorder:
    def __init__(self):
        self.responses, self.error = [], None

    def send(self, tensors, final):
        assert not self.finished, "a response after the final one"
        self.responses.append((tensors, final))

    def fail(self, message):
        assert not self.finished
        self.error = message

    @property
    def finished(self) -> bool:
        return self.error is not None or any(final for _, final in self.responses)

    def text(self) -> str:
        return "".join(t["text_output"][0, 0].decode() for t, _ in self.responses)

    def ids(self) -> list[int]:
        return [i for t, _ in self.responses for i in t["output_ids"][0].tolist()]


@pytest.fixture(scope="module")
def session(tiny_engine):
    with Session(tiny_engine) as s:
        yield s


def test_batched_greedy_requests_equal_their_own_generation(session):
    work = [
        (Request(p, n, stream=s), Recorder()) for p, n, s in zip(PROMPTS, [12, 5, 20, 1], [False, True, False, True])
    ]
    serve(session, work)
    for request, recorder in work:
        expected = session.generate(request.prompt, max_new_tokens=request.max_tokens)
        assert recorder.finished and recorder.error is None
        assert (recorder.ids(), recorder.text()) == (expected.token_ids, expected.text)
        final = recorder.responses[-1][0]
        # a batch drafts no further than its shortest row allows, so the counts are the row's own, not batch-1's
        assert 0 <= final["total_accepted_draft_tokens"][0, 0] <= final["total_draft_tokens"][0, 0]
        assert final["finish_reason"][0, 0].decode() == expected.finish_reason
    assert [len(recorder.responses) for _, recorder in work[::2]] == [1, 1]  # not streamed: one response


def test_streamed_request_gets_pieces_then_a_final_response(session):
    recorder = Recorder()
    serve(session, [(Request(PROMPTS[2], 30, stream=True), recorder)])
    assert len(recorder.responses) > 2 and [f for _, f in recorder.responses].count(True) == 1
    assert "finish_reason" not in recorder.responses[0][0] and "finish_reason" in recorder.responses[-1][0]
    assert recorder.ids() == session.generate(PROMPTS[2], max_new_tokens=30).token_ids


def test_a_bad_request_fails_alone(session):
    too_long = [3] * 200  # the engine's max_seq_len is 128
    work = [
        (Request(PROMPTS[0], 6), Recorder()),
        (Request(too_long, 6), Recorder()),
        (Request(PROMPTS[1], 6), Recorder()),
    ]
    serve(session, work)
    assert "has 200 tokens" in work[1][1].error
    assert [r.ids() for _, r in (work[0], work[2])] == [
        session.generate(p, max_new_tokens=6).token_ids for p in PROMPTS[:2]
    ]


def test_each_greedy_request_has_its_own_knobs_checked(session):
    work = [(Request(PROMPTS[0], 6), Recorder()), (Request(PROMPTS[1], 6, top_p=2.0), Recorder())]
    serve(session, work)
    assert work[0][1].error is None and "top_p must lie in (0, 1]" in work[1][1].error


def test_sampled_requests_decode_alone_and_follow_their_seed(session):
    work = [
        (Request(PROMPTS[0], 10, temperature=0.8, seed=3), Recorder()),
        (Request(PROMPTS[0], 10, temperature=0.8, seed=3), Recorder()),
        (Request(PROMPTS[1], 10, top_k=0, temperature=1.5, seed=4), Recorder()),
    ]
    serve(session, work)
    alone = session.generate(PROMPTS[0], max_new_tokens=10, temperature=0.8, seed=3).token_ids
    assert work[0][1].ids() == work[1][1].ids() == alone


def test_an_internal_failure_ends_only_unfinished_requests(session, monkeypatch):
    work = [(Request(PROMPTS[1], 1), Recorder()), (Request(PROMPTS[0], 30), Recorder())]
    real = session.stream_batch

    def breaks_after_first_row(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if event.result is not None:
                raise RuntimeError("device lost")

    monkeypatch.setattr(session, "stream_batch", breaks_after_first_row)
    serve(session, work)
    assert work[0][1].error is None and work[0][1].finished
    assert work[1][1].error == "internal error: device lost"
