"""Paired significance tests for paper claims that compare two models' accuracies on the same test images.

When two models are evaluated on the same images, most images are classified the same way by both, and only the
discordant ones (right for one model, wrong for the other) carry information about which model is better. Treating
the two accuracies as independent binomial samples ignores that pairing and badly overstates the noise; a bare
`acc_a > acc_b` ignores the noise altogether. So claims are decided with the exact McNemar test (a binomial test
on the discordant counts) and a confidence interval for the paired accuracy difference A - B.

`decide` maps a claim to one of three verdicts:

- "supported": the data back the claim beyond sampling noise;
- "contradicted": the data significantly go against it;
- "within noise": this many images cannot tell either way.

The exact rules for each claim are in `decide`'s docstring; every Verdict carries its rule in words (`rule`).

A claim over several units (attack columns, layers, classes) tests each unit on its own and combines them with
`decide_units` (Holm-Bonferroni; "partly" when some units hold and none goes against). Repeats (random channel
draws) are averaged per image and compared with `sign_test` (exact, scipy binomtest); per-channel values with
`wilcoxon_test` (scipy's Wilcoxon signed-rank); an accuracy against a fixed threshold with `binomial_vs_threshold`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLAIMS = ("a_better", "b_better", "a_not_worse", "about_equal")
LABELS = ("supported", "contradicted", "within noise")


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    from scipy.stats import norm  # here, not at the top: every evaluation step imports this module

    return float(norm.ppf(1 - (1 - confidence) / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n; (nan, nan) when n == 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 or 1; set it so rounding does not leave 1e-17 or 0.9999999999999999.
    low = 0.0 if successes == 0 else center - half_width
    high = 1.0 if successes == n else center + half_width
    return (low, high)


def _as_correct_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d per-image correctness vector, got shape {array.shape}")
    if array.dtype != bool:
        # Refuse accuracies or logits passed by mistake: bool() would silently turn them into "correct".
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1 per image, got values such as {array[:3]}")
        array = array.astype(bool)
    return array


def _paired_vectors(a_correct, b_correct) -> tuple[np.ndarray, np.ndarray]:
    a = _as_correct_vector(a_correct, "a_correct")
    b = _as_correct_vector(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"paired tests need both models scored on the same images: got {a.size} vs {b.size} results")
    return a, b


@dataclass(frozen=True)
class McNemarResult:
    n: int  # paired images
    a_accuracy: float
    b_accuracy: float
    a_only: int  # images A gets right and B gets wrong
    b_only: int  # images B gets right and A gets wrong
    p_two_sided: float
    p_a_better: float  # one-sided: A more accurate than B
    p_b_better: float  # one-sided: B more accurate than A

    def describe(self) -> str:
        pairs = f"{self.n} paired images"
        return (
            f"A {self.a_accuracy:.1%} vs B {self.b_accuracy:.1%} on {pairs}; "
            f"discordant {self.a_only} vs {self.b_only}; exact McNemar p={self.p_two_sided:.2g}"
        )


def mcnemar_exact(a_correct, b_correct) -> McNemarResult:
    """Exact McNemar test: under "A and B equally accurate" A-only ~ Binomial(A-only + B-only, 1/2)."""
    from scipy.stats import binom

    a, b = _paired_vectors(a_correct, b_correct)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    if discordant == 0:
        p_two_sided = p_a_better = p_b_better = 1.0
    else:
        p_two_sided = min(1.0, 2 * float(binom.cdf(min(a_only, b_only), discordant, 0.5)))
        p_a_better = float(binom.sf(a_only - 1, discordant, 0.5))  # P(X >= a_only)
        p_b_better = float(binom.cdf(a_only, discordant, 0.5))  # P(X <= a_only) = P(discordant - X >= b_only)
    return McNemarResult(
        n=int(a.size),
        a_accuracy=float(a.mean()),
        b_accuracy=float(b.mean()),
        a_only=a_only,
        b_only=b_only,
        p_two_sided=p_two_sided,
        p_a_better=p_a_better,
        p_b_better=p_b_better,
    )


def paired_difference_interval(a_correct, b_correct, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval for accuracy(A) - accuracy(B) on paired images.

    Wald interval for paired proportions with a continuity correction of 1/n (Fleiss): with d = (a_only -
    b_only) / n and variance ((a_only + b_only) / n - d^2) / n, the interval is d -/+ (z * sqrt(variance) + 1/n),
    clipped to [-1, 1]. Chosen for being simple and explicit; the 1/n term keeps it from collapsing to a point
    when there are few or no discordant images (identical vectors give [-1/n, 1/n], not [0, 0]).
    """
    a, b = _paired_vectors(a_correct, b_correct)
    n = a.size
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    difference = (a_only - b_only) / n
    variance = max(0.0, ((a_only + b_only) / n - difference**2) / n)
    half_width = _z(confidence) * math.sqrt(variance) + 1 / n
    return (max(-1.0, difference - half_width), min(1.0, difference + half_width))


@dataclass(frozen=True)
class Verdict:
    label: str  # one of LABELS
    statistic: str  # the test, counts and p-value or interval behind the label
    result: McNemarResult
    rule: str = ""  # the decision rule in words (test, threshold, direction, what was compared)


def mcnemar_rule(claim: str, alpha: float = 0.05, margin: float = 0.02, what: str = "A vs B") -> str:
    """The rule `decide` applies to `claim`, in words."""
    base = f"exact McNemar test of {what} on the same test images (discordant images only)"
    if claim in ("a_better", "b_better"):
        direction = "A more accurate than B" if claim == "a_better" else "B more accurate than A"
        return (f"{base}, one-sided ({direction}) at alpha {alpha:g}: supported if p < {alpha:g}; contradicted if "
                f"the opposite one-sided p < {alpha:g}; otherwise within noise")
    if claim == "a_not_worse":
        return (f"{base}: contradicted if B is significantly more accurate (one-sided p < {alpha:g}); supported "
                f"if the {1 - alpha:.0%} interval of A-B lies above -{100 * margin:g} points; otherwise within noise")
    return (f"{1 - alpha:.0%} interval of the paired difference A-B: supported if inside +/-{100 * margin:g} "
            f"points; contradicted if entirely outside and the two-sided {base.split(' of ')[0]} p < {alpha:g}; "
            "otherwise within noise")


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def decide(a_correct, b_correct, claim: str, alpha: float = 0.05, margin: float = 0.02) -> Verdict:
    """Verdict on a paper's claim comparing model A with model B on the same images.

    p_a_better / p_b_better are the one-sided exact McNemar p-values; the interval is `paired_difference_interval`
    of A - B at confidence 1 - alpha (95% by default; for the one-sided margin checks this is conservative).
    margin is an absolute accuracy difference (0.02 = 2 points).

    - "a_better" (A beats B): supported if p_a_better < alpha; contradicted if p_b_better < alpha.
    - "b_better": the mirror image.
    - "a_not_worse" (A >= B): contradicted if p_b_better < alpha (B significantly better, even by less than the
      margin); supported otherwise if the interval's lower end is above -margin (A at most `margin` worse).
    - "about_equal" (A ~ B): supported if the interval lies within [-margin, margin]; contradicted if it lies
      entirely outside (below -margin or above margin) and the two-sided p < alpha.
    Anything else is "within noise".
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; expected one of {', '.join(CLAIMS)}")
    if not 0 < alpha < 1 or margin < 0:
        raise ValueError(f"need 0 < alpha < 1 and margin >= 0, got alpha={alpha}, margin={margin}")
    result = mcnemar_exact(a_correct, b_correct)
    counts = f"exact McNemar: {result.a_only} vs {result.b_only} discordant"
    low, high = paired_difference_interval(a_correct, b_correct, confidence=1 - alpha)
    interval = f"{1 - alpha:.0%} CI of A-B [{_points(low)}, {_points(high)}] points"
    label = "within noise"
    if claim in ("a_better", "b_better"):
        p_claimed, p_against = (
            (result.p_a_better, result.p_b_better) if claim == "a_better" else (result.p_b_better, result.p_a_better)
        )
        if p_claimed < alpha:
            label = "supported"
        elif p_against < alpha:
            label = "contradicted"
        statistic = f"{counts}, one-sided p={p_claimed:.2g} (opposite direction p={p_against:.2g})"
    elif claim == "a_not_worse":
        if result.p_b_better < alpha:
            label = "contradicted"
        elif low > -margin:
            label = "supported"
        statistic = f"{counts}, one-sided p(B better)={result.p_b_better:.2g}; {interval} vs margin -{100 * margin:g}"
    else:
        if -margin <= low and high <= margin:
            label = "supported"
        elif (high < -margin or low > margin) and result.p_two_sided < alpha:
            label = "contradicted"
        statistic = f"{interval} vs margin +/-{100 * margin:g}; {counts}, two-sided p={result.p_two_sided:.2g}"
    return Verdict(label=label, statistic=statistic, result=result, rule=mcnemar_rule(claim, alpha, margin))


# Pooling repeats (random channel draws, seeded trainings) or several attack columns as extra paired images, and
# comparing Wilson intervals of accuracies counted over images x repeats, are not offered here: the same images
# recur, so such p-values overstate the evidence. Average the repeats per image (sign_test) and combine
# columns or layers with decide_units (Holm).


# ------------------------------------------------------------------------------- claims over several units
@dataclass(frozen=True)
class UnitTest:
    """One unit's test (a layer, a class, an attack column) of a claim over several units: one-sided p-values
    in the claimed direction and against it, and the statistic in words."""

    name: str
    p_claimed: float
    p_against: float
    statistic: str


@dataclass(frozen=True)
class UnitsVerdict:
    label: str  # "supported", "partly", "contradicted" or "within noise"
    statistic: str  # k of n units, with each unit's test and Holm-adjusted p
    rule: str
    n_units: int
    n_claimed: int  # units significant in the claimed direction after Holm
    n_against: int  # units significant against the claim after Holm


UNITS_RULE = ("each unit tested on its own; Holm-Bonferroni over the {n} units at alpha {alpha:g} (separately for "
              "each direction): supported if every unit is significant in the claimed direction, partly if some are "
              "and none is significantly against, contradicted if any is significantly against, within noise if "
              "none is significant")


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; the family-wise error rate is controlled at the alpha the
    adjusted values are compared with, under any dependence between the tests)."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"holm needs a 1-d array of p-values in [0, 1], got {pvalues!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def decide_units(units: list[UnitTest], alpha: float = 0.05, unit_word: str = "units") -> UnitsVerdict:
    """Verdict on a claim that should hold in every unit, from each unit's own test (UNITS_RULE)."""
    if not units:
        raise ValueError("decide_units needs at least one unit")
    claimed = holm([u.p_claimed for u in units])
    against = holm([u.p_against for u in units])
    n, k, j = len(units), int((claimed < alpha).sum()), int((against < alpha).sum())
    label = ("contradicted" if j else "supported" if k == n else "partly" if k else "within noise")
    each = "; ".join(f"{u.name}: {u.statistic}, Holm p={c:.2g}" + (f" (against: Holm p={a:.2g})" if a < alpha else "")
                     for u, c, a in zip(units, claimed, against))
    statistic = (f"{k} of {n} {unit_word} significant in the claimed direction, {j} against (Holm, alpha "
                 f"{alpha:g}): {each}")
    if n == 1:  # one unit: Holm changes nothing
        statistic = f"{units[0].name}: {units[0].statistic}"
    return UnitsVerdict(label, statistic, UNITS_RULE.format(n=n, alpha=alpha).replace("units", unit_word),
                        n, k, j)


def mcnemar_unit(name: str, a_correct, b_correct, claim: str = "a_better") -> UnitTest:
    """An exact McNemar unit test of "A more accurate than B" (claim "a_better") or the reverse ("b_better")."""
    result = mcnemar_exact(a_correct, b_correct)
    p_a, p_b = result.p_a_better, result.p_b_better
    p_claimed, p_against = (p_a, p_b) if claim == "a_better" else (p_b, p_a)
    return UnitTest(name, p_claimed, p_against,
                    f"{result.a_accuracy:.1%} vs {result.b_accuracy:.1%} of {result.n}, discordant "
                    f"{result.a_only} vs {result.b_only}, one-sided p={p_claimed:.2g}")


@dataclass(frozen=True)
class PairedVerdict:
    label: str
    statistic: str
    rule: str
    p_claimed: float
    p_against: float


def _label(p_claimed: float, p_against: float, alpha: float) -> str:
    return "supported" if p_claimed < alpha else "contradicted" if p_against < alpha else "within noise"


def _one_sided(p_greater: float, p_less: float, claim: str, alpha: float, test: str, counts: str) -> PairedVerdict:
    """The verdict of a paired test run in both directions: `test` names it in the rule, `counts` opens the
    statistic."""
    p_claimed, p_against = (p_greater, p_less) if claim == "a_greater" else (p_less, p_greater)
    word = "above" if claim == "a_greater" else "below"
    rule = (f"{test}, one-sided (A {word} B) at alpha {alpha:g}: supported if p < {alpha:g}; contradicted if the "
            f"opposite one-sided p < {alpha:g}; otherwise within noise")
    statistic = f"{counts}, one-sided p={p_claimed:.2g} (opposite p={p_against:.2g})"
    return PairedVerdict(_label(p_claimed, p_against, alpha), statistic, rule, p_claimed, p_against)


def sign_test(a, b, claim: str = "a_greater", alpha: float = 0.05, what: str = "paired units") -> PairedVerdict:
    """Exact sign test (scipy binomtest) that paired values `a` exceed `b` ("a_greater") or fall below it
    ("a_less"): ties are dropped; under the null each non-tied pair goes either way with probability 1/2. For 0/1
    values this is the exact McNemar test; for per-image means over repeats it counts each image once."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"sign_test needs two non-empty paired 1-d arrays, got shapes {a.shape} and {b.shape}")
    if claim not in ("a_greater", "a_less"):
        raise ValueError(f"sign_test claim must be a_greater or a_less, got {claim!r}")
    above, below = int(np.sum(a > b)), int(np.sum(a < b))
    n = above + below
    if n == 0:
        p_greater = p_less = 1.0
    else:
        p_greater = float(binomtest(above, n, 0.5, alternative="greater").pvalue)
        p_less = float(binomtest(above, n, 0.5, alternative="less").pvalue)
    return _one_sided(p_greater, p_less, claim, alpha, f"exact sign test over {what} (ties dropped)",
                      f"sign test: A above B in {above}, below in {below} of {a.size} {what} ({a.size - n} tied)")


def wilcoxon_test(a, b, claim: str = "a_greater", alpha: float = 0.05, what: str = "paired units") -> PairedVerdict:
    """Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences dropped) that paired values `a` exceed
    `b` ("a_greater") or fall below it ("a_less"); `b` may be a scalar (a one-sample test against it)."""
    from scipy.stats import wilcoxon

    a = np.asarray(a, dtype=float)
    b = np.broadcast_to(np.asarray(b, dtype=float), a.shape)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"wilcoxon_test needs a non-empty 1-d array, got shape {a.shape}")
    if claim not in ("a_greater", "a_less"):
        raise ValueError(f"wilcoxon_test claim must be a_greater or a_less, got {claim!r}")
    d = a - b
    if not np.any(d != 0):
        p_greater = p_less = 1.0
    else:
        p_greater = float(wilcoxon(d, alternative="greater").pvalue)
        p_less = float(wilcoxon(d, alternative="less").pvalue)
    return _one_sided(p_greater, p_less, claim, alpha, f"Wilcoxon signed-rank test over {what}",
                      f"Wilcoxon signed-rank over {a.size} {what}: median difference {np.median(d):.4g}, "
                      f"A above B in {int(np.sum(d > 0))}")


def binomial_vs_threshold(successes: int, n: int, threshold: float, claim: str = "below", alpha: float = 0.05,
                          what: str = "images") -> PairedVerdict:
    """Exact binomial test (scipy binomtest) of an accuracy successes / n against a fixed `threshold`
    (a fraction): "below" claims the accuracy is below it, "above" above it."""
    from scipy.stats import binomtest

    if claim not in ("below", "above") or n < 1 or not 0 < threshold < 1:
        raise ValueError(f"need claim below/above, n >= 1 and 0 < threshold < 1, got {claim!r}, {n}, {threshold}")
    p_less = float(binomtest(successes, n, threshold, alternative="less").pvalue)
    p_greater = float(binomtest(successes, n, threshold, alternative="greater").pvalue)
    p_claimed, p_against = (p_less, p_greater) if claim == "below" else (p_greater, p_less)
    rule = (f"exact binomial test of the accuracy over {what} against the fixed threshold, one-sided ({claim}) at "
            f"alpha {alpha:g}: supported if p < {alpha:g}; contradicted if the opposite one-sided p < {alpha:g}; "
            "otherwise within noise")
    statistic = (f"exact binomial test: {successes} of {n} {what} vs threshold {100 * threshold:.1f}%, one-sided "
                 f"p={p_claimed:.2g} (opposite p={p_against:.2g})")
    return PairedVerdict(_label(p_claimed, p_against, alpha), statistic, rule, p_claimed, p_against)
