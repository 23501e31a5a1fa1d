"""Paired statistics for paper claims: known answers for Wilson, exact McNemar, the paired interval and verdicts."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from advneurons.evaluation.paired_stats import (
    decide,
    mcnemar_exact,
    paired_difference_interval,
    wilson_interval,
)


def paired(both: int, a_only: int, b_only: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of models A and B with the given 2x2 counts, in shuffled image order."""
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    order = np.random.default_rng(seed).permutation(a.size)
    return a[order], b[order]


# ---- Wilson interval ----


def test_wilson_matches_hand_computed_values():
    # Hand-computed (4-5 significant digits) from the score formula, and 0/10's well-known upper bound 0.2775.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(5, 10, confidence=0.9) == pytest.approx((0.2693, 0.7307), abs=1e-4)


def test_wilson_bounds_invert_the_score_test():
    # Independent of the closed form: each bound p solves |k/n - p| = z * sqrt(p (1 - p) / n).
    k, n, z = 37, 120, norm.ppf(0.995)
    for bound in wilson_interval(k, n, confidence=0.99):
        assert abs(k / n - bound) == pytest.approx(z * math.sqrt(bound * (1 - bound) / n), rel=1e-9)


def test_wilson_edge_cases():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


# ---- exact McNemar ----


@pytest.mark.parametrize("a_only, b_only", [(10, 2), (2, 10), (7, 7), (14, 7), (0, 5), (1, 0), (30, 45)])
def test_mcnemar_agrees_with_scipy_binomtest(a_only, b_only):
    result = mcnemar_exact(*paired(50, a_only, b_only, 20))
    k, n = a_only, a_only + b_only
    assert (result.a_only, result.b_only) == (a_only, b_only)
    assert result.p_two_sided == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-12)
    assert result.p_a_better == pytest.approx(binomtest(k, n, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert result.p_b_better == pytest.approx(binomtest(k, n, 0.5, alternative="less").pvalue, rel=1e-12)


def test_mcnemar_hand_example():
    # b=10, c=2: two-sided p = 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 0.03857.
    result = mcnemar_exact(*paired(30, 10, 2, 8))
    assert result.p_two_sided == pytest.approx(2 * 79 / 4096)
    assert result.p_a_better == pytest.approx(79 / 4096)  # P(X >= 10) = P(X <= 2) by symmetry
    assert result.n == 50
    assert (result.a_accuracy, result.b_accuracy) == (pytest.approx(0.8), pytest.approx(0.64))


def test_mcnemar_without_discordant_images_is_not_significant():
    a = np.array([True, False, True, True])
    result = mcnemar_exact(a, a.copy())
    assert (result.p_two_sided, result.p_a_better, result.p_b_better) == (1.0, 1.0, 1.0)


def test_describe_is_compact_and_exact():
    result = mcnemar_exact(*paired(250, 14, 7, 89))
    assert result.describe() == "A 73.3% vs B 71.4% on 360 paired images; discordant 14 vs 7; exact McNemar p=0.19"


@pytest.mark.parametrize(
    "a, b",
    [([True, False], [True]), ([], []), ([0.7, 0.2], [1, 0]), ([[True, False]], [[True, False]])],
)
def test_mcnemar_rejects_unpaired_or_non_boolean_input(a, b):
    with pytest.raises(ValueError):
        mcnemar_exact(np.array(a), np.array(b))


# ---- paired difference interval ----


def test_paired_difference_interval_hand_example():
    # b=10, c=2, n=100: d=0.08, var=(0.12 - 0.0064)/100, half = 1.959964 * 0.0337046 + 0.01 = 0.0760598.
    low, high = paired_difference_interval(*paired(60, 10, 2, 28))
    assert (low, high) == (pytest.approx(0.0039402, abs=1e-6), pytest.approx(0.1560598, abs=1e-6))


def test_paired_difference_interval_of_identical_vectors_is_the_continuity_band():
    a = np.arange(40) % 3 == 0
    assert paired_difference_interval(a, a) == (pytest.approx(-1 / 40), pytest.approx(1 / 40))


# ---- verdicts ----

A_CLEARLY_BETTER = dict(both=250, a_only=40, b_only=10, neither=100)  # 400 images, A +7.5 points
TIE = dict(both=250, a_only=10, b_only=10, neither=130)
B_CLEARLY_BETTER = dict(both=250, a_only=10, b_only=40, neither=100)


@pytest.mark.parametrize(
    "counts, claim, label",
    [
        (A_CLEARLY_BETTER, "a_better", "supported"),
        (A_CLEARLY_BETTER, "b_better", "contradicted"),
        (A_CLEARLY_BETTER, "a_not_worse", "supported"),
        (A_CLEARLY_BETTER, "about_equal", "contradicted"),
        (TIE, "a_better", "within noise"),
        (TIE, "b_better", "within noise"),
        (TIE, "a_not_worse", "within noise"),  # 95% CI [-2.4, +2.4] points reaches below -2
        (TIE, "about_equal", "within noise"),
        (B_CLEARLY_BETTER, "a_better", "contradicted"),
        (B_CLEARLY_BETTER, "b_better", "supported"),
        (B_CLEARLY_BETTER, "a_not_worse", "contradicted"),
        (B_CLEARLY_BETTER, "about_equal", "contradicted"),
    ],
)
def test_decide_constructed_cases(counts, claim, label):
    verdict = decide(*paired(**counts), claim)
    assert verdict.label == label, verdict.statistic


def test_decide_statistic_names_test_counts_and_p():
    verdict = decide(*paired(250, 14, 7, 89), "a_better")
    assert verdict.label == "within noise"
    # One-sided p = P(X >= 14 | 21, 1/2) = 198440 / 2^21 = 0.0946.
    assert verdict.statistic.startswith("exact McNemar: 14 vs 7 discordant, one-sided p=0.095")
    assert verdict.result.a_only == 14


def test_a_not_worse_tolerates_a_deficit_within_the_margin():
    # B is nominally 0.1 points better on 2000 images, but the interval excludes a 2-point deficit.
    verdict = decide(*paired(1500, 10, 12, 478), "a_not_worse")
    assert verdict.label == "supported", verdict.statistic
    # With a margin tighter than the interval's lower end, the same data can no longer support the claim.
    assert decide(*paired(1500, 10, 12, 478), "a_not_worse", margin=0.002).label == "within noise"


def test_a_not_worse_is_within_noise_on_few_images():
    assert decide(*paired(20, 2, 4, 14), "a_not_worse").label == "within noise"


def test_about_equal_needs_enough_images():
    large = np.arange(1000) % 4 != 0
    tiny = np.arange(20) % 4 != 0
    assert decide(large, large.copy(), "about_equal").label == "supported"
    assert decide(tiny, tiny.copy(), "about_equal").label == "within noise"  # CI +/-5 points > 2-point margin
    assert decide(*paired(**TIE), "about_equal", margin=0.03).label == "supported"


def test_about_equal_not_contradicted_when_interval_straddles_margin():
    # A +3 points on 400 images: significant, but the interval still reaches inside the 2-point margin.
    verdict = decide(*paired(250, 20, 8, 122), "about_equal")
    low, high = paired_difference_interval(*paired(250, 20, 8, 122))
    assert low < 0.02 < high
    assert verdict.label == "within noise", verdict.statistic


def test_decide_rejects_unknown_claim_and_bad_parameters():
    a, b = paired(**TIE)
    with pytest.raises(ValueError, match="unknown claim"):
        decide(a, b, "a_much_better")
    with pytest.raises(ValueError):
        decide(a, b, "a_better", alpha=0)
    with pytest.raises(ValueError):
        decide(a[:-1], b, "a_better")


# ---- pooled repeats ----


def repeats_against(other: np.ndarray, a_only: int, b_only: int, k: int) -> list[np.ndarray]:
    """k repeats of a model that each fix a_only of `other`'s errors and break b_only of its successes."""
    wrong, right = np.flatnonzero(~other), np.flatnonzero(other)
    repeats = []
    for r in range(k):
        repeat = other.copy()
        repeat[wrong[r * a_only : (r + 1) * a_only]] = True
        repeat[right[r * b_only : (r + 1) * b_only]] = False
        repeats.append(repeat)
    return repeats


def test_repeats_are_averaged_per_image_not_counted_as_images():
    from advneurons.evaluation.paired_stats import sign_test

    other = np.arange(100) < 50
    same = repeats_against(other, a_only=8, b_only=2, k=1) * 3  # three repeats giving the same images right
    mean = np.mean(same, axis=0)
    # counted as 300 paired images the 24 vs 6 discordant pairs would read p = 0.0007; they are 10 images
    verdict = sign_test(mean, other, "a_greater")
    assert verdict.p_claimed == pytest.approx(binomtest(8, 10, 0.5, alternative="greater").pvalue)
    assert verdict.label == "within noise" and "of 100 paired units" in verdict.statistic
    # repeats that differ on different images: each image's mean still counts once
    spread = np.mean(repeats_against(other, a_only=8, b_only=2, k=3), axis=0)
    assert sign_test(spread, other, "a_greater").p_claimed == pytest.approx(
        binomtest(24, 30, 0.5, alternative="greater").pvalue)
    from advneurons.evaluation import paired_stats

    assert not hasattr(paired_stats, "decide_pooled") and not hasattr(paired_stats, "decide_by_intervals")


# ------------------------------------------------------------------------- claims over several units
def test_holm_matches_the_textbook_step_down():
    from advneurons.evaluation.paired_stats import holm

    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_decide_units_reads_k_of_n_with_holm():
    from advneurons.evaluation.paired_stats import UnitTest, decide_units

    def units(claimed, against=None):
        against = against or [1.0] * len(claimed)
        return [UnitTest(f"layer{i}", c, a, f"p={c}") for i, (c, a) in enumerate(zip(claimed, against))]

    assert decide_units(units([1e-4] * 3)).label == "supported"
    # 18 of 21 layers significantly lower, 3 not: partly (the old all-or-nothing rule read "contradicted")
    partly = decide_units(units([1e-6] * 18 + [0.4] * 3), unit_word="layers")
    assert partly.label == "partly" and partly.statistic.startswith("18 of 21 layers significant")
    assert "Holm-Bonferroni over the 21 layers" in partly.rule
    # 0.02 and 0.03 are below alpha on their own but not after Holm over 3 units (0.02 x 3 = 0.06)
    assert decide_units(units([0.02, 0.03, 0.5])).label == "within noise"
    assert decide_units(units([1e-6, 0.5], [1.0, 1e-4])).label == "contradicted"
    with pytest.raises(ValueError):
        decide_units([])


def test_sign_wilcoxon_and_binomial_tests_match_known_answers():
    from advneurons.evaluation.paired_stats import binomial_vs_threshold, mcnemar_exact, sign_test, wilcoxon_test

    a, b = np.array([1.0] * 9 + [0.0] + [0.5] * 5), np.array([0.0] * 9 + [1.0] + [0.5] * 5)
    test = sign_test(a, b, "a_greater")
    assert test.p_claimed == pytest.approx(11 / 1024)  # P(X >= 9), X ~ Binomial(10, 1/2); 5 ties dropped
    assert test.label == "supported" and sign_test(a, b, "a_less").label == "contradicted"
    # on 0/1 results the sign test is the exact McNemar test
    x, y = a.astype(bool), b.astype(bool)
    assert test.p_claimed == pytest.approx(mcnemar_exact(x, y).p_a_better)
    # Wilcoxon signed-rank, exact null distribution for n = 5 without ties: all positive -> p = 1/32
    assert wilcoxon_test(np.arange(1.0, 6.0), 0.0, "a_greater").p_claimed == pytest.approx(1 / 32)
    assert wilcoxon_test(np.arange(1.0, 6.0), 0.0, "a_greater").label == "supported"
    assert wilcoxon_test([1.0, 1.0], [1.0, 1.0]).label == "within noise"  # no differences at all
    # 0 of 10 against a threshold of one half: P(X <= 0) = 1/1024
    below = binomial_vs_threshold(0, 10, 0.5, "below")
    assert below.p_claimed == pytest.approx(1 / 1024) and below.label == "supported"
    assert binomial_vs_threshold(10, 10, 0.5, "below").label == "contradicted"


def test_every_mcnemar_verdict_states_its_rule():
    a, b = np.array([True] * 30 + [False] * 10), np.array([False] * 30 + [False] * 10)
    verdict = decide(a, b, "a_better")
    assert "exact McNemar" in verdict.rule and "one-sided (A more accurate than B)" in verdict.rule
    assert "interval" in decide(a, b, "about_equal").rule
