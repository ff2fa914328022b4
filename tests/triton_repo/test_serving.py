"""The model's request handling without a server: each request joins the scheduler's running batch and equals
Session.generate; streamed pieces add up to the text; a bad request fails alone; a cancelled one frees its row."""

from __future__ import annotations

import threading

import pytest

from pard_export.runtime import Scheduler, Session
from pard_export.triton_repo.protocol import Request
from pard_export.triton_repo.serving import Outbox, submit

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19]]


class Recorder:
    def __init__(self, cancel_after: int | None = None):
        self.responses, self.error = [], None
        self.cancel_after = cancel_after  # the client cancels after this many responses
        self.done = threading.Event()

    def send(self, tensors, final):
        assert not self.finished, "a response after the final one"
        self.responses.append((tensors, final))
        if final:
            self.done.set()

    def fail(self, message):
        assert not self.finished
        self.error = message
        self.done.set()

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.responses) >= self.cancel_after

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


def serve(session, work, outbox=None, **options) -> None:
    """Every request through the model's handling on a scheduler of the session; returns when all are answered."""
    with Scheduler(session, **options) as scheduler:
        for request, recorder in work:
            submit(scheduler, request, recorder, outbox)
        for _, recorder in work:
            assert recorder.done.wait(60)
        assert scheduler.running == 0


def test_batched_greedy_requests_equal_their_own_generation(session):
    work = [
        (Request(p, n, stream=s), Recorder()) for p, n, s in zip(PROMPTS, [12, 5, 20, 1], [False, True, False, True])
    ]
    expected = [session.generate(r.prompt, max_new_tokens=r.max_tokens) for r, _ in work]
    serve(session, work)
    for (request, recorder), reference in zip(work, expected):
        assert recorder.finished and recorder.error is None
        assert (recorder.ids(), recorder.text()) == (reference.token_ids, reference.text)
        final = recorder.responses[-1][0]
        assert 0 <= final["total_accepted_draft_tokens"][0, 0] <= final["total_draft_tokens"][0, 0]
        assert final["finish_reason"][0, 0].decode() == reference.finish_reason
    assert [len(recorder.responses) for _, recorder in work[::2]] == [1, 1]  # not streamed: one response


def test_streamed_request_gets_pieces_then_a_final_response(session):
    expected = session.generate(PROMPTS[2], max_new_tokens=30).token_ids
    recorder, outbox = Recorder(), Outbox()
    serve(session, [(Request(PROMPTS[2], 30, stream=True), recorder)], outbox)
    outbox.close()
    assert len(recorder.responses) > 2 and [f for _, f in recorder.responses].count(True) == 1
    assert "finish_reason" not in recorder.responses[0][0] and "finish_reason" in recorder.responses[-1][0]
    assert recorder.ids() == expected


def test_a_bad_request_fails_alone(session):
    too_long = [3] * 200  # the engine's max_seq_len is 128
    work = [
        (Request(PROMPTS[0], 6), Recorder()),
        (Request(too_long, 6), Recorder()),
        (Request(PROMPTS[1], 6), Recorder()),
        (Request(PROMPTS[1], 6, top_p=2.0), Recorder()),
    ]
    expected = [session.generate(p, max_new_tokens=6).token_ids for p in PROMPTS[:2]]
    serve(session, work)
    assert "has 200 tokens" in work[1][1].error and "top_p must lie in (0, 1]" in work[3][1].error
    assert [r.ids() for _, r in (work[0], work[2])] == expected


def test_sampled_requests_follow_their_seed_beside_others(session):
    alone = session.generate(PROMPTS[0], max_new_tokens=10, temperature=0.8, seed=3).token_ids
    work = [
        (Request(PROMPTS[0], 10, temperature=0.8, seed=3), Recorder()),
        (Request(PROMPTS[2], 10), Recorder()),
        (Request(PROMPTS[0], 10, temperature=0.8, seed=3), Recorder()),
        (Request(PROMPTS[1], 10, top_k=0, temperature=1.5, seed=4), Recorder()),
    ]
    serve(session, work)
    assert work[0][1].ids() == work[2][1].ids() == alone


def test_a_cancelled_request_ends_and_frees_its_row(session):
    expected = session.generate(PROMPTS[1], max_new_tokens=30).token_ids
    work = [(Request(PROMPTS[2], 60, stream=True), Recorder(cancel_after=2)), (Request(PROMPTS[1], 30), Recorder())]
    outbox = Outbox()  # as the model sends: the client's cancellation is seen on the outbox's thread
    serve(session, work, outbox)  # checks that no row is left running
    outbox.close()
    cancelled = work[0][1]
    assert cancelled.responses[-1][0]["finish_reason"][0, 0].decode() == "cancelled"
    assert len(cancelled.ids()) < 60 and work[1][1].ids() == expected


def test_an_internal_failure_ends_the_requests_in_flight(session, monkeypatch):
    work = [(Request(PROMPTS[1], 1), Recorder()), (Request(PROMPTS[0], 30), Recorder())]
    graph = session._caches["target"].graph
    real, calls = graph.run, []

    def breaks_after_a_few_calls(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(graph, "run", breaks_after_a_few_calls)
    serve(session, work)
    assert work[0][1].error is None and work[0][1].finished
    assert work[1][1].error == "internal error: device lost"
