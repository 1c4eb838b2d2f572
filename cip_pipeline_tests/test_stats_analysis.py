"""Experiment analysis: z-test and Welch against statsmodels/scipy, Bayesian and CUPED against
closed forms and simulations with a known truth, SRM on fair and skewed splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from cip_pipeline.stats import (
    beta_binomial_ab,
    cuped_adjust,
    cuped_effect,
    cuped_theta,
    prob_beta_greater_exact,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
    welch_ttest_from_stats,
)

SM_ALTERNATIVE = {"two-sided": "two-sided", "greater": "larger", "less": "smaller"}
ALTERNATIVES = ("two-sided", "greater", "less")

# --- two-proportion z-test ----------------------------------------------------------------------

ZTEST_CASES = [
    (500, 10_000, 560, 10_000),
    (120, 4_000, 95, 3_900),
    (3, 50, 9, 61),
    (30_000, 100_000, 30_050, 100_000),
]


@pytest.mark.parametrize("case", ZTEST_CASES)
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_ztest_matches_statsmodels(case: tuple[int, int, int, int], alternative: str) -> None:
    x_c, n_c, x_t, n_t = case
    ours = two_proportion_ztest(x_c, n_c, x_t, n_t, alternative=alternative)  # type: ignore[arg-type]
    z, p = proportions_ztest([x_t, x_c], [n_t, n_c], alternative=SM_ALTERNATIVE[alternative])
    assert ours.z == pytest.approx(z, rel=1e-12)
    assert ours.p_value == pytest.approx(p, rel=1e-10, abs=1e-300)
    assert ours.difference == pytest.approx(x_t / n_t - x_c / n_c, abs=1e-15)
    assert ours.relative_lift == pytest.approx((x_t / n_t) / (x_c / n_c) - 1, rel=1e-12)


@pytest.mark.parametrize("case", ZTEST_CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_ztest_interval_is_unpooled_wald(case: tuple[int, int, int, int], alpha: float) -> None:
    x_c, n_c, x_t, n_t = case
    ours = two_proportion_ztest(x_c, n_c, x_t, n_t, alpha=alpha)
    lo, hi = confint_proportions_2indep(
        x_t, n_t, x_c, n_c, method="wald", compare="diff", alpha=alpha
    )
    assert (ours.ci_low, ours.ci_high) == pytest.approx((lo, hi), abs=1e-14)
    greater = two_proportion_ztest(x_c, n_c, x_t, n_t, alpha=alpha, alternative="greater")
    assert greater.ci_high == math.inf
    assert greater.ci_low == pytest.approx(
        ours.difference - stats.norm.isf(alpha) * ours.se, abs=1e-15
    )
    less = two_proportion_ztest(x_c, n_c, x_t, n_t, alpha=alpha, alternative="less")
    assert less.ci_low == -math.inf


def test_ztest_degenerate_arms_give_z_zero() -> None:
    res = two_proportion_ztest(0, 100, 0, 200)
    assert (res.z, res.p_value, res.difference) == (0.0, 1.0, 0.0)
    assert math.isnan(res.relative_lift)
    assert two_proportion_ztest(50, 50, 80, 80).p_value == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((11, 10, 5, 10), "conversions_control \\(11\\) exceeds n_control"),
        ((1, 10, 5, 0), "n_treatment must be at least 1"),
        ((-1, 10, 5, 10), "conversions_control must be at least 0"),
        ((1.5, 10, 5, 10), "conversions_control must be a whole number"),
    ],
)
def test_ztest_validation(args: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        two_proportion_ztest(*args)


# --- Welch ----------------------------------------------------------------------------------------


def _welch_samples(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    control = rng.lognormal(2.0, 1.2, size=rng.integers(50, 3_000))
    treatment = rng.lognormal(2.05, 1.4, size=rng.integers(50, 3_000))
    return control, treatment


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_welch_equals_scipy(seed: int, alternative: str) -> None:
    control, treatment = _welch_samples(seed)
    ours = welch_ttest(control, treatment, alpha=0.1, alternative=alternative)  # type: ignore[arg-type]
    ref = stats.ttest_ind(treatment, control, equal_var=False, alternative=alternative)
    assert abs(ours.t - ref.statistic) < 1e-10
    assert abs(ours.p_value - ref.pvalue) < 1e-10
    assert abs(ours.df - ref.df) < 1e-10 * ref.df
    ci = ref.confidence_interval(confidence_level=0.9)
    for mine, theirs in ((ours.ci_low, ci.low), (ours.ci_high, ci.high)):
        assert mine == theirs or abs(mine - theirs) < 1e-10
    assert ours.difference == pytest.approx(treatment.mean() - control.mean(), rel=1e-12)
    assert (ours.n_control, ours.n_treatment) == (control.size, treatment.size)


def test_welch_from_stats_equals_scipy() -> None:
    ours = welch_ttest_from_stats(10.0, 30.0, 5_000, 10.8, 33.0, 4_800)
    ref = stats.ttest_ind_from_stats(10.8, 33.0, 4_800, 10.0, 30.0, 5_000, equal_var=False)
    assert abs(ours.t - ref.statistic) < 1e-10
    assert abs(ours.p_value - ref.pvalue) < 1e-10
    assert ours.relative_lift == pytest.approx(0.08)


def test_welch_validation() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        welch_ttest([1.0, 1.0, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError, match="control needs at least 2 values"):
        welch_ttest([1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="treatment contains NaN"):
        welch_ttest([1.0, 2.0], [2.0, float("nan")])
    with pytest.raises(ValueError, match="alternative must be one of"):
        welch_ttest([1.0, 2.0], [2.0, 3.0], alternative="larger")  # type: ignore[arg-type]


# --- Bayesian beta-binomial ----------------------------------------------------------------------


def _exact_loss(a_c: int, b_c: int, a_t: int, b_t: int) -> float:
    """E[max(C - T, 0)] from the closed form: E[C·1{C>T}] - E[T·1{C>T}], using the size-biased
    identity E[X·1{X>Y}] = E[X]·P(X' > Y) with X' ~ Beta(a + 1, b)."""
    mean_c, mean_t = a_c / (a_c + b_c), a_t / (a_t + b_t)
    return mean_c * prob_beta_greater_exact(a_c + 1, b_c, a_t, b_t) - (
        mean_t * prob_beta_greater_exact(a_c, b_c, a_t + 1, b_t)
    )


def test_identical_data_is_a_coin_flip() -> None:
    res = beta_binomial_ab(120, 1_000, 120, 1_000)
    assert res.prob_treatment_better == 0.5
    assert res.expected_loss_treatment == pytest.approx(res.expected_loss_control, rel=1e-9)
    assert res.expected_loss_treatment > 0


@pytest.mark.parametrize(
    "case",
    [
        (100, 1_000, 120, 1_000),
        (10, 100, 5, 30),
        (0, 20, 2, 20),
        (500, 10_000, 560, 10_000),
        (3, 10, 300, 1_000),
        (40, 2_000, 41, 2_000),
    ],
)
def test_bayes_matches_closed_form(case: tuple[int, int, int, int]) -> None:
    x_c, n_c, x_t, n_t = case
    res = beta_binomial_ab(x_c, n_c, x_t, n_t)
    a_c, b_c, a_t, b_t = 1 + x_c, 1 + n_c - x_c, 1 + x_t, 1 + n_t - x_t
    assert res.posterior_control == (a_c, b_c)
    assert res.posterior_treatment == (a_t, b_t)
    assert res.prob_treatment_better == pytest.approx(
        prob_beta_greater_exact(a_t, b_t, a_c, b_c), abs=1e-10
    )
    assert res.expected_loss_treatment == pytest.approx(_exact_loss(a_c, b_c, a_t, b_t), abs=1e-10)
    assert res.expected_loss_control == pytest.approx(_exact_loss(a_t, b_t, a_c, b_c), abs=1e-10)
    # E[max(T - C, 0)] - E[max(C - T, 0)] = E[T] - E[C]
    assert res.expected_loss_control - res.expected_loss_treatment == pytest.approx(
        res.mean_treatment - res.mean_control, abs=1e-12
    )


def test_bayes_matches_large_simulation_at_warehouse_scale() -> None:
    x_c, n_c, x_t, n_t = 10_000, 1_000_000, 10_250, 1_000_000
    res = beta_binomial_ab(x_c, n_c, x_t, n_t)
    rng = np.random.default_rng(20191001)
    draws = 2_000_000
    c = rng.beta(1 + x_c, 1 + n_c - x_c, draws)
    t = rng.beta(1 + x_t, 1 + n_t - x_t, draws)
    p = float((t > c).mean())
    assert res.prob_treatment_better == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / draws))
    loss = np.maximum(c - t, 0.0)
    assert res.expected_loss_treatment == pytest.approx(
        loss.mean(), abs=5 * loss.std() / math.sqrt(draws)
    )
    # swapping the arms mirrors the answer
    swapped = beta_binomial_ab(x_t, n_t, x_c, n_c)
    assert swapped.prob_treatment_better == pytest.approx(1 - res.prob_treatment_better, abs=1e-9)
    assert swapped.expected_loss_control == pytest.approx(res.expected_loss_treatment, rel=1e-7)


def test_bayes_custom_prior_and_validation() -> None:
    res = beta_binomial_ab(5, 50, 9, 50, prior_alpha=0.5, prior_beta=0.5)
    assert res.posterior_treatment == (9.5, 41.5)
    assert 0.5 < res.prob_treatment_better < 1.0
    with pytest.raises(ValueError, match="prior_alpha must be positive"):
        beta_binomial_ab(5, 50, 9, 50, prior_alpha=0)
    # below 0.02, x = s^(1/a) underflows over part of the range: refused, not 3e-4 off
    with pytest.raises(ValueError, match=r"prior_beta must be at least 0\.02"):
        beta_binomial_ab(0, 10, 0, 20, prior_alpha=1, prior_beta=0.005)
    with pytest.raises(ValueError, match="conversions_treatment \\(60\\) exceeds"):
        beta_binomial_ab(5, 50, 60, 50)


def _prob_greater_series(x: tuple[float, float], y: tuple[float, float]) -> float:
    """P(X > Y) for X ~ Beta(x), Y ~ Beta(y) by Evan Miller's finite sum, which needs only X's
    first parameter to be a whole number (1 - I_t(a, b) for integer a is a finite sum for any
    real b), so it covers posteriors from priors below 1 when the other prior parameter is 1."""
    (a_x, b_x), (a_y, b_y) = x, y
    assert float(a_x).is_integer()
    i = np.arange(int(a_x), dtype=np.float64)
    log_terms = (
        betaln(a_y + i, b_y + b_x) - np.log(b_x + i) - betaln(1.0 + i, b_x) - betaln(a_y, b_y)
    )
    return float(np.exp(log_terms).sum())


def _excess_series(x: tuple[float, float], y: tuple[float, float]) -> float:
    """E[max(X - Y, 0)] = E[X]·P(X' > Y) - E[Y]·P(X > Y') with X' ~ Beta(a_x + 1, b_x),
    Y' ~ Beta(a_y + 1, b_y) (size-biased identity), each P by the finite sum."""
    (a_x, b_x), (a_y, b_y) = x, y
    return a_x / (a_x + b_x) * _prob_greater_series((a_x + 1, b_x), y) - a_y / (
        a_y + b_y
    ) * _prob_greater_series(x, (a_y + 1, b_y))


PRIOR_BELOW_ONE_CASES = [
    (0, 5, 5, 5),  # every treated user converted: the treatment density is unbounded at 1
    (5, 5, 0, 5),
    (100, 100, 0, 100),
    (1, 1, 0, 1),
    (0, 1, 1, 1),
    (0, 10, 0, 20),
    (10, 10, 20, 20),
    (3, 20, 7, 20),
]


@pytest.mark.parametrize("case", PRIOR_BELOW_ONE_CASES)
@pytest.mark.parametrize("small", [0.1, 0.5])
@pytest.mark.parametrize("mirrored", [False, True], ids=["beta_prior_small", "alpha_prior_small"])
def test_bayes_prior_below_one_matches_closed_form(
    case: tuple[int, int, int, int], small: float, mirrored: bool
) -> None:
    x_c, n_c, x_t, n_t = case
    a0, b0 = (small, 1.0) if mirrored else (1.0, small)
    res = beta_binomial_ab(x_c, n_c, x_t, n_t, prior_alpha=a0, prior_beta=b0)
    c = (a0 + x_c, b0 + n_c - x_c)
    t = (a0 + x_t, b0 + n_t - x_t)
    if mirrored:  # 1 - p ~ Beta(b, a) has the whole-number first parameter
        prob = _prob_greater_series(c[::-1], t[::-1])  # P(1 - C > 1 - T)
        loss_t = _excess_series(t[::-1], c[::-1])  # E[max((1 - T) - (1 - C), 0)]
        loss_c = _excess_series(c[::-1], t[::-1])
    else:
        prob = _prob_greater_series(t, c)
        loss_t = _excess_series(c, t)
        loss_c = _excess_series(t, c)
    assert res.prob_treatment_better == pytest.approx(prob, abs=1e-10)
    assert res.expected_loss_treatment == pytest.approx(loss_t, abs=1e-10)
    assert res.expected_loss_control == pytest.approx(loss_c, abs=1e-10)


@pytest.mark.parametrize("case", [(0, 5, 5, 5), (100, 100, 0, 100), (0, 0, 0, 0), (1, 1, 0, 1)])
@pytest.mark.parametrize("prior", [0.1, 0.5])
def test_bayes_symmetric_prior_below_one_matches_simulation(
    case: tuple[int, int, int, int], prior: float
) -> None:
    x_c, n_c, x_t, n_t = case
    res = beta_binomial_ab(x_c, n_c, x_t, n_t, prior_alpha=prior, prior_beta=prior)
    rng = np.random.default_rng(20191117)
    draws = 2_000_000
    c = rng.beta(prior + x_c, prior + n_c - x_c, draws)
    t = rng.beta(prior + x_t, prior + n_t - x_t, draws)
    p = float((t > c).mean())
    assert res.prob_treatment_better == pytest.approx(
        p, abs=5 * math.sqrt(p * (1 - p) / draws) + 1e-9
    )
    for ours, sample in (
        (res.expected_loss_treatment, np.maximum(c - t, 0.0)),
        (res.expected_loss_control, np.maximum(t - c, 0.0)),
    ):
        assert ours == pytest.approx(sample.mean(), abs=5 * sample.std() / math.sqrt(draws) + 1e-12)
    # a loss is at most the other arm's mean, and the two differ by the difference of means
    assert 0.0 <= res.expected_loss_treatment <= res.mean_control
    assert res.expected_loss_control - res.expected_loss_treatment == pytest.approx(
        res.mean_treatment - res.mean_control, abs=1e-12
    )


# --- CUPED --------------------------------------------------------------------------------------


def _cuped_data(
    rng: np.random.Generator, n: int, rho: float, effect: float
) -> tuple[np.ndarray, ...]:
    """Pre-period X and metric Y with corr(X, Y) = rho in each arm, Var(Y) = 4."""

    def arm(shift: float) -> tuple[np.ndarray, np.ndarray]:
        z = rng.standard_normal(n)
        x = 10.0 + 3.0 * z
        y = 5.0 + shift + 2.0 * (rho * z + math.sqrt(1 - rho**2) * rng.standard_normal(n))
        return y, x

    y_c, x_c = arm(0.0)
    y_t, x_t = arm(effect)
    return y_c, x_c, y_t, x_t


@pytest.mark.parametrize("rho", [0.3, 0.7, 0.9])
def test_cuped_reduces_variance_by_rho_squared(rho: float) -> None:
    rng = np.random.default_rng(7)
    y_c, x_c, y_t, x_t = _cuped_data(rng, 20_000, rho, 0.05)
    res = cuped_effect(y_c, x_c, y_t, x_t)
    assert res.variance_reduction == pytest.approx(rho**2, abs=0.02)
    assert res.theta == pytest.approx(2.0 * rho / 3.0, abs=0.02)  # cov/var = 2·rho·3 / 9
    assert res.se == pytest.approx(res.unadjusted.se * math.sqrt(1 - rho**2), rel=0.03)
    assert res.ci == (res.adjusted.ci_low, res.adjusted.ci_high)
    assert res.ci[0] < res.effect < res.ci[1]


def test_cuped_effect_is_unbiased_and_covers() -> None:
    rng = np.random.default_rng(11)
    effect, reps = 0.1, 300
    estimates, covered = [], 0
    for _ in range(reps):
        res = cuped_effect(*_cuped_data(rng, 2_000, 0.8, effect))
        estimates.append(res.effect)
        covered += res.ci[0] <= effect <= res.ci[1]
    est = np.asarray(estimates)
    # sd of one estimate ≈ 2·sqrt(2/2000·(1 - 0.64)) ≈ 0.038; the mean of 300 is within 0.007
    assert abs(est.mean() - effect) < 4 * est.std(ddof=1) / math.sqrt(reps)
    assert est.std(ddof=1) == pytest.approx(2 * math.sqrt(2 / 2_000 * 0.36), rel=0.15)
    assert 0.91 <= covered / reps <= 0.99


def test_cuped_theta_and_adjust() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=500)
    y = 1.5 * x + rng.normal(size=500)
    assert cuped_theta(y, x) == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-10)
    adjusted = cuped_adjust(y, x)
    assert adjusted.mean() == pytest.approx(y.mean(), abs=1e-12)
    assert abs(np.corrcoef(adjusted, x)[0, 1]) < 1e-10
    np.testing.assert_allclose(cuped_adjust(y, x, theta=0.0), y)


def test_cuped_validation() -> None:
    with pytest.raises(ValueError, match="constant"):
        cuped_theta([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="differ in length"):
        cuped_effect([1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0])


# --- sample ratio mismatch -----------------------------------------------------------------------


def test_srm_detects_52_48_at_large_n() -> None:
    res = sample_ratio_mismatch([52_000, 48_000])
    assert res.mismatch
    assert res.statistic == pytest.approx(160.0)
    assert res.p_value < 1e-30
    assert res.expected == (50_000.0, 50_000.0)
    assert res.df == 1


def test_srm_passes_a_fair_split() -> None:
    rng = np.random.default_rng(42)
    for _ in range(20):
        a = int(rng.binomial(100_000, 0.5))
        assert not sample_ratio_mismatch([a, 100_000 - a]).mismatch
    exact = sample_ratio_mismatch([50_000, 50_000])
    assert (exact.statistic, exact.p_value, exact.mismatch) == (0.0, 1.0, False)


def test_srm_uneven_allocation_and_threshold() -> None:
    res = sample_ratio_mismatch([9_050, 950], expected_shares=[90, 10])
    assert res.expected == pytest.approx((9_000.0, 1_000.0))
    ref = stats.chisquare([9_050, 950], [9_000, 1_000])
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert not res.mismatch  # p ≈ 0.09
    assert sample_ratio_mismatch([9_050, 950], [0.9, 0.1], threshold=0.1).mismatch
    three = sample_ratio_mismatch([3_400, 3_300, 3_300])
    assert three.df == 2 and not three.mismatch


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([100],), {}, "at least two arms"),
        (([0, 0],), {}, "all zero"),
        (([100, 100], [0.5]), {}, "1 entries but observed has 2"),
        (([100, 100], [0.5, -0.5]), {}, "expected_shares\\[1\\] must be positive"),
        (([100, 100],), {"threshold": 1.5}, "threshold must be strictly between"),
        (([100, -1],), {}, "observed\\[1\\] must be at least 0"),
    ],
)
def test_srm_validation(args: tuple, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        sample_ratio_mismatch(*args, **kwargs)
