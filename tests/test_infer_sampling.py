"""Logits processors keep exactly the right tokens; sampling is seeded and private; no
setting or logits (inf, NaN, out of range) make the sampler fail."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumenlm.infer import SamplingParams
from lumenlm.infer.sampling import (
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_MAX,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    greedy_fallback,
    make_generator,
    process_logits,
    sample_next,
)

PROBS = torch.tensor([[0.05, 0.5, 0.1, 0.25, 0.1]])  # ranks: 1, 3, {2, 4}, 0
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, {1}), (2, {1, 3}), (0, {0, 1, 2, 3, 4}), (None, {0, 1, 2, 3, 4}), (9, {0, 1, 2, 3, 4})],
)
def test_top_k(k: int | None, expected: set[int]) -> None:
    assert kept(apply_top_k(LOGITS, k)) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, {1}),
        (1e-9, {1}),
        (0.49, {1}),
        (0.51, {1, 3}),
        (0.74, {1, 3}),
        (0.76, {1, 3, 2, 4}),
        (0.94, {1, 3, 2, 4}),
        (0.96, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_smallest_set_reaching_p(p: float, expected: set[int]) -> None:
    # 2 and 4 tie at 0.1: at p=0.76 only one of them is needed; the sort keeps one
    # (stable order picks the lower index) -- so check the size and the sure members.
    got = kept(apply_top_p(LOGITS, p))
    if p == 0.76 or p == 0.94:
        assert {1, 3} < got <= expected and len(got) == (3 if p == 0.76 else 4)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (0.0, {0, 1, 2, 3, 4}),
        (0.49, {1, 3}),
        (0.51, {1}),
        (0.19, {1, 2, 3, 4}),
        (0.09, {0, 1, 2, 3, 4}),
        (1.0, {1}),
    ],
)
def test_min_p(m: float, expected: set[int]) -> None:
    assert kept(apply_min_p(LOGITS, m)) == expected


def test_repetition_penalty_ctrl_semantics() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_temperature_scales() -> None:
    assert torch.allclose(apply_temperature(LOGITS, 0.5), LOGITS * 2)


def test_processors_match_transformers() -> None:
    """Same kept sets as Hugging Face's warpers on random logits."""
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    ids = torch.randint(0, 300, (4, 20))
    seen = torch.zeros(4, 300, dtype=torch.bool).scatter(1, ids, True)
    ref = tr.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), ref)
    for ours, theirs in [
        (lambda x: apply_top_k(x, 17), tr.TopKLogitsWarper(17)),
        (lambda x: apply_top_p(x, 0.8), tr.TopPLogitsWarper(0.8)),
        (lambda x: apply_min_p(x, 0.1), tr.MinPLogitsWarper(0.1)),
    ]:
        a, b = ours(logits), theirs(ids, logits.clone())
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))


def test_sampling_frequencies_follow_filtered_distribution() -> None:
    params = SamplingParams(temperature=1.0, top_k=3)  # keeps 1, 3 and one of the 0.1 tokens
    logits = LOGITS.expand(20000, -1)
    got = sample_next(logits, params, make_generator(0))
    counts = torch.bincount(got, minlength=5).float() / got.numel()
    allowed = kept(process_logits(LOGITS, params))
    expected = torch.zeros(5)
    for i in allowed:
        expected[i] = PROBS[0, i]
    expected /= expected.sum()
    assert torch.allclose(counts, expected, atol=0.015)
    assert counts[0] == 0


def test_seeded_sampling_is_reproducible_and_private() -> None:
    logits = torch.randn(8, 100)
    params = SamplingParams(temperature=1.0)
    torch.manual_seed(123)
    a = sample_next(logits, params, make_generator(7))
    state = torch.get_rng_state()
    b = sample_next(logits, params, make_generator(7))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_greedy_and_degenerate_filters_equal_argmax() -> None:
    logits = torch.randn(16, 50)
    greedy = sample_next(logits, SamplingParams(temperature=0))
    assert torch.equal(greedy, logits.argmax(-1))
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=1.0)):
        assert torch.equal(sample_next(logits, params, make_generator(1)), greedy)


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=1.5),
        dict(min_p=-0.1),
        dict(top_k=-2),
        dict(repetition_penalty=0),
        dict(max_new_tokens=-1),
        dict(temperature=math.inf),
        dict(stop=[""]),
    ],
)
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_denormal_temperature_is_greedy_and_huge_seed_is_accepted() -> None:
    from lumenlm.infer.sampling import make_generator

    assert SamplingParams(temperature=1e-40).greedy
    assert not SamplingParams(temperature=0.5).greedy
    a = torch.rand(3, generator=make_generator(2**64 + 5))
    b = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- extremes

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
EXTREME = [0.0, -0.0, 5e-324, 1e-300, 1e-40, 1e-5, 1.0, 2.0, 1e30, 1e300, math.inf, -math.inf]
any_float = st.one_of(
    st.sampled_from([*EXTREME, -1.0, math.nan]), st.floats(allow_nan=True, allow_infinity=True)
)


def _setting(name: str) -> st.SearchStrategy:
    """Values for one SamplingParams field: mostly valid ones (edges included), some not."""
    lo, hi = {
        "temperature": (0.0, TEMPERATURE_MAX),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "repetition_penalty": REPETITION_PENALTY_RANGE,
    }[name]
    return st.one_of(st.sampled_from([lo, hi]), st.floats(lo, hi), any_float)


params_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "temperature": _setting("temperature"),
        "top_p": _setting("top_p"),
        "min_p": _setting("min_p"),
        "repetition_penalty": _setting("repetition_penalty"),
        "top_k": st.one_of(st.none(), st.integers(-3, 10**12)),
    },
)
logit_value = st.one_of(
    st.floats(-30, 30), st.sampled_from([math.inf, -math.inf, math.nan, 3e38, -3e38, 1e30])
)


@FUZZ
@given(
    kw=params_kwargs,
    rows=st.lists(st.lists(logit_value, min_size=7, max_size=7), min_size=1, max_size=4),
    seen_bits=st.integers(0, 2**28 - 1),
    seed=st.integers(-(2**70), 2**70),
)
def test_any_settings_and_logits_never_crash_the_sampler(
    kw: dict, rows: list[list[float]], seen_bits: int, seed: int
) -> None:
    """Out-of-range settings are refused by SamplingParams (ValueError) and nothing else;
    in range, every row gets a token of the vocabulary whatever its logits (inf, NaN)."""
    try:
        params = SamplingParams(**kw)
    except ValueError:
        bad = [
            k
            for k, v in kw.items()
            if (k == "top_k" and v is not None and v < 0) or (k != "top_k" and not _in_range(k, v))
        ]
        assert bad, f"refused valid settings {kw}"
        return
    for k, v in kw.items():
        assert k == "top_k" or _in_range(k, v), f"accepted {k}={v}"
    logits = torch.tensor(rows, dtype=torch.float32)
    b, v = logits.shape
    seen = torch.tensor([[(seen_bits >> (i * v + j)) & 1 for j in range(v)] for i in range(b)])
    gens = [make_generator(seed + i) for i in range(b)]
    tokens = sample_next(logits, params, gens, seen.bool())
    assert tokens.shape == (b,) and all(0 <= t < v for t in tokens.tolist())
    processed = process_logits(logits, params, seen.bool())
    for i, t in enumerate(tokens.tolist()):
        probs = torch.softmax(processed[i], -1)
        if torch.isfinite(probs).all() and probs.sum() > 0:
            assert probs[t] > 0  # a real distribution: the token is one the filters kept
        else:
            assert t == int(greedy_fallback(logits[i : i + 1], processed[i : i + 1]))


def _in_range(name: str, value: float) -> bool:
    lo, hi = {
        "temperature": (0.0, TEMPERATURE_MAX),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "repetition_penalty": REPETITION_PENALTY_RANGE,
    }[name]
    return lo <= value <= hi  # False for NaN


@pytest.mark.parametrize("penalty", [5e-324, 1e-300, 0.0, -1.0, 1e300, math.inf, math.nan])
def test_red_team_repetition_penalties_are_refused(penalty: float) -> None:
    with pytest.raises(ValueError, match=r"repetition_penalty must be in \[0.01, 100\]"):
        SamplingParams(repetition_penalty=penalty)


def test_greedy_fallback_prefers_processed_then_raw_logits() -> None:
    nan, inf = math.nan, math.inf
    raw = torch.tensor([[1.0, 5.0, 2.0], [1.0, 5.0, 2.0], [nan, 4.0, nan], [nan, nan, nan]])
    processed = torch.tensor(
        [[nan, 1.0, 3.0], [-inf, -inf, -inf], [nan, nan, nan], [nan, -inf, nan]]
    )
    assert greedy_fallback(raw, processed).tolist() == [2, 1, 1, 0]
    weird = torch.tensor([[0.0, inf, 1.0, inf]])  # softmax of this is NaN
    assert sample_next(weird, SamplingParams(), make_generator(0)).tolist() == [1]


def test_openai_bias_and_penalties_follow_their_formulas() -> None:
    """logit_bias adds; presence subtracts once per generated token, frequency per count;
    both come before the temperature (vLLM's order), and -100 bans a token."""
    from lumenlm.infer.sampling import process_logits

    torch.manual_seed(0)
    logits = torch.randn(2, 10)
    counts = torch.zeros(2, 10, dtype=torch.long)
    counts[0, 3], counts[1, 5] = 2, 1
    p = SamplingParams(
        temperature=2.0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={7: 1.5, 1: -100}
    )
    got = process_logits(logits, p, counts=counts)
    want = logits.clone()
    want[:, 7] += 1.5
    want[:, 1] -= 100
    want -= 0.25 * counts + 0.5 * (counts > 0)
    torch.testing.assert_close(got, want / 2.0)
    assert sample_next(logits, SamplingParams(temperature=0, logit_bias={4: 100})).tolist() == [
        4,
        4,
    ]


def test_greedy_pick_equals_torch_reference_with_ties_nan_and_inf() -> None:
    """Greedy's argmax (numpy's on CPU) picks what the torch reference picks: NaN as
    -inf, +inf largest, the first of tied maxima; rows of -inf/NaN only give token 0."""
    from lumenlm.infer.sampling import NEG_INF, _nan_argmax

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        rows, vocab = 1 + trial % 9, 1 + (trial * 37) % 300
        x = torch.randint(-3, 4, (rows, vocab), generator=g).float()  # many ties
        special = torch.rand(rows, vocab, generator=g)
        x[special < 0.05] = float("nan")
        x[(special > 0.05) & (special < 0.08)] = float("inf") if trial % 3 == 0 else NEG_INF
        if trial % 5 == 0:
            x[0] = float("nan") if trial % 2 else NEG_INF  # nothing above -inf
        for t in (x, x.double(), x[:, ::2] if vocab > 1 else x):
            ref = torch.nan_to_num(t, nan=NEG_INF, neginf=NEG_INF).argmax(dim=-1)
            assert torch.equal(_nan_argmax(t), ref), (trial, t)
    with torch.inference_mode():
        logits = torch.randn(3, 50)
        assert torch.equal(_nan_argmax(logits), logits.argmax(-1))
