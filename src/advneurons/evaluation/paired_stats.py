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

The exact rules for each claim are in `decide`'s docstring.
"""

from __future__ import annotations

import dataclasses
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
    n: int  # paired observations (images, or images x repeats when pooled)
    a_accuracy: float
    b_accuracy: float
    a_only: int  # images A gets right and B gets wrong
    b_only: int  # images B gets right and A gets wrong
    p_two_sided: float
    p_a_better: float  # one-sided: A more accurate than B
    p_b_better: float  # one-sided: B more accurate than A
    pooled_repeats: int = 1  # > 1 when n counts every image once per pooled repeat

    def describe(self) -> str:
        pairs = f"{self.n} paired images"
        if self.pooled_repeats > 1:
            pairs = f"{self.n // self.pooled_repeats} paired images x {self.pooled_repeats} pooled repeats"
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
    return Verdict(label=label, statistic=statistic, result=result)


def pool(corrects: list) -> np.ndarray:
    """Stack repeats' per-image correctness vectors as extra paired observations (concatenation)."""
    if len(corrects) == 0:
        raise ValueError("pool needs at least one correctness vector")
    return np.concatenate([_as_correct_vector(c, f"repeat {i}") for i, c in enumerate(corrects)])


def decide_pooled(group_corrects: list, other_correct, claim: str, **kwargs) -> Verdict:
    """`decide` for a group of repeats (e.g. random-channel seeds) as A against one model B.

    Each repeat is paired with B on the same images, so B's vector is tiled once per repeat. The same images then
    appear k times, and the repeats' errors are correlated through them, so the pooled observations are not
    independent and the p-values and interval are approximate (typically optimistic); the statistic says so.
    """
    other = _as_correct_vector(other_correct, "other_correct")
    for i, repeat in enumerate(group_corrects):
        if np.shape(repeat) != other.shape:
            raise ValueError(f"repeat {i} has {np.size(repeat)} results but the other model has {other.size}")
    repeats = len(group_corrects)
    verdict = decide(pool(group_corrects), np.tile(other, repeats), claim, **kwargs)
    return dataclasses.replace(
        verdict,
        statistic=f"{verdict.statistic}; pooled over {repeats} repeats (images repeat, p approximate)",
        result=dataclasses.replace(verdict.result, pooled_repeats=repeats),
    )


@dataclass(frozen=True)
class IntervalVerdict:
    label: str  # one of LABELS
    statistic: str


def decide_by_intervals(a_accuracy: float, a_n: int, b_accuracy: float, b_n: int, claim: str,
                        confidence: float = 0.95) -> IntervalVerdict:
    """Verdict on "A beats B" ("a_better") or "B beats A" ("b_better") where no per-image results exist: each
    accuracy gets its Wilson interval, and only intervals that do not overlap decide (a conservative test).
    Supported if they separate in the claimed direction, contradicted if in the opposite one, else within noise."""
    if claim not in ("a_better", "b_better"):
        raise ValueError(f"decide_by_intervals handles a_better and b_better, not {claim!r}")
    a_low, a_high = wilson_interval(int(round(a_accuracy * a_n)), a_n, confidence)
    b_low, b_high = wilson_interval(int(round(b_accuracy * b_n)), b_n, confidence)
    a_above, b_above = a_low > b_high, b_low > a_high
    claimed, against = (a_above, b_above) if claim == "a_better" else (b_above, a_above)
    label = "supported" if claimed else "contradicted" if against else "within noise"
    statistic = (f"Wilson {confidence:.0%} intervals: A [{100 * a_low:.1f}, {100 * a_high:.1f}]% of {a_n}, "
                 f"B [{100 * b_low:.1f}, {100 * b_high:.1f}]% of {b_n}")
    return IntervalVerdict(label, statistic)
