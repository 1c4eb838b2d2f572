"""Analysis of a finished two-arm experiment: frequentist tests, Bayesian beta-binomial,
CUPED variance reduction and the sample-ratio-mismatch check.

Arm A is the control, arm B the treatment; every difference is treatment − control, and
``alternative="greater"`` means the alternative hypothesis "treatment > control" (scipy's
vocabulary; statsmodels calls it "larger").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import integrate, stats
from scipy.special import betaln

from cip_pipeline.stats._validation import (
    TEST_ALTERNATIVES,
    check_choice,
    check_count,
    check_open_unit,
    check_positive,
    check_sample,
)

if TYPE_CHECKING:
    from scipy.stats.distributions import rv_continuous, rv_frozen

    Distribution = rv_continuous | rv_frozen

TestAlternative = Literal["two-sided", "greater", "less"]


def _relative(difference: float, base: float) -> float:
    return difference / base if base != 0.0 else math.nan


def _p_value(dist: Distribution, stat: float, alternative: str) -> float:
    if alternative == "greater":
        return float(dist.sf(stat))
    if alternative == "less":
        return float(dist.cdf(stat))
    return float(min(1.0, 2.0 * dist.sf(abs(stat))))


def _interval(
    dist: Distribution,
    estimate: float,
    se: float,
    alpha: float,
    alternative: str,
) -> tuple[float, float]:
    """Confidence interval matching the test: two-sided, or a one-sided bound."""
    if alternative == "two-sided":
        q = float(dist.isf(alpha / 2.0))
        return estimate - q * se, estimate + q * se
    q = float(dist.isf(alpha))
    if alternative == "greater":
        return estimate - q * se, math.inf
    return -math.inf, estimate + q * se


# ---------------------------------------------------------------------------------------------
# Two-proportion z-test


@dataclass(frozen=True)
class TwoProportionZTest:
    p_control: float
    p_treatment: float
    difference: float  # p_treatment - p_control
    relative_lift: float  # difference / p_control (NaN when p_control == 0)
    z: float  # with the pooled standard error
    p_value: float
    se: float  # unpooled standard error of the difference, used for the interval
    ci_low: float  # unpooled Wald interval for the difference (one-sided bound if one-sided)
    ci_high: float
    alpha: float
    alternative: str


def two_proportion_ztest(
    conversions_control: int,
    n_control: int,
    conversions_treatment: int,
    n_treatment: int,
    *,
    alpha: float = 0.05,
    alternative: TestAlternative = "two-sided",
) -> TwoProportionZTest:
    """Two-proportion z-test of treatment vs control conversion rates.

    The test statistic uses the pooled standard error (as statsmodels ``proportions_ztest``
    does, with ``count=[x_t, x_c], nobs=[n_t, n_c]``); the confidence interval for the
    difference is the unpooled Wald interval. When both arms convert at 0 % or both at 100 %
    the pooled standard error is zero and the result is z = 0, p = 1.
    """
    n_c = check_count("n_control", n_control, minimum=1)
    n_t = check_count("n_treatment", n_treatment, minimum=1)
    x_c = check_count("conversions_control", conversions_control)
    x_t = check_count("conversions_treatment", conversions_treatment)
    if x_c > n_c:
        raise ValueError(f"conversions_control ({x_c}) exceeds n_control ({n_c})")
    if x_t > n_t:
        raise ValueError(f"conversions_treatment ({x_t}) exceeds n_treatment ({n_t})")
    a = check_open_unit("alpha", alpha)
    alt = check_choice("alternative", alternative, TEST_ALTERNATIVES)

    p_c, p_t = x_c / n_c, x_t / n_t
    diff = p_t - p_c
    pooled = (x_c + x_t) / (n_c + n_t)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t))
    if se_pooled == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / se_pooled
        p_value = _p_value(stats.norm, z, alt)
    se = math.sqrt(p_c * (1.0 - p_c) / n_c + p_t * (1.0 - p_t) / n_t)
    lo, hi = _interval(stats.norm, diff, se, a, alt)
    return TwoProportionZTest(
        p_control=p_c,
        p_treatment=p_t,
        difference=diff,
        relative_lift=_relative(diff, p_c),
        z=z,
        p_value=p_value,
        se=se,
        ci_low=lo,
        ci_high=hi,
        alpha=a,
        alternative=alt,
    )


# ---------------------------------------------------------------------------------------------
# Welch's t-test


@dataclass(frozen=True)
class WelchTTest:
    mean_control: float
    mean_treatment: float
    difference: float  # mean_treatment - mean_control
    relative_lift: float  # difference / mean_control (NaN when mean_control == 0)
    t: float
    df: float  # Welch–Satterthwaite degrees of freedom
    p_value: float
    se: float  # standard error of the difference
    ci_low: float  # t interval for the difference (one-sided bound if one-sided)
    ci_high: float
    n_control: int
    n_treatment: int
    alpha: float
    alternative: str


def welch_ttest_from_stats(
    mean_control: float,
    sd_control: float,
    n_control: int,
    mean_treatment: float,
    sd_treatment: float,
    n_treatment: int,
    *,
    alpha: float = 0.05,
    alternative: TestAlternative = "two-sided",
) -> WelchTTest:
    """Welch's unequal-variance t-test from summary statistics (sample sds with ddof=1), e.g.
    from a warehouse aggregate. Same numbers as ``scipy.stats.ttest_ind_from_stats(...,
    equal_var=False)`` with the treatment first."""
    m_c = float(mean_control)
    m_t = float(mean_treatment)
    if not (math.isfinite(m_c) and math.isfinite(m_t)):
        raise ValueError("means must be finite")
    n_c = check_count("n_control", n_control, minimum=2)
    n_t = check_count("n_treatment", n_treatment, minimum=2)
    s_c = float(sd_control)
    s_t = float(sd_treatment)
    if not (math.isfinite(s_c) and math.isfinite(s_t)) or s_c < 0.0 or s_t < 0.0:
        raise ValueError("standard deviations must be finite and non-negative")
    a = check_open_unit("alpha", alpha)
    alt = check_choice("alternative", alternative, TEST_ALTERNATIVES)

    v_c, v_t = s_c**2 / n_c, s_t**2 / n_t
    se2 = v_c + v_t
    if se2 == 0.0:
        raise ValueError("both samples have zero variance; the t statistic is undefined")
    se = math.sqrt(se2)
    df = se2**2 / (v_c**2 / (n_c - 1) + v_t**2 / (n_t - 1))
    diff = m_t - m_c
    t = diff / se
    dist = stats.t(df)
    lo, hi = _interval(dist, diff, se, a, alt)
    return WelchTTest(
        mean_control=m_c,
        mean_treatment=m_t,
        difference=diff,
        relative_lift=_relative(diff, m_c),
        t=t,
        df=df,
        p_value=_p_value(dist, t, alt),
        se=se,
        ci_low=lo,
        ci_high=hi,
        n_control=n_c,
        n_treatment=n_t,
        alpha=a,
        alternative=alt,
    )


def welch_ttest(
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    alternative: TestAlternative = "two-sided",
) -> WelchTTest:
    """Welch's unequal-variance t-test of treatment vs control on per-user values.

    Same t, df and p-value as ``scipy.stats.ttest_ind(treatment, control, equal_var=False)``
    and the same interval as its ``confidence_interval(1 - alpha)``.
    """
    c = check_sample("control", control)
    t = check_sample("treatment", treatment)
    return welch_ttest_from_stats(
        float(c.mean()),
        float(c.std(ddof=1)),
        c.size,
        float(t.mean()),
        float(t.std(ddof=1)),
        t.size,
        alpha=alpha,
        alternative=alternative,
    )


# ---------------------------------------------------------------------------------------------
# Bayesian beta-binomial


@dataclass(frozen=True)
class BetaBinomialResult:
    prob_treatment_better: float  # P(p_treatment > p_control | data)
    expected_loss_treatment: float  # E[max(p_control - p_treatment, 0)]: risk of shipping B
    expected_loss_control: float  # E[max(p_treatment - p_control, 0)]: risk of keeping A
    posterior_control: tuple[float, float]  # Beta(alpha, beta)
    posterior_treatment: tuple[float, float]
    mean_control: float  # posterior means
    mean_treatment: float


_TAIL = 1e-15  # posterior mass left outside the integration range, on each side
_QUAD = {"limit": 500, "epsabs": 1e-14, "epsrel": 1e-11}


def _halves(
    first: tuple[float, float], second: tuple[float, float]
) -> Iterator[tuple[tuple[float, float], tuple[float, float], bool]]:
    """The two frames of an integral over [0, 1] split at 1/2: the lower half in x, the upper
    half in y = 1 - x with both Beta laws mirrored (1 - X ~ Beta(b, a)). Every endpoint
    singularity then sits at 0, where floats resolve it; next to 1 they cannot (a
    Beta(5, 0.1) keeps about 3 % of its mass within 1e-16 of 1, where 1 - x rounds to 0)."""
    yield first, second, False
    yield first[::-1], second[::-1], True


def _break_points(carrier: rv_frozen, other: rv_frozen, lo: float, hi: float) -> list[float]:
    """Points at both laws' bulk so quad sees the two shapes. None in the carrier's far
    tails: next to a density's singularity they made quad settle on a wrong value with a tiny
    error estimate."""
    marks = [float(carrier.ppf(q)) for q in (0.01, 0.5, 0.99)]
    marks += [float(other.ppf(q)) for q in (1e-6, 0.01, 0.5, 0.99, 1 - 1e-6)]
    return sorted({p for p in marks if lo < p < hi})


def _quad(func: Callable[[float], float], lo: float, hi: float, points: list[float]) -> float:
    value, _ = integrate.quad(func, lo, hi, points=points or None, **_QUAD)
    return float(value)


def _prob_greater(t: tuple[float, float], c: tuple[float, float]) -> float:
    """P(T > C) = ∫ f_T(x) F_C(x) dx, half by half (in the mirrored half F_C(1 - y) is the
    survival function of the mirrored C). Where f_T ~ x^(a-1) with a < 1 is unbounded at 0,
    x = s^(1/a) turns f_T(x) dx into (1 - x)^(b-1) / (a·B(a, b)) ds, which is bounded."""
    total = 0.0
    for (a, b), (a_o, b_o), mirrored in _halves(t, c):
        dist, other = stats.beta(a, b), stats.beta(a_o, b_o)

        def cdf_other(x: float, other: rv_frozen = other, mirrored: bool = mirrored) -> float:
            return float(other.sf(x) if mirrored else other.cdf(x))

        lo, hi = float(dist.ppf(_TAIL)), min(0.5, float(dist.isf(_TAIL)))
        if lo >= hi:
            continue  # less than _TAIL of T's mass in this half
        points = _break_points(dist, other, lo, hi)
        if a >= 1.0:
            total += _quad(lambda x, d=dist, g=cdf_other: float(d.pdf(x)) * g(x), lo, hi, points)
            continue
        log_norm = math.log(a) + float(betaln(a, b))

        def integrand(
            s: float,
            a: float = a,
            b: float = b,
            log_norm: float = log_norm,
            g: Callable[[float], float] = cdf_other,
        ) -> float:
            x = s ** (1.0 / a)
            return math.exp((b - 1.0) * math.log1p(-x) - log_norm) * g(x)

        total += _quad(integrand, 0.0, hi**a, [p**a for p in points])
    return min(1.0, max(0.0, total))


def _loss(d: tuple[float, float], o: tuple[float, float]) -> float:
    """E[max(O - D, 0)] for independent D ~ Beta(d), O ~ Beta(o): ∫ P(D < x < O) dx =
    ∫ F_D(x) S_O(x) dx. Free of densities, so the integrand stays in [0, 1] even for priors
    below 1, whose densities are unbounded at 0 or 1."""
    total = 0.0
    for (a, b), (a_o, b_o), mirrored in _halves(d, o):
        dist, other = stats.beta(a, b), stats.beta(a_o, b_o)
        if mirrored:  # F_D(1 - y) = S_D~(y) and S_O(1 - y) = F_O~(y)
            lo, hi = float(other.ppf(_TAIL)), min(0.5, float(dist.isf(_TAIL)))

            def integrand(y: float, dd: rv_frozen = dist, do: rv_frozen = other) -> float:
                return float(dd.sf(y) * do.cdf(y))
        else:
            lo, hi = float(dist.ppf(_TAIL)), min(0.5, float(other.isf(_TAIL)))

            def integrand(x: float, dd: rv_frozen = dist, do: rv_frozen = other) -> float:
                return float(dd.cdf(x) * do.sf(x))

        if lo < hi:  # otherwise the integrand is below _TAIL on this whole half
            total += _quad(integrand, lo, hi, _break_points(dist, other, lo, hi))
    return max(0.0, total)


# Below it, x = s^(1/a) underflows to 0 over part of the range in `_prob_greater` (a prior
# of 0.005 was 3e-4 off); at 0.02 the error is under 1e-13.
MIN_PRIOR = 0.02


def _check_prior(name: str, value: float) -> float:
    prior = check_positive(name, value)
    if prior < MIN_PRIOR:
        raise ValueError(
            f"{name} must be at least {MIN_PRIOR} (below it P(B > A) is not computed to the "
            f"promised accuracy), got {value!r}"
        )
    return prior


def beta_binomial_ab(
    conversions_control: int,
    n_control: int,
    conversions_treatment: int,
    n_treatment: int,
    *,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> BetaBinomialResult:
    """Bayesian comparison of two conversion rates with independent Beta(prior_alpha,
    prior_beta) priors (uniform Beta(1, 1) by default).

    P(B > A) and both expected losses are computed by adaptive quadrature (scipy
    ``integrate.quad``) of one-dimensional integrals over the posteriors' effective support,
    not by Monte Carlo: the results are deterministic, with an absolute error below about
    1e-10, also for posteriors from millions of users and for priors below 1 (down to
    MIN_PRIOR, 0.02; smaller ones are refused), whose
    posteriors have unbounded densities when an arm converted none or all of its users
    (checked against the closed form for integer parameters, the finite-sum closed form when
    one prior parameter is 1, 2 M-draw simulations and, offline, 40-digit mpmath
    quadrature). The losses integrate E[max(O - D, 0)] = ∫ F_D(x)·S_O(x) dx, which needs no
    density. About 50 ms a call, up to about 0.3 s with priors below 1. Losses are in
    conversion-rate units (0.001 = 0.1 percentage point).
    """
    n_c = check_count("n_control", n_control, minimum=0)
    n_t = check_count("n_treatment", n_treatment, minimum=0)
    x_c = check_count("conversions_control", conversions_control)
    x_t = check_count("conversions_treatment", conversions_treatment)
    if x_c > n_c:
        raise ValueError(f"conversions_control ({x_c}) exceeds n_control ({n_c})")
    if x_t > n_t:
        raise ValueError(f"conversions_treatment ({x_t}) exceeds n_treatment ({n_t})")
    a0, b0 = (
        _check_prior(name, value)
        for name, value in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta))
    )

    ac, bc = a0 + x_c, b0 + n_c - x_c
    at, bt = a0 + x_t, b0 + n_t - x_t
    # exact by symmetry when both posteriors agree
    prob = 0.5 if (ac, bc) == (at, bt) else _prob_greater((at, bt), (ac, bc))
    loss_t = _loss((at, bt), (ac, bc))
    loss_c = _loss((ac, bc), (at, bt))
    return BetaBinomialResult(
        prob_treatment_better=prob,
        expected_loss_treatment=loss_t,
        expected_loss_control=loss_c,
        posterior_control=(ac, bc),
        posterior_treatment=(at, bt),
        mean_control=ac / (ac + bc),
        mean_treatment=at / (at + bt),
    )


def prob_beta_greater_exact(
    alpha_treatment: int, beta_treatment: int, alpha_control: int, beta_control: int
) -> float:
    """Closed-form P(X_T > X_C) for X_T ~ Beta(alpha_treatment, beta_treatment) and
    X_C ~ Beta(alpha_control, beta_control) with integer parameters (Evan Miller's formula,
    a sum of alpha_treatment terms evaluated in log space). A reference for tests and small
    cases: its rounding error grows with the parameters, to about 1e-9 near 1e6, where
    `beta_binomial_ab`'s quadrature is the more accurate.
    """
    a_t = check_count("alpha_treatment", alpha_treatment, minimum=1)
    b_t = check_count("beta_treatment", beta_treatment, minimum=1)
    a_c = check_count("alpha_control", alpha_control, minimum=1)
    b_c = check_count("beta_control", beta_control, minimum=1)
    i = np.arange(a_t, dtype=np.float64)
    log_terms = (
        betaln(a_c + i, b_c + b_t)
        - np.log(b_t + i)
        - betaln(1.0 + i, b_t)
        - betaln(float(a_c), float(b_c))
    )
    m = float(log_terms.max())
    return float(min(1.0, math.exp(m) * np.exp(log_terms - m).sum()))


# ---------------------------------------------------------------------------------------------
# CUPED


@dataclass(frozen=True)
class CupedResult:
    theta: float  # cov(Y, X) / var(X), estimated on both arms pooled
    covariate_mean: float  # mean of X over both arms, the centring constant
    variance_reduction: float  # 1 - Var(adjusted effect) / Var(raw effect); ≈ corr(Y, X)²
    adjusted: WelchTTest  # Welch test on Y - theta·(X - mean X): the CUPED effect
    unadjusted: WelchTTest  # Welch test on Y itself

    @property
    def effect(self) -> float:
        return self.adjusted.difference

    @property
    def se(self) -> float:
        return self.adjusted.se

    @property
    def ci(self) -> tuple[float, float]:
        return self.adjusted.ci_low, self.adjusted.ci_high


def _paired(name_y: str, y: ArrayLike, name_x: str, x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ya = check_sample(name_y, y)
    xa = check_sample(name_x, x)
    if ya.size != xa.size:
        raise ValueError(f"{name_y} and {name_x} differ in length: {ya.size} vs {xa.size}")
    return ya, xa


def cuped_theta(y: ArrayLike, x: ArrayLike) -> float:
    """theta = cov(Y, X) / var(X), the regression slope of the metric on its pre-period
    covariate."""
    ya, xa = _paired("y", y, "x", x)
    var_x = float(np.var(xa, ddof=1))
    if var_x == 0.0:
        raise ValueError("the covariate x is constant; CUPED needs a covariate that varies")
    return float(np.cov(ya, xa, ddof=1)[0, 1] / var_x)


def cuped_adjust(
    y: ArrayLike, x: ArrayLike, theta: float | None = None, x_mean: float | None = None
) -> np.ndarray:
    """Adjusted metric Y − theta·(X − mean X); theta and the centring mean are estimated from
    the given data unless passed (pass the pooled values when adjusting arms separately)."""
    ya, xa = _paired("y", y, "x", x)
    th = cuped_theta(ya, xa) if theta is None else float(theta)
    mu = float(xa.mean()) if x_mean is None else float(x_mean)
    if not (math.isfinite(th) and math.isfinite(mu)):
        raise ValueError("theta and x_mean must be finite")
    return ya - th * (xa - mu)


def cuped_effect(
    y_control: ArrayLike,
    x_control: ArrayLike,
    y_treatment: ArrayLike,
    x_treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    alternative: TestAlternative = "two-sided",
) -> CupedResult:
    """CUPED-adjusted treatment effect on a metric Y using a pre-period covariate X (typically
    the same metric in the weeks before the experiment; fill users without history with 0).

    theta and the centring mean of X are estimated on both arms together, which keeps the
    adjusted difference unbiased because X cannot be affected by the treatment. The standard
    error and interval are Welch's on the adjusted values; they treat theta as known, which
    is the usual practice and costs O(1/n).
    """
    yc, xc = _paired("y_control", y_control, "x_control", x_control)
    yt, xt = _paired("y_treatment", y_treatment, "x_treatment", x_treatment)
    x_all = np.concatenate([xc, xt])
    theta = cuped_theta(np.concatenate([yc, yt]), x_all)
    x_mean = float(x_all.mean())
    adjusted = welch_ttest(
        cuped_adjust(yc, xc, theta, x_mean),
        cuped_adjust(yt, xt, theta, x_mean),
        alpha=alpha,
        alternative=alternative,
    )
    unadjusted = welch_ttest(yc, yt, alpha=alpha, alternative=alternative)
    return CupedResult(
        theta=theta,
        covariate_mean=x_mean,
        variance_reduction=1.0 - adjusted.se**2 / unadjusted.se**2,
        adjusted=adjusted,
        unadjusted=unadjusted,
    )


# ---------------------------------------------------------------------------------------------
# Sample ratio mismatch


@dataclass(frozen=True)
class SampleRatioMismatch:
    statistic: float  # Pearson chi-square
    p_value: float
    df: int
    mismatch: bool  # p_value < threshold
    threshold: float
    observed: tuple[int, ...]
    expected: tuple[float, ...]


def sample_ratio_mismatch(
    observed: Sequence[int],
    expected_shares: Sequence[float] | None = None,
    *,
    threshold: float = 0.001,
) -> SampleRatioMismatch:
    """Chi-square goodness-of-fit test of the users per arm against the planned allocation.

    `expected_shares` are the planned shares per arm (any positive weights, normalised to sum
    to 1; equal shares by default). `mismatch` is True when p < `threshold`; the strict
    default 0.001 is the industry convention, because an SRM check runs on every experiment
    and a false alarm halts its analysis.
    """
    obs = tuple(check_count(f"observed[{i}]", v) for i, v in enumerate(observed))
    if len(obs) < 2:
        raise ValueError("observed needs the counts of at least two arms")
    total = sum(obs)
    if total == 0:
        raise ValueError("observed counts are all zero")
    if expected_shares is None:
        shares = [1.0 / len(obs)] * len(obs)
    else:
        raw = [check_positive(f"expected_shares[{i}]", s) for i, s in enumerate(expected_shares)]
        if len(raw) != len(obs):
            raise ValueError(
                f"expected_shares has {len(raw)} entries but observed has {len(obs)} arms"
            )
        shares = [s / sum(raw) for s in raw]
    th = check_open_unit("threshold", threshold)
    expected = tuple(total * s for s in shares)
    res = stats.chisquare(np.asarray(obs, dtype=np.float64), np.asarray(expected))
    p_value = float(res.pvalue)
    return SampleRatioMismatch(
        statistic=float(res.statistic),
        p_value=p_value,
        df=len(obs) - 1,
        mismatch=p_value < th,
        threshold=th,
        observed=obs,
        expected=expected,
    )
