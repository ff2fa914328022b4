"""Speculative sampling keeps the target's distribution: the empirical joint distribution of the first two new
tokens matches the exact one (computed from the target's own probabilities) within a total-variation bound
derived from the sample size; the same check fails for a deliberately wrong acceptance rule. Then `warp`
(temperature, top-k, top-p) and the checks of SamplingParams on their own, without a model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from pard_export.errors import GenerationError
from pard_export.runtime import Session, decoding, sampling
from pard_export.runtime.sampling import SamplingParams, warp

VOCAB = 64
PROMPT = [7, 21, 33]
SAMPLES = 12_000
BATCH = 400
DELTA = 1e-6  # chance that a correct sampler fails the bound
STOPPED = -1  # second "token" of a sequence that ended with EOS after one token


K = 4
NEW_TOKENS = K + 2  # room for K drafts in the first step, so the first two tokens come from one multi-draft step


@pytest.fixture(scope="module")
def small_vocab_models(tmp_path_factory):
    """A target and two drafts: a copy of the target (its first draft is often right, its masks are
    untrained) and an unrelated random model (mostly rejected: the residual distribution does the work)."""
    root = tmp_path_factory.mktemp("vocab64")
    tokenizer = tiny_models.make_word_tokenizer(VOCAB)
    size = dict(tiny_models.TARGET_SIZE)

    def model(name, seed, mask_id=tiny_models.MASK):
        return tiny_models.make_model(
            root / name, "llama", size, seed=seed, tokenizer=tokenizer, mask_id=mask_id, vocab_rows=VOCAB
        )

    return model("target", 5, mask_id=None), {"copy": model("copy", 5), "random": model("random", 9)}


@pytest.fixture(scope="module")
def sessions(small_vocab_models, engine):
    target, drafts = small_vocab_models
    calibration = tiny_models.cpu_like_calibration(K)  # adaptive pard drafts, a number of drafts that changes
    opened = {
        kind: Session(engine(target, draft, K, with_ar_draft=True), calibration=calibration)
        for kind, draft in drafts.items()
    }
    yield opened
    for s in opened.values():
        s.close()


def _warp_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """An independent implementation (sort based) of transformers' warper order: temperature, top-k, then top-p
    over the renormalised top-k distribution."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = probs.argsort(descending=True)
    sorted_probs = probs[order].clone()
    if top_k:
        sorted_probs[top_k:] = 0
        sorted_probs /= sorted_probs.sum()
    mass_before = sorted_probs.cumsum(0) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0
    kept = torch.zeros_like(probs)
    kept[order] = sorted_probs
    return kept / kept.sum()


def exact_joint(target_dir, temperature: float, top_k: int, top_p: float) -> dict[tuple[int, int], float]:
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        first = _warp_reference(model(torch.tensor([PROMPT])).logits[0, -1], temperature, top_k, top_p)
        seconds = model(torch.tensor([PROMPT + [x] for x in range(VOCAB)])).logits[:, -1]
    joint = {}
    for x1 in range(VOCAB):
        if first[x1] == 0:
            continue
        if x1 == tiny_models.EOS:
            joint[(x1, STOPPED)] = float(first[x1])
            continue
        second = _warp_reference(seconds[x1], temperature, top_k, top_p)
        for x2 in torch.nonzero(second).flatten().tolist():
            joint[(x1, x2)] = float(first[x1] * second[x2])
    return joint


def sample_pairs(session: Session, **settings) -> list[tuple[int, int]]:
    pairs = []
    for call in range(SAMPLES // BATCH):
        for r in session.generate_batch([PROMPT] * BATCH, max_new_tokens=NEW_TOKENS, seed=call, **settings):
            pairs.append((r.token_ids[0], r.token_ids[1] if len(r.token_ids) > 1 else STOPPED))
    return pairs


def tv_and_bound(pairs, joint) -> tuple[float, float]:
    n = len(pairs)
    counts: dict[tuple[int, int], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    cells = set(joint) | set(counts)
    tv = 0.5 * sum(abs(counts.get(c, 0) / n - joint.get(c, 0.0)) for c in cells)
    # E[TV] <= 1/2 sum sqrt(p(1-p)/n); one sample moves TV by at most 1/n (McDiarmid) -> + sqrt(ln(1/delta)/2n)
    expected = 0.5 * sum(math.sqrt(p * (1 - p) / n) for p in joint.values())
    return tv, expected + math.sqrt(math.log(1 / DELTA) / (2 * n))


CONCENTRATED = dict(temperature=0.8, top_k=12)  # ~100 cells: a tight bound, so the check has power
SETTINGS = [
    dict(CONCENTRATED, mode="pard"),  # adaptive: the number of drafts per step follows the estimates
    dict(CONCENTRATED, mode="pard-fixed"),
    dict(CONCENTRATED, mode="pard", draft_sampling=True),
    dict(temperature=0.7, top_k=12, top_p=0.9, mode="pard", draft_sampling=True),
    dict(temperature=1.0, mode="pard", draft_sampling=True),  # the whole vocabulary (4000 cells, a loose bound)
    dict(CONCENTRATED, mode="ar-draft", draft_sampling=True),
    dict(CONCENTRATED, mode="ar-draft"),
    dict(CONCENTRATED, mode="ar"),
]


@pytest.mark.parametrize("draft", ["copy", "random"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_distribution_matches_the_target(sessions, small_vocab_models, settings, draft):
    joint = exact_joint(
        small_vocab_models[0], settings["temperature"], settings.get("top_k", 0), settings.get("top_p", 1.0)
    )
    pairs = sample_pairs(sessions[draft], **settings)
    tv, bound = tv_and_bound(pairs, joint)
    print(f"{draft} draft, {settings}: TV {tv:.4f} <= bound {bound:.4f} ({len(pairs)} samples, {len(joint)} cells)")
    assert tv <= bound


@pytest.mark.parametrize("draft", ["copy", "random"])
@pytest.mark.parametrize("draft_sampling", [False, True])
def test_the_check_catches_a_wrong_acceptance_rule(sessions, small_vocab_models, monkeypatch, draft, draft_sampling):
    def accept_every_draft(drafts, q, target_logits, params, rng):
        from pard_export.runtime.sampling import sample, warp

        return len(drafts), sample(warp(target_logits[len(drafts)], params), rng)

    monkeypatch.setattr(decoding, "verify_sampled", accept_every_draft)
    joint = exact_joint(small_vocab_models[0], CONCENTRATED["temperature"], CONCENTRATED["top_k"], 1.0)
    pairs = sample_pairs(sessions[draft], **CONCENTRATED, draft_sampling=draft_sampling, mode="pard-fixed")
    tv, bound = tv_and_bound(pairs, joint)
    print(f"accept-every-draft, {draft} draft, draft_sampling={draft_sampling}: TV {tv:.4f} > bound {bound:.4f}")
    assert tv > bound


def test_same_seed_same_output(sessions):
    session = sessions["copy"]
    first = session.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=11)
    again = session.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=11)
    others = {tuple(session.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=s).token_ids) for s in range(5)}
    assert first.token_ids == again.token_ids
    assert len(others) > 1


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
    ],
)
def test_bad_sampling_settings(sessions, settings, match):
    session = sessions["copy"]
    with pytest.raises(GenerationError, match=match):
        session.generate(PROMPT, max_new_tokens=4, **settings)
    assert len(session.generate(PROMPT, max_new_tokens=4).token_ids) == 4


# warp on its own

FIVE_LOGITS = np.array([2.0, -1.0, 0.5, 3.0, 0.0])  # id 3 is the most likely, then 0, 2, 4, 1


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def warped(logits, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    return warp(np.asarray(logits, dtype=np.float64), SamplingParams(temperature, top_p, top_k))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_warp_is_the_softmax_of_the_logits_over_the_temperature(temperature):
    probs = warp(FIVE_LOGITS.astype(np.float32), SamplingParams(temperature=temperature))
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, softmax(FIVE_LOGITS / temperature), rtol=1e-6)


def test_top_p_of_one_and_top_k_of_zero_keep_every_id():
    np.testing.assert_allclose(warped(FIVE_LOGITS, top_k=0, top_p=1.0), softmax(FIVE_LOGITS), rtol=1e-12)


def test_a_tiny_top_p_keeps_only_the_most_likely_id():
    assert warped(FIVE_LOGITS, top_p=1e-9).tolist() == [0, 0, 0, 1, 0]


@pytest.mark.parametrize(
    "top_p,kept", [(0.25, 1), (0.25 + 1e-9, 2), (0.5, 2), (0.5 + 1e-9, 3), (0.75, 3), (0.75 + 1e-9, 4)]
)
def test_top_p_keeps_the_fewest_ids_whose_mass_reaches_it(top_p, kept):
    """Four equal logits: each id holds exactly 1/4, so the cumulative masses 1/4, 1/2, 3/4 are exact. Of equal
    ids, the lower ones are kept."""
    assert warped(np.zeros(4), top_p=top_p).tolist() == [1 / kept] * kept + [0.0] * (4 - kept)


def test_top_p_breaks_ties_towards_the_lower_ids():
    probs = warped([0.0, 1.0, 1.0, 1.0, 0.0], top_p=0.5)  # ids 1, 2, 3 hold 0.30 each: two of them reach 0.5
    assert probs.tolist() == [0.0, 0.5, 0.5, 0.0, 0.0]


def test_top_k_of_one_keeps_only_the_most_likely_id():
    assert warped(FIVE_LOGITS, top_k=1).tolist() == [0, 0, 0, 1, 0]


def test_top_k_keeps_the_k_most_likely_ids_renormalised():
    expected = np.zeros(5)
    expected[[3, 0]] = softmax(FIVE_LOGITS[[3, 0]])
    np.testing.assert_allclose(warped(FIVE_LOGITS, top_k=2), expected, rtol=1e-12)


@pytest.mark.parametrize("top_k", [5, 6, 1000])
def test_a_top_k_as_large_as_the_vocabulary_keeps_every_id(top_k):
    np.testing.assert_allclose(warped(FIVE_LOGITS, top_k=top_k), softmax(FIVE_LOGITS), rtol=1e-12)


def test_top_k_keeps_every_id_tied_with_the_kth():
    """transformers' TopKLogitsWarper does the same: drop what is below the k-th logit."""
    assert warped([1.0, 1.0, 1.0, 0.0], top_k=2).tolist() == [1 / 3, 1 / 3, 1 / 3, 0.0]


def test_top_p_applies_to_the_top_k_distribution():
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    assert (warped(logits, top_p=0.5) > 0).tolist() == [True, True, False, False]  # 0.4 alone does not reach 0.5
    assert warped(logits, top_k=2, top_p=0.5).tolist() == [1.0, 0.0, 0.0, 0.0]  # 0.4 / 0.7 does


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7),
        dict(temperature=1.3, top_k=7),
        dict(temperature=1.0, top_p=0.6),
        dict(temperature=0.5, top_k=20, top_p=0.9),
    ],
)
def test_warp_matches_a_sort_based_reference(settings):
    logits = np.random.default_rng(0).normal(0, 2, size=50)
    expected = _warp_reference(
        torch.tensor(logits), settings["temperature"], settings.get("top_k", 0), settings.get("top_p", 1.0)
    ).numpy()
    probs = warped(logits, **settings)
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-15)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scale,candidates_suffice", [(3.0, True), (0.01, False)])
def test_top_p_over_a_large_vocabulary_equals_a_full_sort(scale, candidates_suffice):
    """Past _TOP_P_CANDIDATES ids, top-p sorts only the most likely ones when they hold enough mass (a peaked
    distribution), else the whole vocabulary (a flat one)."""
    logits = np.random.default_rng(1).normal(0, scale, size=3 * sampling._TOP_P_CANDIDATES)
    top_p = 0.9
    assert (np.sort(softmax(logits))[-sampling._TOP_P_CANDIDATES :].sum() >= top_p) == candidates_suffice
    expected = _warp_reference(torch.tensor(logits), 1.0, 0, top_p).numpy()
    np.testing.assert_allclose(warped(logits, top_p=top_p), expected, rtol=1e-9, atol=1e-15)


def test_warp_treats_each_row_of_a_batch_on_its_own():
    rows = np.random.default_rng(2).normal(0, 3, size=(3, 40))
    rows[1] += 100.0  # rows on different scales: a max or a cut shared across rows would show
    settings = dict(temperature=0.8, top_k=10, top_p=0.7)
    batch = warped(rows, **settings)
    assert batch.shape == (3, 40)
    for row, probs in zip(rows, batch):
        np.testing.assert_allclose(probs, warped(row, **settings), rtol=1e-12)
    assert ((batch > 0).sum(-1) <= 10).all()


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.0 + 1e-9), "top_p"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.0), "top_k"),
    ],
)
def test_sampling_params_refuse_bad_settings(settings, match):
    with pytest.raises(GenerationError, match=match):
        SamplingParams(**settings)


def test_sampling_params_accept_the_edges_of_their_ranges():
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0)
    assert params.greedy and not SamplingParams(temperature=1e-6, top_p=1e-9, top_k=1).greedy
