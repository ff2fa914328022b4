"""The Scheduler (in-flight batching): rows that join a running batch equal their batch-of-one output on every cache
flavour; sampled rows keep their seed's text whoever shares the batch; cancellation frees the row; admission keeps
to max batch, the KV budget and the queue's bound, in order."""

from __future__ import annotations

import threading

import pytest

import tiny_models
from pard_export.errors import GenerationError, QueueFullError
from pard_export.runtime import Scheduler, Session
from pard_export.runtime.calibration import Calibration
from pard_export.runtime.drafting import StepCosts

K = 3
PROMPTS = [list(range(5, 5 + n)) for n in (3, 11, 6, 20, 2)]  # 11 and 20 tokens: prefilled apart in chunks
LIMITS = [30, 12, 25, 18, 40]


@pytest.fixture(scope="module", params=["plain", "inplace", "plugin"])
def engine_dir(request, tiny_pair, engine):
    target, draft = tiny_pair("llama")
    dtype = {"dtype": "float32"} if request.param == "plugin" else {}
    return engine(target, draft, K, attention=request.param, max_seq_len=160, **dtype)


def references(session: Session, prompts, limits, **settings) -> list[list[int]]:
    return [session.generate(p, max_new_tokens=n, **settings).token_ids for p, n in zip(prompts, limits)]


def test_rows_that_join_mid_decode_equal_their_batch_of_one_output(engine_dir):
    with Session(engine_dir) as session:
        expected = references(session, PROMPTS, LIMITS)
        with Scheduler(session, max_batch=4, prefill_chunk=4) as scheduler:
            first = scheduler.submit(PROMPTS[0], max_new_tokens=LIMITS[0])
            events = first.events()
            for _ in range(3):  # the first request decodes a few steps before the others arrive
                next(events)
            others = [scheduler.submit(p, max_new_tokens=n) for p, n in zip(PROMPTS[1:], LIMITS[1:])]
            rest = list(events)
            got = [rest[-1].result.token_ids] + [handle.result(timeout=60).token_ids for handle in others]
            assert scheduler.running == 0
    assert got == expected


def test_rows_that_share_a_prefix_copy_its_kv_and_equal_their_batch_of_one_output(engine_dir):
    system = list(range(40, 60))  # 20 tokens every prompt starts with, as a chat template's system turn
    prompts = [system + list(range(5, 5 + n)) for n in (4, 9, 1, 12)]
    limits = [20, 14, 25, 10]
    with Session(engine_dir) as session:
        expected = references(session, prompts, limits)
        with Scheduler(session, prefill_chunk=8) as scheduler:
            first = scheduler.submit(prompts[0], max_new_tokens=limits[0])
            assert first.result(timeout=60).token_ids == expected[0]
            assert scheduler._prefix is None  # nothing to share with yet
            handles = [scheduler.submit(p, max_new_tokens=n) for p, n in zip(prompts[1:], limits[1:])]
            got = [handle.result(timeout=60).token_ids for handle in handles]
            assert scheduler._prefix.tokens == tuple(system)
    assert got == expected[1:]


def test_joining_rows_carry_their_text_and_finish_reasons(engine_dir):
    with Session(engine_dir) as session:
        expected = session.generate(PROMPTS[3], max_new_tokens=15)
        with Scheduler(session) as scheduler:
            handles = [scheduler.submit(PROMPTS[3], max_new_tokens=15) for _ in range(3)]
            streams = [list(handle.events(timeout=60)) for handle in handles]
    for events in streams:
        result = events[-1].result
        assert (result.token_ids, result.text, result.finish_reason) == (
            expected.token_ids,
            expected.text,
            expected.finish_reason,
        )
        assert "".join(e.text for e in events) == expected.text
        assert [t for e in events for t in e.token_ids] == expected.token_ids


# Drafting pays alone but not in a crowd: one batch-wide choice of drafts would change with who shares the batch.
CROWD_SHY = Calibration(StepCosts((64,), ((1.0, 1.05, 1.1, 1.15),), 4, (1.0, 9.0, 9.5, 10.0)), (0.6, 0.6, 0.6))


def test_sampled_rows_keep_their_seeds_text_whoever_shares_the_batch(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, K, attention="plain", max_seq_len=160), calibration=CROWD_SHY) as session:
        sampled = dict(temperature=0.9, top_p=0.95, seed=7)
        alone_in_session = session.generate(PROMPTS[2], max_new_tokens=30, **sampled).token_ids
        with Scheduler(session) as scheduler:
            alone = scheduler.submit(PROMPTS[2], max_new_tokens=30, **sampled).result(timeout=60).token_ids
            crowd = [scheduler.submit(p, max_new_tokens=n) for p, n in zip(PROMPTS, LIMITS)]
            crowd += [scheduler.submit(PROMPTS[1], max_new_tokens=25, temperature=1.2, seed=3, draft_sampling=True)]
            shared = scheduler.submit(PROMPTS[2], max_new_tokens=30, **sampled)
            crowd += [scheduler.submit(PROMPTS[4], max_new_tokens=20, temperature=0.5, seed=11)]
            in_a_crowd = shared.result(timeout=60).token_ids
            for handle in crowd:
                handle.result(timeout=60)
        other_seed = session.generate(PROMPTS[2], max_new_tokens=30, **(sampled | {"seed": 8})).token_ids
    assert alone == in_a_crowd == alone_in_session
    assert other_seed != alone  # the seed matters: the comparison above can fail


def test_a_cancelled_request_leaves_and_frees_its_row(engine_dir):
    with Session(engine_dir) as session:
        with Scheduler(session) as scheduler:
            keep = scheduler.submit(PROMPTS[1], max_new_tokens=40)
            stop = scheduler.submit(PROMPTS[3], max_new_tokens=100)
            events = stop.events(timeout=60)
            next(events)
            stop.cancel()
            stop.cancel()  # idempotent
            last = list(events)[-1]
            assert last.result.finish_reason == "cancelled"
            assert len(last.result.token_ids) < 100
            assert keep.result(timeout=60).finish_reason in ("length", "stop")
            assert scheduler.running == 0 and scheduler._batch.rows == []
            assert all(len(cache.lengths) == 0 for cache in scheduler._batch.caches)  # every row's KV is gone


def test_admission_keeps_to_max_batch_in_order(engine_dir):
    with Session(engine_dir) as session:
        with Scheduler(session, max_batch=2) as scheduler:
            seen, order = [], []

            def watch(index):
                def on_event(event):
                    seen.append(scheduler.running)
                    if event.result is not None:
                        order.append(index)

                return on_event

            handles = [scheduler.submit(PROMPTS[0], max_new_tokens=8, on_event=watch(i)) for i in range(5)]
            for handle in handles:
                while handle.final is None:
                    threading.Event().wait(0.01)
    assert max(seen) == 2
    assert order == sorted(order)  # same length, admitted in order: they finish in order


def test_a_full_queue_refuses_and_the_kv_budget_holds_rows_back(engine_dir):
    with Session(engine_dir) as session:
        release = threading.Event()
        with Scheduler(session, max_batch=1, max_queue=1) as scheduler:
            blocked = scheduler.submit(PROMPTS[0], max_new_tokens=5, on_event=lambda e: release.wait(30))
            while scheduler.running == 0:  # admitted: its first event now holds the scheduler's thread
                threading.Event().wait(0.01)
            queued = scheduler.submit(PROMPTS[1], max_new_tokens=5)
            with pytest.raises(QueueFullError, match="queue is full"):
                scheduler.submit(PROMPTS[2], max_new_tokens=5)
            release.set()
            assert queued.result(timeout=60).finish_reason in ("length", "stop")
            assert blocked.final is not None
        one_row = session.kv_bytes("pard", len(PROMPTS[3]) + 30 + K + 1)
        with Scheduler(session, kv_budget_bytes=int(one_row * 1.5)) as scheduler:
            running = []
            handles = [
                scheduler.submit(PROMPTS[3], max_new_tokens=30, on_event=lambda e: running.append(scheduler.running))
                for _ in range(3)
            ]
            for handle in handles:
                while handle.final is None:
                    threading.Event().wait(0.01)
        with Scheduler(session, kv_budget_bytes=one_row - 1) as scheduler:
            with pytest.raises(GenerationError, match="budget"):
                scheduler.submit(PROMPTS[3], max_new_tokens=30)
    assert max(running) == 1


def test_bad_requests_raise_at_submit_and_the_session_is_held_until_close(tiny_pair, engine):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, K, attention="plain", max_seq_len=160)) as session:
        with Scheduler(session) as scheduler:
            with pytest.raises(GenerationError, match="temperature"):
                scheduler.submit(PROMPTS[0], temperature=-1)
            with pytest.raises(GenerationError, match="max_new_tokens"):
                scheduler.submit(PROMPTS[0], max_new_tokens=0)
            with pytest.raises(GenerationError, match="max_seq_len"):
                scheduler.submit([5] * 200)
            with pytest.raises(GenerationError, match="cannot choose its mode"):
                scheduler.submit(PROMPTS[0], mode="ar")
            with pytest.raises(GenerationError, match="already generating"):
                session.generate(PROMPTS[0], max_new_tokens=3)
            with pytest.raises(GenerationError, match="max_batch"):
                Scheduler(session, max_batch=0)
            assert scheduler.submit(PROMPTS[0], max_new_tokens=3).result(timeout=60).token_ids
        assert session.generate(PROMPTS[0], max_new_tokens=3).token_ids  # given back at close
        scheduler = Scheduler(session)
        waiting = [scheduler.submit(PROMPTS[3], max_new_tokens=50) for _ in range(3)]
        scheduler.close()
        assert {h.final.result.finish_reason for h in waiting} <= {"cancelled", "length", "stop"}
        with pytest.raises(GenerationError, match="closed"):
            scheduler.submit(PROMPTS[0])


def test_an_internal_failure_ends_the_requests_in_flight_and_the_scheduler_goes_on(tiny_pair, engine, monkeypatch):
    target, draft = tiny_pair("llama")
    with Session(engine(target, draft, K, attention="plain", max_seq_len=160)) as session:
        expected = session.generate(PROMPTS[0], max_new_tokens=6).token_ids
        with Scheduler(session) as scheduler:
            graph = scheduler._batch.caches[0].graph
            real_run = graph.run
            monkeypatch.setattr(graph, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("device lost")))
            failed = scheduler.submit(PROMPTS[0], max_new_tokens=6)
            with pytest.raises(GenerationError, match="device lost"):
                failed.result(timeout=60)
            monkeypatch.setattr(graph, "run", real_run)
            assert scheduler.submit(PROMPTS[0], max_new_tokens=6).result(timeout=60).token_ids == expected


def test_prompts_are_checked_against_the_tiny_vocabulary():
    assert max(max(p) for p in PROMPTS) < tiny_models.VOCAB
