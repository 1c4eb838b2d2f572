"""Power, sample size and minimum detectable effect for two-arm A/B tests.

Conventions used throughout:

* Arm 1 is the control (A), arm 2 the treatment (B); `ratio` is n_treatment / n_control, so a
  50/50 split is `ratio=1` and then `n_control == n_treatment` is "the sample size per arm".
* Effects are relative lifts on the control: p_treatment = p_control * (1 + lift) for a
  conversion rate, mean_treatment = mean * (1 + lift) for a continuous metric. Negative lifts
  (a drop) are accepted by the power and sample-size functions; the MDE functions look for an
  increase.
* `alternative` is "two-sided" or "one-sided"; a one-sided test is taken to be in the direction
  of the lift. Two-sided power includes the (tiny) probability of rejecting in the wrong tail,
  exactly as statsmodels' power classes do, so solved sizes are statsmodels' solved sizes. The
  textbook closed forms n = (z_{α/2} + z_β)²·var/δ² ignore that tail, so for two-sided tests
  they come out slightly larger (by about 0.005 % at α = 0.10, a few users in 100 000).
* Sample sizes are rounded up (`math.ceil`) after solving power(n) = target for a real n;
  `SampleSize.n_control_exact` keeps the unrounded root.

Proportions (conversion rate) support three methods:

* ``"cohen_h"`` (default, and what the A/B power tables use): the normal approximation on
  Cohen's h = 2·asin(√p_t) − 2·asin(√p_c), whose variance is 1/n_c + 1/n_t whatever the
  rates. This is statsmodels' ``NormalIndPower`` with ``proportion_effectsize``.
* ``"pooled"``: z-test with the pooled rate under the null and the unpooled variance under the
  alternative (the textbook / Fleiss formula without continuity correction); this is
  statsmodels' ``power_proportions_2indep``.
* ``"unpooled"``: Wald z-test with the unpooled variance p(1−p) under both hypotheses.

Over the planning grid (baselines 1–30 %, lifts 5–50 %, the tables' alphas, powers and
sides) Cohen's h is within 1 % of pooled (from 0.24 % more to 0.99 % fewer users) and within
1.5 % of unpooled (from 1.47 % more to 0.95 % fewer); the gaps grow with the lift.

Continuous metrics (revenue per user) use Cohen's d = mean·lift / sd with a common standard
deviation in both arms, and either the exact noncentral-t power of the two-sample t-test
(``method="t"``, statsmodels' ``TTestIndPower``) or its normal approximation
(``method="normal"``, statsmodels' ``NormalIndPower`` / ``zt_ind_solve_power``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from typing import Literal

from scipy import stats
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from cip_pipeline.stats._validation import (
    POWER_ALTERNATIVES,
    check_alpha_power,
    check_choice,
    check_count,
    check_nonnegative,
    check_nonzero,
    check_open_unit,
    check_positive,
)

PowerAlternative = Literal["two-sided", "one-sided"]
ProportionMethod = Literal["cohen_h", "pooled", "unpooled"]
ContinuousMethod = Literal["t", "normal"]

PROPORTION_METHODS: tuple[str, ...] = ("cohen_h", "pooled", "unpooled")
CONTINUOUS_METHODS: tuple[str, ...] = ("t", "normal")

# A solved n within this distance above an integer is taken as that integer before the ceiling,
# so that floating-point noise in the root (about 1e-9) never adds a whole unit.
_CEIL_SLACK = 1e-6
_MAX_N = 1e15


@dataclass(frozen=True)
class SampleSize:
    """Required sample size for a two-arm test (per arm when `ratio == 1`)."""

    n_control: int
    n_treatment: int
    n_control_exact: float  # the real root of power(n) = target, before rounding up
    baseline: float  # p_control for proportions, the control mean for continuous metrics
    lift: float  # relative lift on the baseline
    absolute_effect: float  # p_treatment - p_control, or mean difference
    effect_size: float  # Cohen's h (proportions) or Cohen's d (continuous), signed
    achieved_power: float  # power at the rounded sizes, >= target power
    alpha: float
    power: float
    alternative: str
    method: str

    @property
    def total(self) -> int:
        return self.n_control + self.n_treatment


@dataclass(frozen=True)
class MinimumDetectableEffect:
    """Smallest relative increase detectable with the given sizes, alpha and power."""

    relative_lift: float
    absolute_effect: float  # p_treatment - p_control, or mean difference
    effect_size: float  # Cohen's h or Cohen's d
    baseline: float
    n_control: float
    n_treatment: float
    alpha: float
    power: float
    alternative: str
    method: str


# ---------------------------------------------------------------------------------------------
# Effect sizes


def cohens_h(p_control: float, p_treatment: float) -> float:
    """Cohen's h = 2·asin(√p_treatment) − 2·asin(√p_control).

    Equal to statsmodels' ``proportion_effectsize(p_treatment, p_control)``.
    """
    p1 = check_open_unit("p_control", p_control)
    p2 = check_open_unit("p_treatment", p_treatment)
    return 2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1))


def cohens_d(mean: float, sd: float, lift: float) -> float:
    """Cohen's d for a relative lift on the mean: mean·lift / sd (common sd in both arms)."""
    m = check_positive("mean", mean)
    s = check_positive("sd", sd)
    return m * check_nonzero("lift", lift) / s


# ---------------------------------------------------------------------------------------------
# Power kernels (inputs already validated; effect sizes as absolute values)


def _normal_power(delta: float, s0: float, s1: float, n1: float, alpha: float, sides: str) -> float:
    """Power of a z-test of an effect `delta` > 0 whose estimate has standard deviation
    s0/√n1 under the null and s1/√n1 under the alternative (statsmodels' normal_power_het)."""
    # scipy.special's ndtr / ndtri are the standard normal cdf / quantile behind stats.norm,
    # without its per-call overhead (this kernel runs inside root finders)
    root_n = math.sqrt(n1)
    if sides == "two-sided":
        crit = -float(ndtri(alpha / 2.0))
        upper = ndtr((delta * root_n - crit * s0) / s1)
        lower = ndtr((-crit * s0 - delta * root_n) / s1)
        return float(upper + lower)
    crit = -float(ndtri(alpha))
    return float(ndtr((delta * root_n - crit * s0) / s1))


def _t_power(d: float, n1: float, ratio: float, alpha: float, sides: str) -> float:
    """Exact power of the two-sample (pooled-variance) t-test via the noncentral t."""
    n2 = n1 * ratio
    df = n1 + n2 - 2.0
    nc = d * math.sqrt(n1 * n2 / (n1 + n2))
    if sides == "two-sided":
        crit = stats.t.isf(alpha / 2.0, df)
        far = float(stats.nct.cdf(-crit, df, nc))
        if not math.isfinite(far):
            # scipy's noncentral t returns NaN deep in the lower tail when nc is large; the
            # term is negligible there, so take its normal approximation
            far = float(stats.norm.cdf(-crit - nc))
        # for nc > 0 the far tail is below its null value alpha/2, whatever the rounding
        far = min(max(far, 0.0), alpha / 2.0)
        return min(1.0, float(stats.nct.sf(crit, df, nc)) + far)
    crit = stats.t.isf(alpha, df)
    return float(stats.nct.sf(crit, df, nc))


def _proportion_terms(
    p1: float, p2: float, method: str, ratio: float
) -> tuple[float, float, float]:
    """(|effect|, s0, s1) for `_normal_power` on the scale the method tests on."""
    if method == "cohen_h":
        h = abs(2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1)))
        s = math.sqrt(1.0 + 1.0 / ratio)
        return h, s, s
    s1 = math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2) / ratio)
    if method == "unpooled":
        return abs(p2 - p1), s1, s1
    pooled = (p1 + ratio * p2) / (1.0 + ratio)
    s0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 + 1.0 / ratio))
    return abs(p2 - p1), s0, s1


def _solve_increasing(
    fn: Callable[[float], float], target: float, lo: float, guess: float, xtol: float = 1e-10
) -> float:
    """Root of fn(x) = target for an increasing fn on [lo, _MAX_N]; lo if fn(lo) >= target.
    A root past _MAX_N is refused, also when the first guess already lies past it."""
    if fn(lo) >= target:
        return lo
    hi = min(max(guess, 2.0 * lo), _MAX_N)
    while fn(hi) < target:
        if hi >= _MAX_N:
            raise ValueError("the required sample size is unbounded for this effect")
        lo, hi = hi, min(2.0 * hi, _MAX_N)
    return float(brentq(lambda x: fn(x) - target, lo, hi, xtol=xtol, maxiter=500))


def _normal_guess(effect: float, alpha: float, power: float, sides: str, ratio: float) -> float:
    z_a = stats.norm.isf(alpha / 2.0 if sides == "two-sided" else alpha)
    z_b = stats.norm.isf(1.0 - power)
    return float((z_a + z_b) ** 2 * (1.0 + 1.0 / ratio) / effect**2)


def _round_up(n_exact: float, ratio: float) -> tuple[int, int]:
    n1 = max(1, math.ceil(n_exact - _CEIL_SLACK))
    n2 = max(1, math.ceil(n_exact * ratio - _CEIL_SLACK))
    return n1, n2


# ---------------------------------------------------------------------------------------------
# Proportions


def _check_common(
    alternative: str, ratio: float, method: str, methods: tuple[str, ...]
) -> tuple[str, float, str]:
    return (
        check_choice("alternative", alternative, POWER_ALTERNATIVES),
        check_positive("ratio", ratio),
        check_choice("method", method, methods),
    )


def _treatment_rate(p1: float, lift: float) -> float:
    lift = check_nonzero("lift", lift)
    p2 = p1 * (1.0 + lift)
    if not 0.0 < p2 < 1.0:
        raise ValueError(
            f"lift {lift} takes p_control {p1} to {p2}, outside (0, 1); "
            f"lift must lie in (-1, {1.0 / p1 - 1.0:.6g})"
        )
    return p2


def power_two_proportions(
    p_control: float,
    lift: float,
    n_control: float,
    *,
    alpha: float = 0.05,
    alternative: PowerAlternative = "two-sided",
    method: ProportionMethod = "cohen_h",
    ratio: float = 1.0,
) -> float:
    """Power to detect p_treatment = p_control·(1 + lift) with `n_control` users in control and
    `ratio·n_control` in treatment."""
    p1 = check_open_unit("p_control", p_control)
    p2 = _treatment_rate(p1, lift)
    n1 = check_positive("n_control", n_control)
    a = check_open_unit("alpha", alpha)
    sides, r, m = _check_common(alternative, ratio, method, PROPORTION_METHODS)
    delta, s0, s1 = _proportion_terms(p1, p2, m, r)
    return _normal_power(delta, s0, s1, n1, a, sides)


def sample_size_two_proportions(
    p_control: float,
    lift: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: PowerAlternative = "two-sided",
    method: ProportionMethod = "cohen_h",
    ratio: float = 1.0,
) -> SampleSize:
    """Users needed in each arm to detect a relative `lift` on the conversion rate `p_control`.

    With the default ``method="cohen_h"`` and ``ratio=1`` this equals
    ``ceil(NormalIndPower().solve_power(proportion_effectsize(p_t, p_c), alpha=alpha,
    power=power, alternative="two-sided" | "larger"))``.
    """
    p1 = check_open_unit("p_control", p_control)
    p2 = _treatment_rate(p1, lift)
    a, pw = check_alpha_power(alpha, power)
    sides, r, m = _check_common(alternative, ratio, method, PROPORTION_METHODS)
    delta, s0, s1 = _proportion_terms(p1, p2, m, r)

    def fn(n: float) -> float:
        return _normal_power(delta, s0, s1, n, a, sides)

    guess = _normal_guess(delta / s1 * math.sqrt(1.0 + 1.0 / r), a, pw, sides, r)
    n_exact = _solve_increasing(fn, pw, 1e-6, guess)
    n1, n2 = _round_up(n_exact, r)
    achieved = _normal_power(*_proportion_terms(p1, p2, m, n2 / n1), n1, a, sides)
    return SampleSize(
        n_control=n1,
        n_treatment=n2,
        n_control_exact=n_exact,
        baseline=p1,
        lift=float(lift),
        absolute_effect=p2 - p1,
        effect_size=cohens_h(p1, p2),
        achieved_power=achieved,
        alpha=a,
        power=pw,
        alternative=sides,
        method=m,
    )


def mde_two_proportions(
    p_control: float,
    n_control: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: PowerAlternative = "two-sided",
    method: ProportionMethod = "cohen_h",
    ratio: float = 1.0,
) -> MinimumDetectableEffect:
    """Smallest relative lift (an increase) on `p_control` detectable with `n_control` users in
    control and `ratio·n_control` in treatment. Inverse of `sample_size_two_proportions`.

    Raises ValueError when even p_treatment → 1 is not detectable with this many users.
    """
    p1 = check_open_unit("p_control", p_control)
    n1 = check_positive("n_control", n_control)
    a, pw = check_alpha_power(alpha, power)
    sides, r, m = _check_common(alternative, ratio, method, PROPORTION_METHODS)

    def fn(lift: float) -> float:
        return _normal_power(*_proportion_terms(p1, p1 * (1.0 + lift), m, r), n1, a, sides)

    max_lift = (1.0 / p1 - 1.0) * (1.0 - 1e-12)
    if fn(max_lift) < pw:
        raise ValueError(
            f"no lift on p_control={p1} reaches power {pw} with n_control={n1} "
            "(even p_treatment close to 1 is not detectable); more users are needed"
        )
    lift = float(brentq(lambda x: fn(x) - pw, 1e-12, max_lift, xtol=1e-14, maxiter=500))
    p2 = p1 * (1.0 + lift)
    return MinimumDetectableEffect(
        relative_lift=lift,
        absolute_effect=p2 - p1,
        effect_size=cohens_h(p1, p2),
        baseline=p1,
        n_control=n1,
        n_treatment=n1 * r,
        alpha=a,
        power=pw,
        alternative=sides,
        method=m,
    )


# ---------------------------------------------------------------------------------------------
# Continuous metrics


def _continuous_power(d: float, n1: float, r: float, alpha: float, sides: str, m: str) -> float:
    if m == "t":
        return _t_power(d, n1, r, alpha, sides)
    s = math.sqrt(1.0 + 1.0 / r)
    return _normal_power(d, s, s, n1, alpha, sides)


def _t_lower_bound(r: float) -> float:
    # at least 2 users in each arm, so that both sample variances exist
    return max(2.0, 2.0 / r)


def power_continuous(
    mean: float,
    sd: float,
    lift: float,
    n_control: float,
    *,
    alpha: float = 0.05,
    alternative: PowerAlternative = "two-sided",
    method: ContinuousMethod = "t",
    ratio: float = 1.0,
) -> float:
    """Power to detect mean_treatment = mean·(1 + lift) for a metric with standard deviation
    `sd` (the same in both arms)."""
    d = abs(cohens_d(mean, sd, lift))
    n1 = check_positive("n_control", n_control)
    a = check_open_unit("alpha", alpha)
    sides, r, m = _check_common(alternative, ratio, method, CONTINUOUS_METHODS)
    if m == "t" and n1 * (1.0 + r) <= 2.0:
        raise ValueError("the t-test needs more than 2 users in total")
    return _continuous_power(d, n1, r, a, sides, m)


def sample_size_continuous(
    mean: float,
    sd: float,
    lift: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: PowerAlternative = "two-sided",
    method: ContinuousMethod = "t",
    ratio: float = 1.0,
) -> SampleSize:
    """Users needed in each arm to detect a relative `lift` on the mean of a continuous metric
    (e.g. revenue per user) with standard deviation `sd`.

    ``method="t"`` equals ``ceil(TTestIndPower().solve_power(d, ...))``, ``method="normal"``
    equals ``ceil(NormalIndPower().solve_power(d, ...))`` with d = mean·lift/sd.
    """
    d_signed = cohens_d(mean, sd, lift)
    d = abs(d_signed)
    a, pw = check_alpha_power(alpha, power)
    sides, r, m = _check_common(alternative, ratio, method, CONTINUOUS_METHODS)

    def fn(n: float) -> float:
        return _continuous_power(d, n, r, a, sides, m)

    lo = _t_lower_bound(r) if m == "t" else 1e-6
    n_exact = _solve_increasing(fn, pw, lo, _normal_guess(d, a, pw, sides, r))
    n1, n2 = _round_up(n_exact, r)
    return SampleSize(
        n_control=n1,
        n_treatment=n2,
        n_control_exact=n_exact,
        baseline=float(mean),
        lift=float(lift),
        absolute_effect=float(mean) * float(lift),
        effect_size=d_signed,
        achieved_power=_continuous_power(d, n1, n2 / n1, a, sides, m),
        alpha=a,
        power=pw,
        alternative=sides,
        method=m,
    )


def mde_continuous(
    mean: float,
    sd: float,
    n_control: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: PowerAlternative = "two-sided",
    method: ContinuousMethod = "t",
    ratio: float = 1.0,
) -> MinimumDetectableEffect:
    """Smallest relative lift (an increase) on `mean` detectable with `n_control` users in
    control and `ratio·n_control` in treatment. Inverse of `sample_size_continuous`."""
    mu = check_positive("mean", mean)
    s = check_positive("sd", sd)
    n1 = check_positive("n_control", n_control)
    a, pw = check_alpha_power(alpha, power)
    sides, r, m = _check_common(alternative, ratio, method, CONTINUOUS_METHODS)
    if m == "t" and (n1 < 2.0 or n1 * r < 2.0):
        raise ValueError("the t-test needs at least 2 users in each arm")

    def fn(d: float) -> float:
        return _continuous_power(d, n1, r, a, sides, m)

    d = _solve_increasing(fn, pw, 1e-12, 4.0 / math.sqrt(n1), xtol=1e-15)
    return MinimumDetectableEffect(
        relative_lift=d * s / mu,
        absolute_effect=d * s,
        effect_size=d,
        baseline=mu,
        n_control=n1,
        n_treatment=n1 * r,
        alpha=a,
        power=pw,
        alternative=sides,
        method=m,
    )


# ---------------------------------------------------------------------------------------------
# Duration


def experiment_duration_days(
    total_sample_size: int | SampleSize,
    daily_eligible_users: float,
    allocation_share: float = 1.0,
) -> int:
    """Whole days needed to enrol `total_sample_size` users (both arms together, or a
    `SampleSize`) when `daily_eligible_users` new eligible users arrive per day and the share
    `allocation_share` of them enters the experiment.

    Users are assumed distinct across days: pass the number of *new* eligible users per day,
    not daily active users, or returning visitors will be counted twice. A fixed group's new
    arrivals slow down as its members are reached: for one, see `days_to_enrol`.
    """
    total = (
        total_sample_size.total
        if isinstance(total_sample_size, SampleSize)
        else check_positive("total_sample_size", total_sample_size)
    )
    daily = check_positive("daily_eligible_users", daily_eligible_users)
    share = check_positive("allocation_share", allocation_share)
    if share > 1.0:
        raise ValueError(f"allocation_share must be in (0, 1], got {allocation_share!r}")
    per_day = daily * share
    days = math.ceil(total / per_day)
    # Rounding can lift a whole number of days past it (1000 / (1000 * 0.1) is
    # 10.000000000000002, 61 / (61 / 14) is 14.000000000000002): one day fewer is the answer
    # when it enrols everyone but a rounding error's share (1e-12) of a user.
    if days > 1 and (days - 1) * per_day >= total * (1 - 1e-12):
        days -= 1
    return max(1, days)


# A fixed group's members are enrolled as they first visit; past the days observed, new
# arrivals are extrapolated at the rate of this many latest days.
RECENT_ARRIVAL_DAYS = 7


@dataclass(frozen=True)
class Enrolment:
    """Days for a test that enrols a fixed group's members at their first visit to reach a
    sample. `days` is None when it is never reached, `why_not` says why."""

    days: int | None
    extrapolated: bool  # past the observed days: at an assumed rate of new arrivals
    why_not: str | None = None


def _check_reached(reached_by_day: Sequence[int]) -> list[int]:
    reached = [check_count("reached_by_day", r) for r in reached_by_day]
    if not reached:
        raise ValueError("reached_by_day needs at least one observed day")
    if any(b < a for a, b in pairwise(reached)):
        raise ValueError("reached_by_day must not decrease: it counts distinct members so far")
    return reached


def recent_arrival_rate(
    reached_by_day: Sequence[int], recent_days: int = RECENT_ARRIVAL_DAYS
) -> Fraction:
    """New members per day over the last `recent_days` observed days (all of them when fewer
    were observed), exactly. `reached_by_day[i]` is how many distinct members had made a first
    visit by the end of day i + 1."""
    reached = _check_reached(reached_by_day)
    k = min(check_count("recent_days", recent_days, minimum=1), len(reached))
    before = reached[-1 - k] if len(reached) > k else 0
    return Fraction(reached[-1] - before, k)


def _rate_after(
    reached: list[int], recent_days: int, rate_after: float | Fraction | None
) -> Fraction:
    if rate_after is None:
        return recent_arrival_rate(reached, recent_days)
    if isinstance(rate_after, Fraction):
        check_nonnegative("rate_after", float(rate_after))
        return rate_after
    # the decimal a float prints as (what was typed), not its binary expansion: 0.7 a day
    # for 7 members is 10 days, not 11
    return Fraction(str(check_nonnegative("rate_after", rate_after)))


def days_to_enrol(
    total_sample_size: int,
    reached_by_day: Sequence[int],
    *,
    people: int | None = None,
    recent_days: int = RECENT_ARRIVAL_DAYS,
    rate_after: float | Fraction | None = None,
) -> Enrolment:
    """Days until `total_sample_size` distinct members (both arms) have made a first visit,
    read off the observed cumulative count `reached_by_day` (day 1 first); past the observed
    days, new members keep arriving at `rate_after` a day, by default the latest
    `recent_days`' rate (`extrapolated`). A group of `people` can never supply more."""
    total = check_count("total_sample_size", total_sample_size, minimum=1)
    reached = _check_reached(reached_by_day)
    if total <= reached[-1]:
        return Enrolment(bisect_left(reached, total) + 1, extrapolated=False)
    if people is not None and total > people:
        return Enrolment(
            None, False, f"needs {total:,} members; the group has {people:,}, however long"
        )
    rate = _rate_after(reached, recent_days, rate_after)
    if rate == 0:
        return Enrolment(
            None, False, f"needs {total:,} members; {reached[-1]:,} came, and no new ones lately"
        )
    # whole days, exactly: the counts are integers and the rate a fraction
    return Enrolment(len(reached) + math.ceil((total - reached[-1]) / rate), extrapolated=True)


def members_enrolled_by(
    days: int,
    reached_by_day: Sequence[int],
    *,
    people: int | None = None,
    recent_days: int = RECENT_ARRIVAL_DAYS,
    rate_after: float | Fraction | None = None,
) -> float:
    """Distinct members who have made a first visit by the end of day `days`: as observed
    within the observed days, then at `rate_after` a day (by default the latest
    `recent_days`' rate), never more than `people`."""
    d = check_count("days", days, minimum=1)
    reached = _check_reached(reached_by_day)
    if d <= len(reached):
        return float(reached[d - 1])
    more = reached[-1] + _rate_after(reached, recent_days, rate_after) * (d - len(reached))
    return float(min(more, people) if people is not None else more)
