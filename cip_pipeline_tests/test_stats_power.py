"""Power, sample size, MDE and duration checked against statsmodels over the planning grid."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from scipy import stats
from statsmodels.stats.power import (
    NormalIndPower,
    TTestIndPower,
    normal_power_het,
    tt_ind_solve_power,
    zt_ind_solve_power,
)
from statsmodels.stats.proportion import (
    power_proportions_2indep,
    proportion_effectsize,
    samplesize_proportions_2indep_onetail,
)

from cip_pipeline.stats import (
    SampleSize,
    cohens_d,
    cohens_h,
    experiment_duration_days,
    mde_continuous,
    mde_two_proportions,
    power_continuous,
    power_two_proportions,
    sample_size_continuous,
    sample_size_two_proportions,
)

BASELINES = (0.01, 0.05, 0.1, 0.3)
LIFTS = (0.05, 0.10, 0.20, 0.50)
ALPHAS = (0.10, 0.05, 0.01)
POWERS = (0.8, 0.9)
SIDES = ("two-sided", "one-sided")
SETTINGS = list(itertools.product(ALPHAS, POWERS, SIDES))

# Revenue per user: mean 25 with a coefficient of variation of 1.6 and 4.8 (heavy-tailed spend).
MEAN = 25.0
SDS = (40.0, 120.0)


def _sm_alternative(sides: str) -> str:
    return "two-sided" if sides == "two-sided" else "larger"


# --- proportions, Cohen's h -------------------------------------------------------------------


@pytest.mark.parametrize(("baseline", "lift"), list(itertools.product(BASELINES, LIFTS)))
def test_cohen_h_sample_size_matches_statsmodels(baseline: float, lift: float) -> None:
    h = proportion_effectsize(baseline * (1 + lift), baseline)
    for alpha, power, sides in SETTINGS:
        ours = sample_size_two_proportions(
            baseline, lift, alpha=alpha, power=power, alternative=sides
        )
        theirs = NormalIndPower().solve_power(
            h, alpha=alpha, power=power, alternative=_sm_alternative(sides)
        )
        assert abs(ours.n_control - math.ceil(theirs)) <= 1, (alpha, power, sides)
        assert ours.n_control_exact == pytest.approx(theirs, rel=1e-6)
        assert ours.n_treatment == ours.n_control
        assert ours.total == 2 * ours.n_control
        assert ours.effect_size == pytest.approx(h, rel=1e-12)
        assert ours.achieved_power >= power
        # zt_ind_solve_power is the functional form of the same solver
        assert ours.n_control_exact == pytest.approx(
            zt_ind_solve_power(h, alpha=alpha, power=power, alternative=_sm_alternative(sides)),
            rel=1e-6,
        )


@pytest.mark.parametrize(("baseline", "lift"), list(itertools.product(BASELINES, LIFTS)))
def test_cohen_h_power_matches_statsmodels(baseline: float, lift: float) -> None:
    h = proportion_effectsize(baseline * (1 + lift), baseline)
    for n in (500, 20_000, 1_000_000):
        for alpha, sides in itertools.product(ALPHAS, SIDES):
            ours = power_two_proportions(baseline, lift, n, alpha=alpha, alternative=sides)
            theirs = NormalIndPower().power(h, n, alpha, alternative=_sm_alternative(sides))
            assert ours == pytest.approx(theirs, abs=1e-12)


def test_cohens_h_is_statsmodels_effectsize() -> None:
    assert cohens_h(0.05, 0.06) == pytest.approx(proportion_effectsize(0.06, 0.05), rel=1e-14)
    assert cohens_h(0.3, 0.2) < 0


def test_unequal_allocation_matches_statsmodels() -> None:
    for ratio in (0.25, 3.0):
        ours = sample_size_two_proportions(0.05, 0.2, ratio=ratio, power=0.9)
        h = proportion_effectsize(0.06, 0.05)
        theirs = NormalIndPower().solve_power(h, alpha=0.05, power=0.9, ratio=ratio)
        assert abs(ours.n_control - math.ceil(theirs)) <= 1
        assert ours.n_treatment == math.ceil(ratio * ours.n_control_exact - 1e-6)
        assert ours.achieved_power >= 0.9


def test_negative_lift_is_sized_like_a_one_sided_test_in_its_direction() -> None:
    ours = sample_size_two_proportions(0.1, -0.1, alternative="one-sided")
    h = proportion_effectsize(0.09, 0.1)  # negative
    theirs = NormalIndPower().solve_power(h, alpha=0.05, power=0.8, alternative="smaller")
    assert abs(ours.n_control - math.ceil(theirs)) <= 1
    assert ours.effect_size < 0
    assert ours.absolute_effect == pytest.approx(-0.01)


# --- proportions, pooled and unpooled z-test formulas ----------------------------------------


def _assert_close_to_closed_form(ours: SampleSize, closed: float) -> None:
    """A closed form that ignores the far tail of a two-sided test: equal within one unit when
    one-sided; when two-sided our size counts the far tail and is a hair smaller."""
    if ours.alternative == "one-sided":
        assert abs(ours.n_control - math.ceil(closed)) <= 1
    else:
        assert ours.n_control <= math.ceil(closed)
        assert ours.n_control_exact == pytest.approx(closed, rel=1e-4)


@pytest.mark.parametrize(("baseline", "lift"), list(itertools.product(BASELINES, LIFTS)))
def test_pooled_method_matches_statsmodels_power_proportions_2indep(
    baseline: float, lift: float
) -> None:
    p2 = baseline * (1 + lift)
    for alpha, power, sides in SETTINGS:
        ours = sample_size_two_proportions(
            baseline, lift, alpha=alpha, power=power, alternative=sides, method="pooled"
        )
        # statsmodels' sample 1 is the treatment, prop2 the reference (control)
        theirs_power = power_proportions_2indep(
            p2 - baseline,
            baseline,
            ours.n_control,
            alpha=alpha,
            alternative=_sm_alternative(sides),
            return_results=False,
        )
        assert ours.achieved_power == pytest.approx(theirs_power, abs=1e-12)
        theirs_n = samplesize_proportions_2indep_onetail(
            p2 - baseline, baseline, power, alpha=alpha, alternative=_sm_alternative(sides)
        )
        _assert_close_to_closed_form(ours, theirs_n)


@pytest.mark.parametrize(("baseline", "lift"), list(itertools.product(BASELINES, LIFTS)))
def test_unpooled_method_matches_closed_form(baseline: float, lift: float) -> None:
    p2 = baseline * (1 + lift)
    var = baseline * (1 - baseline) + p2 * (1 - p2)
    for alpha, power, sides in SETTINGS:
        ours = sample_size_two_proportions(
            baseline, lift, alpha=alpha, power=power, alternative=sides, method="unpooled"
        )
        z_a = stats.norm.isf(alpha / 2 if sides == "two-sided" else alpha)
        z_b = stats.norm.isf(1 - power)
        closed = (z_a + z_b) ** 2 * var / (p2 - baseline) ** 2
        _assert_close_to_closed_form(ours, closed)
        sd = math.sqrt(var)
        theirs_power = normal_power_het(
            p2 - baseline, ours.n_control, alpha, sd, sd, alternative=_sm_alternative(sides)
        )
        assert ours.achieved_power == pytest.approx(theirs_power, abs=1e-12)


def test_methods_agree_roughly_and_cohen_h_is_the_default() -> None:
    sizes = {
        m: sample_size_two_proportions(0.05, 0.1, method=m).n_control
        for m in ("cohen_h", "pooled", "unpooled")
    }
    assert sample_size_two_proportions(0.05, 0.1).method == "cohen_h"
    assert max(sizes.values()) / min(sizes.values()) < 1.05


# --- continuous metric --------------------------------------------------------------------------


@pytest.mark.parametrize(("sd", "lift"), list(itertools.product(SDS, LIFTS)))
def test_continuous_t_sample_size_matches_statsmodels(sd: float, lift: float) -> None:
    d = MEAN * lift / sd
    for alpha, power, sides in SETTINGS:
        ours = sample_size_continuous(MEAN, sd, lift, alpha=alpha, power=power, alternative=sides)
        theirs = TTestIndPower().solve_power(
            d, alpha=alpha, power=power, alternative=_sm_alternative(sides)
        )
        assert abs(ours.n_control - math.ceil(theirs)) <= 1, (alpha, power, sides)
        assert ours.n_control_exact == pytest.approx(
            tt_ind_solve_power(d, alpha=alpha, power=power, alternative=_sm_alternative(sides)),
            rel=1e-6,
        )
        assert ours.effect_size == pytest.approx(d)
        assert ours.achieved_power >= power


@pytest.mark.parametrize(("sd", "lift"), list(itertools.product(SDS, LIFTS)))
def test_continuous_normal_sample_size_matches_statsmodels(sd: float, lift: float) -> None:
    d = MEAN * lift / sd
    for alpha, power, sides in SETTINGS:
        ours = sample_size_continuous(
            MEAN, sd, lift, alpha=alpha, power=power, alternative=sides, method="normal"
        )
        theirs = zt_ind_solve_power(d, alpha=alpha, power=power, alternative=_sm_alternative(sides))
        assert abs(ours.n_control - math.ceil(theirs)) <= 1, (alpha, power, sides)


def test_continuous_power_matches_statsmodels() -> None:
    for n, sd, lift, alpha, sides in itertools.product((3, 50, 5_000), SDS, LIFTS, ALPHAS, SIDES):
        d = MEAN * lift / sd
        alt = _sm_alternative(sides)
        ours = power_continuous(MEAN, sd, lift, n, alpha=alpha, alternative=sides)
        theirs = TTestIndPower().power(d, n, alpha, alternative=alt)
        if math.isnan(theirs):
            # scipy's noncentral t fails deep in the far tail at large n·d²: power is ~1 there
            assert ours == pytest.approx(1.0, abs=1e-9)
        else:
            assert ours == pytest.approx(theirs, abs=1e-9)
        ours_z = power_continuous(
            MEAN, sd, lift, n, alpha=alpha, alternative=sides, method="normal"
        )
        theirs_z = NormalIndPower().power(d, n, alpha, alternative=alt)
        assert ours_z == pytest.approx(theirs_z, abs=1e-12)


def test_continuous_unequal_allocation_matches_statsmodels() -> None:
    d = cohens_d(MEAN, 40.0, 0.1)
    ours = sample_size_continuous(MEAN, 40.0, 0.1, ratio=2.0)
    theirs = TTestIndPower().solve_power(d, alpha=0.05, power=0.8, ratio=2.0)
    assert abs(ours.n_control - math.ceil(theirs)) <= 1
    assert ours.n_treatment in (math.ceil(2 * theirs) - 1, math.ceil(2 * theirs))


# --- MDE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cohen_h", "pooled", "unpooled"])
def test_proportion_mde_round_trips_with_sample_size(method: str) -> None:
    for baseline, lift, (alpha, power, sides) in itertools.product(BASELINES, LIFTS, SETTINGS[::3]):
        kw = {"alpha": alpha, "power": power, "alternative": sides, "method": method}
        size = sample_size_two_proportions(baseline, lift, **kw)
        mde = mde_two_proportions(baseline, size.n_control_exact, **kw)
        assert mde.relative_lift == pytest.approx(lift, rel=1e-7)
        # at the rounded size the MDE is at most the planned lift, and sizing it gives n back
        mde_rounded = mde_two_proportions(baseline, size.n_control, **kw)
        assert mde_rounded.relative_lift <= lift
        again = sample_size_two_proportions(baseline, mde_rounded.relative_lift, **kw)
        assert again.n_control == size.n_control
        assert mde_rounded.absolute_effect == pytest.approx(
            baseline * mde_rounded.relative_lift, rel=1e-9
        )


@pytest.mark.parametrize("method", ["t", "normal"])
def test_continuous_mde_round_trips_with_sample_size(method: str) -> None:
    for sd, lift, (alpha, power, sides) in itertools.product(SDS, LIFTS, SETTINGS[::2]):
        kw = {"alpha": alpha, "power": power, "alternative": sides, "method": method}
        size = sample_size_continuous(MEAN, sd, lift, **kw)
        mde = mde_continuous(MEAN, sd, size.n_control_exact, **kw)
        assert mde.relative_lift == pytest.approx(lift, rel=1e-7)
        again = sample_size_continuous(
            MEAN, sd, mde_continuous(MEAN, sd, size.n_control, **kw).relative_lift, **kw
        )
        assert again.n_control == size.n_control


def test_continuous_mde_matches_statsmodels_effect_size_solve() -> None:
    # statsmodels solves the effect size only to about 1e-4; its power at ours is exact
    d = TTestIndPower().solve_power(nobs1=10_000, alpha=0.05, power=0.8)
    mde = mde_continuous(MEAN, 40.0, 10_000)
    assert mde.effect_size == pytest.approx(d, rel=1e-3)
    assert TTestIndPower().power(mde.effect_size, 10_000, 0.05) == pytest.approx(0.8, abs=1e-12)
    assert mde.relative_lift == pytest.approx(mde.effect_size * 40.0 / MEAN, rel=1e-12)


def test_mde_unreachable_raises() -> None:
    with pytest.raises(ValueError, match="more users are needed"):
        mde_two_proportions(0.3, 5, power=0.9)


# --- duration ------------------------------------------------------------------------------------


def test_experiment_duration_days() -> None:
    assert experiment_duration_days(10_000, 1_000) == 10
    assert experiment_duration_days(10_001, 1_000) == 11
    assert experiment_duration_days(10_000, 1_000, allocation_share=0.5) == 20
    assert experiment_duration_days(10, 1_000) == 1
    # One user past ten days' arrivals needs an eleventh day, however large the days are.
    assert experiment_duration_days(10_000_001, 1_000_000) == 11
    # 1000 / (1000 * 0.1) is 10.000000000000002 in floating point; 10 days enrol all 1000.
    assert experiment_duration_days(1_000, 1_000, allocation_share=0.1) == 10
    # A segment's daily visitors are a count over a window: the days, exactly, are
    # ceil(total * window / visitors), whatever the floating point of visitors / window.
    for total in range(1, 400):
        for visitors in range(1, 121):
            exact = math.ceil(Fraction(total * 14, visitors))
            assert experiment_duration_days(total, visitors / 14) == max(1, exact)
    size = sample_size_two_proportions(0.05, 0.1)
    assert experiment_duration_days(size, 5_000, 0.2) == math.ceil(size.total / 1_000)
    assert isinstance(size, SampleSize)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_size_two_proportions(0.0, 0.1), "p_control must be strictly between"),
        (lambda: sample_size_two_proportions(1.2, 0.1), "p_control must be strictly between"),
        (lambda: sample_size_two_proportions(0.6, 1.0), "outside \\(0, 1\\)"),
        (lambda: sample_size_two_proportions(0.05, 0.0), "lift must not be zero"),
        (lambda: sample_size_two_proportions(0.05, 0.1, alpha=0.0), "alpha must be strictly"),
        (lambda: sample_size_two_proportions(0.05, 0.1, power=1.0), "power must be strictly"),
        (
            lambda: sample_size_two_proportions(0.05, 0.1, alpha=0.5, power=0.4),
            "must be greater than alpha",
        ),
        (
            lambda: sample_size_two_proportions(0.05, 0.1, alternative="greater"),  # type: ignore[arg-type]
            "alternative must be one of",
        ),
        (
            lambda: sample_size_two_proportions(0.05, 0.1, method="exact"),  # type: ignore[arg-type]
            "method must be one of",
        ),
        (lambda: sample_size_two_proportions(0.05, 0.1, ratio=0), "ratio must be positive"),
        (lambda: sample_size_two_proportions(float("nan"), 0.1), "p_control must be finite"),
        (lambda: power_two_proportions(0.05, 0.1, -5), "n_control must be positive"),
        (lambda: sample_size_continuous(10.0, 0.0, 0.1), "sd must be positive"),
        (lambda: sample_size_continuous(-1.0, 5.0, 0.1), "mean must be positive"),
        (lambda: mde_continuous(10.0, 5.0, 1), "at least 2 users in each arm"),
        (lambda: experiment_duration_days(100, 0), "daily_eligible_users must be positive"),
        (lambda: experiment_duration_days(100, 10, 1.5), "allocation_share must be in"),
        (lambda: sample_size_two_proportions("0.05", 0.1), "must be a real number"),  # type: ignore[arg-type]
    ],
)
def test_invalid_inputs_raise_clear_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()
