"""The choice of n (drafts verified per step): expected tokens, the pure choice on hand-made costs, the per-row
estimates and the probing of AdaptiveDrafts."""

from __future__ import annotations

import numpy as np
import pytest

from pard_export.runtime import drafting
from pard_export.runtime.drafting import Acceptance, AdaptiveDrafts, StepCosts, choose_drafts, expected_tokens


def test_expected_tokens_counts_the_bonus_and_every_accepted_prefix():
    rates = np.array([0.5, 0.5, 1.0])
    assert expected_tokens(rates).tolist() == [1.0, 1.5, 1.75, 2.0]
    assert expected_tokens(np.zeros((2, 3))).tolist() == [[1.0] * 4] * 2


def test_drafting_that_costs_more_than_it_brings_picks_zero():
    # a step verifying n drafts costs 1 + 0.5 n decode steps; drafts are accepted 30 % of the time
    seconds = [1.0, 1.5, 2.0, 2.5]
    assert choose_drafts(seconds, [np.full(3, 0.3)]) == 0


def test_cheap_drafts_that_agree_pick_all_of_them():
    seconds = [1.0, 1.05, 1.1, 1.15]
    assert choose_drafts(seconds, [np.full(3, 0.9)]) == 3


def test_a_good_first_draft_and_poor_later_ones_pick_one():
    seconds = [1.0, 1.2, 1.4, 1.6]
    assert choose_drafts(seconds, [np.array([0.95, 0.1, 0.1])]) == 1


def test_one_n_for_a_batch_weighs_every_row():
    seconds = [1.0, 1.3]
    good, poor = np.array([0.9]), np.array([0.0])
    assert choose_drafts(seconds, [good]) == 1
    assert choose_drafts(seconds, [good, poor, poor]) == 0  # 1.9 + 1 + 1 tokens in 1.3 s < 3 tokens in 1 s


def test_a_shorter_list_of_costs_bounds_n():
    assert choose_drafts([1.0, 1.05], [np.full(3, 0.9)]) == 1


def costs(per_draft: float, k: int = 3, contexts=(32,), slope: float = 0.0) -> StepCosts:
    """Decode 1 s at context 0 (+ slope per token), each verified draft per_draft more."""
    rows = tuple(tuple(1.0 + slope * c + (n > 0) * per_draft * n for n in range(k + 1)) for c in contexts)
    return StepCosts(contexts, rows)


def test_costs_are_linear_between_contexts_and_beyond_them():
    c = costs(0.1, contexts=(100, 200), slope=0.01)
    assert c.at(150)[0] == pytest.approx(2.5)
    assert c.at(400)[0] == pytest.approx(5.0)  # along the last segment
    assert c.at(0)[0] == pytest.approx(2.0)  # never below what was measured


def test_costs_grow_with_the_batch_as_measured_and_never_fall_with_n():
    c = StepCosts((32,), ((1.0, 1.5, 1.4),), batch=4, batch_seconds=(1.3, 2.4, 2.4))
    assert c.at(32).tolist() == [1.0, 1.5, 1.5]  # noise that makes 2 drafts cheaper than 1 is flattened
    assert c.at(32, batch=4)[0] == pytest.approx(1.3)
    assert c.at(32, batch=7)[0] == pytest.approx(1.6)


def test_costs_round_trip_through_a_dict():
    c = StepCosts((32, 512), ((1.0, 1.2), (2.0, 2.5)), 4, (1.5, 2.0), (0.01, 0.02))
    assert StepCosts.from_dict(c.to_dict()) == c


def test_acceptance_follows_its_row_and_keeps_undecided_positions_near_the_prior():
    row = Acceptance(np.array([0.5, 0.5, 0.5]))
    for _ in range(30):
        row.observe(drafted=3, accepted=0)  # position 1 always rejected, 2 and 3 never reached
    rates = row.rates
    assert rates[0] < 0.05
    assert rates[1] == pytest.approx(0.5 * rates[0] / 0.5)  # the prior of deeper positions scales with the first
    for _ in range(30):
        row.observe(drafted=3, accepted=3)
    assert (row.rates > 0.7).all()


def test_a_row_that_never_agrees_runs_ar_steps_with_probes_that_back_off():
    adaptive = AdaptiveDrafts(costs(0.3), prior=[0.5, 0.5, 0.5], rows=1)
    chosen = []
    for _ in range(200):
        n, _ = adaptive.choose([0], 100, most=3)
        adaptive.observe([0], n, [0])
        chosen.append(n)
    assert chosen[0] >= 1  # the first step drafts: the draft reads the prompt with the prefill
    probes = [i for i, n in enumerate(chosen[10:], 10) if n]
    gaps = np.diff(probes)
    assert len(probes) >= 3 and (gaps[1:] >= gaps[:-1]).all() and gaps[-1] == drafting.LAST_PROBE + 1
    assert sum(1 for n in chosen if n == 0) > 190


def test_a_batch_backs_off_when_few_of_its_rows_agree_in_probes():
    """One row in 16 agreeing finds agreement in every probe, but its token does not pay for the batch's longer
    step: the probes back off as for a row that never agrees."""
    rows = list(range(16))
    adaptive = AdaptiveDrafts(costs(0.3), prior=[0.05, 0.05, 0.05], rows=rows)
    adaptive.started = True
    chosen = []
    for _ in range(300):
        n, _ = adaptive.choose(rows, 100, most=3)
        adaptive.observe(rows, n, [n] + [0] * 15)
        chosen.append(n)
    probes = [i for i, n in enumerate(chosen) if n]
    assert len(probes) <= 8 and np.diff(probes)[-1] == drafting.LAST_PROBE + 1


def test_a_row_that_agrees_again_after_a_probe_drafts_again():
    adaptive = AdaptiveDrafts(costs(0.1), prior=[0.5, 0.5, 0.5], rows=1)
    agree = False
    chosen = []
    for step in range(150):
        n, _ = adaptive.choose([0], 100, most=3)
        adaptive.observe([0], n, [n if agree else 0])
        chosen.append(n)
        agree = step >= 60  # prose, then text the draft predicts well
    assert chosen[20:60].count(0) >= 30  # ar steps, and probes
    assert all(n == 3 for n in chosen[-40:])


def test_a_probe_comes_sooner_where_drafting_is_only_a_little_slower():
    def ar_steps_before_the_first_probe(per_draft: float) -> int:
        adaptive = AdaptiveDrafts(costs(per_draft), prior=[0.05, 0.05, 0.05], rows=1)
        adaptive.started = True  # past the first step, which always drafts
        for step in range(100):
            n, _ = adaptive.choose([0], 100, most=3)
            if n:
                return step
        return 100

    # 1.05 expected tokens for 1.06 s: 1 % slower than an ar step; for 1.5 s: 30 % slower
    assert ar_steps_before_the_first_probe(0.06) == drafting.SOONEST_PROBE
    assert ar_steps_before_the_first_probe(0.5) == drafting.FIRST_PROBE


def test_resuming_after_ar_steps_pays_for_what_the_draft_has_not_read():
    # one draft costs 0.2 s more than an ar step and is accepted 30 % of the time: worth 1.3 tokens in 1.2 s; with
    # 30 tokens to read first (0.01 s each beyond the usual 2) the step costs 1.48 s
    c = StepCosts((32,), ((1.0, 1.2),), catch_up=(0.01,))
    adaptive = AdaptiveDrafts(c, prior=[0.3], rows=1)
    adaptive.started = True
    n, seconds = adaptive.choose([0], 100, most=1, unseen=2)
    assert n == 1 and seconds.tolist() == pytest.approx([1.0, 1.2])
    n, seconds = adaptive.choose([0], 100, most=1, unseen=30)
    assert n == 0 and seconds.tolist() == pytest.approx([1.0, 1.48])


def test_catch_up_costs_follow_the_context_like_the_steps():
    c = StepCosts((100, 200), ((1.0, 1.2), (2.0, 2.2)), catch_up=(0.01, 0.03))
    assert c.catch_up_seconds(12, 150) == pytest.approx(10 * 0.02)
    assert c.catch_up_seconds(2, 150) == 0.0
    assert c.catch_up_seconds(12, 300) == pytest.approx(10 * 0.05)  # along the last segment


def test_a_draft_whose_catch_up_costs_more_than_the_probe_budget_is_not_probed():
    # ar steps 1 s; one draft 1.1 s; the draft reads each missed token for 0.05 s: a probe after m ar steps loses
    # about 0.05 m s, more than PROBE_SHARE (3 %) of the m s before it
    def probes(catch_up: float) -> int:
        adaptive = AdaptiveDrafts(StepCosts((32,), ((1.0, 1.1),), catch_up=(catch_up,)), prior=[0.05], rows=1)
        adaptive.started = True
        count, unseen = 0, 2
        for _ in range(300):
            n, _ = adaptive.choose([0], 100, most=1, unseen=unseen)
            adaptive.observe([0], n, [0])
            count, unseen = count + n, 1 if n else unseen + 1
        return count

    assert probes(0.0) >= 4
    assert probes(0.05) == 0


def test_a_draft_that_is_surely_slower_stops_drafting_at_once():
    """The hysteresis band is for estimate noise: a first draft that always agrees, at a step that makes its two
    tokens 2 % slower than two ar steps, is known well enough to stop (a copy of the target as draft)."""
    adaptive = AdaptiveDrafts(costs(1.04, k=1), prior=[1.0], rows=1)
    chosen = []
    for _ in range(40):
        n, _ = adaptive.choose([0], 100, most=1)
        adaptive.observe([0], n, [n])
        chosen.append(n)
    assert chosen[:2] == [1, 0]  # the first step drafts; the next, knowing the rate, does not
    assert not any(a and b for a, b in zip(chosen[1:], chosen[2:]))  # then single probes, no runs of drafting


def test_no_room_for_drafts_is_an_ar_step_and_not_a_wait():
    adaptive = AdaptiveDrafts(costs(0.0), prior=[0.9, 0.9, 0.9], rows=1)
    assert adaptive.choose([0], 10, most=0)[0] == 0
    assert adaptive.ar_steps == 0


def test_a_drafting_row_keeps_drafting_while_that_is_only_a_little_slower():
    adaptive = AdaptiveDrafts(costs(0.06), prior=[0.05, 0.05, 0.05], rows=1)  # drafting modelled 1 % slower
    adaptive.started = True
    assert adaptive.choose([0], 100, most=3)[0] == 0
    adaptive.drafting = True
    assert adaptive.choose([0], 100, most=3)[0] >= 1
    slower = AdaptiveDrafts(costs(0.5), prior=[0.05, 0.05, 0.05], rows=1)  # 30 % slower
    slower.started = slower.drafting = True
    assert slower.choose([0], 100, most=3)[0] == 0


def test_an_engine_whose_drafts_do_not_pay_on_typical_text_runs_ar_steps_only():
    adaptive = AdaptiveDrafts(costs(0.5), prior=[0.2, 0.2, 0.2], rows=1)  # drafting 20 % slower at the prior
    chosen = []
    for _ in range(100):
        n, _ = adaptive.choose([0], 100, most=3)
        adaptive.observe([0], n, [0])
        chosen.append(n)
    assert chosen == [0] * 100  # no first draft, no probes
