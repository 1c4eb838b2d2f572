"""The experiment assets on a window with no buyers before it: they say so, not crash."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pydantic
import pytest
from statsmodels.stats.power import TTestIndPower

from cip_pipeline import stats
from cip_pipeline.assets import experiments as ex
from cip_pipeline.assets.common import SKIPPED
from cip_pipeline.io_managers import SqlTable
from cip_pipeline.resources import WarehouseResource


def test_no_buyers_before_the_cutoff_is_a_named_skip(tmp_path: Path) -> None:
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    with warehouse.connect() as con:
        con.execute("CREATE SCHEMA experiments")
        con.execute(
            "CREATE TABLE experiments.segment_outcomes (user_id INTEGER, segment VARCHAR, "
            "pre_revenue DOUBLE, bought BOOLEAN, revenue DOUBLE, active BOOLEAN, "
            "first_active_day DATE, cutoff TIMESTAMP, window_end TIMESTAMP)"
        )
    outcomes = SqlTable("experiments", "segment_outcomes")
    results = {
        ex.POWER_KEY: list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes)),
        ex.PLANS_KEY: list(ex.segment_test_plans(warehouse=warehouse, outcomes=outcomes)),
    }
    for key, events in results.items():
        assert len(events) == 1, key
        (observation,) = events
        assert isinstance(observation, dg.AssetObservation)
        assert observation.asset_key == key
        assert observation.metadata[SKIPPED].value == ex.NO_BUYERS


CUTOFF = datetime(2019, 11, 16)


def _outcomes(
    tmp_path: Path, frame: pl.DataFrame, days: int = 14
) -> tuple[WarehouseResource, SqlTable]:
    """experiments.segment_outcomes holding `frame` (user_id, segment, pre_revenue, bought,
    revenue, active, and first_active_day or, without it, active members' first visits
    spread evenly over the window: on day 1 + user_id % days), over a `days`-day window."""
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    if "first_active_day" not in frame.columns:
        frame = _spread(frame, days)
    rows = frame.with_columns(
        pl.col("first_active_day").cast(pl.Date),
        cutoff=pl.lit(CUTOFF),
        window_end=pl.lit(CUTOFF + timedelta(days=days)),
    )
    with warehouse.connect() as con:
        con.execute("CREATE SCHEMA experiments")
        con.register("rows", rows)
        con.execute("CREATE TABLE experiments.segment_outcomes AS SELECT * FROM rows")
    return warehouse, SqlTable("experiments", "segment_outcomes")


def _spread(frame: pl.DataFrame, days: int) -> pl.DataFrame:
    """Active members first visit on day 1 + user_id % days of the window."""
    return frame.with_columns(
        first_active_day=pl.when(pl.col("active")).then(
            pl.lit(CUTOFF.date()) + pl.duration(days=pl.col("user_id") % days)
        )
    )


def _segment(
    name: str, users: int, buyers: int, first_id: int, revenue: float = 0.0
) -> pl.DataFrame:
    ids = range(first_id, first_id + users)
    return pl.DataFrame(
        {
            "user_id": list(ids),
            "segment": [name] * users,
            "pre_revenue": [10.0 + i % 7 for i in ids],
            "bought": [i - first_id < buyers for i in ids],
            "revenue": [revenue if i - first_id < buyers else 0.0 for i in ids],
            "active": [True] * users,
        }
    )


def _output(events: list[dg.Output | dg.AssetObservation]) -> dg.Output:
    (output,) = [e for e in events if isinstance(e, dg.Output)]
    return output


def test_a_window_without_revenue_is_analysed_without_its_revenue_tests(tmp_path: Path) -> None:
    """No at-risk visitor bought in the window: the conversion, Bayesian and SRM rows hold
    their figures, and the revenue tests (no variance, no t statistic) are rows with none and
    the reason. Members who did not visit are not in the test at all."""
    frame = pl.concat(
        [
            _segment("At Risk", 60, 0, 1),
            _segment("At Risk", 500, 0, 101).with_columns(active=pl.lit(False)),
        ]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    output = _output(list(ex.reactivation_simulation(ex.ExperimentConfig(), warehouse, outcomes)))
    table = output.value
    assert table["users"].unique().to_list() == [60]
    methods = {r["method"]: r for r in table.iter_rows(named=True)}
    assert set(methods) == {
        "two-proportion z-test",
        "beta-binomial P(B>A)",
        "sample-ratio mismatch chi-square",
        ex.WELCH,
        ex.CUPED,
    }
    conversion = methods["two-proportion z-test"]
    assert conversion["estimate"] == 0.0 and conversion["p_value"] == 1.0
    for method in (ex.WELCH, ex.CUPED):
        assert methods[method]["estimate"] is None and methods[method]["p_value"] is None
        assert "revenue does not vary" in methods[method]["note"]
    assert set(output.metadata["not_tested"].value) == {ex.WELCH, ex.CUPED}
    # a relative lift on a rate of 0 adds no conversion: what is recorded is what happened
    row = table.row(0, named=True)
    assert row["requested_conversion_lift"] == 0.2 and row["injected_conversion_lift"] == 0.0
    assert "0%" in row["injection_note"]


def test_simulated_new_buyers_spend_like_the_real_ones(tmp_path: Path) -> None:
    """Every real buyer spent 100 and nobody else anything: with no spend lift injected,
    each arm's revenue per user is 100 times its conversion rate, new buyers included, so the
    revenue difference is 100 times the conversion difference."""
    frame = pl.concat(
        [_segment("At Risk", 400, 80, 1, 100.0), _segment(ex.TARGET_SEGMENT, 200, 30, 1001, 100.0)]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    config = ex.ExperimentConfig(simulated_conversion_lift=0.5, simulated_spend_lift=0.0)
    table = _output(list(ex.reactivation_simulation(config, warehouse, outcomes))).value
    methods = {r["method"]: r for r in table.iter_rows(named=True)}
    conversion = methods["two-proportion z-test"]["estimate"]
    assert conversion > 0
    assert methods["Welch t-test"]["estimate"] == pytest.approx(100 * conversion, rel=1e-9)


def test_a_negative_injected_lift_and_seed_are_refused() -> None:
    """The simulation can only add conversions: a negative lift is a config error, not a
    table that reports an effect it never injected. A negative seed would crash numpy's
    generator mid-run: refused when the config is read."""
    with pytest.raises(pydantic.ValidationError, match="simulated_conversion_lift"):
        ex.ExperimentConfig(simulated_conversion_lift=-0.1)
    with pytest.raises(pydantic.ValidationError, match="simulated_spend_lift"):
        ex.ExperimentConfig(simulated_spend_lift=-1.0)
    with pytest.raises(pydantic.ValidationError, match="seed"):
        ex.ExperimentConfig(seed=-1)
    assert ex.ExperimentConfig(seed=0).seed == 0


def _spenders(users: int, share: float, spend: float, seed: int = 7) -> pl.DataFrame:
    """At-risk visitors: a random `share` bought, each spending `spend`."""
    rng = np.random.default_rng(seed)
    bought = rng.random(users) < share
    return pl.DataFrame(
        {
            "user_id": np.arange(1, users + 1),
            "segment": ["At Risk"] * users,
            "pre_revenue": 10.0 + rng.exponential(50, users),
            "bought": bought,
            "revenue": np.where(bought, spend, 0.0),
            "active": [True] * users,
        }
    )


def test_the_stated_revenue_lift_is_the_one_injected(tmp_path: Path) -> None:
    """+20% conversion (new buyers spending like the real ones, 100 each) and +15% on every
    treated user's spend lift revenue per user by 1.2 x 1.15 - 1 = 38%, not 15%: the table and
    the metadata say 38%, and the Welch interval for the difference in revenue per user (the
    control's is 10) holds 3.8 and not 1.5. With no spend lift, it is the 20% alone."""
    warehouse, outcomes = _outcomes(tmp_path, _spenders(40_000, 0.10, 100.0))
    for spend_lift, implied in ((0.15, 0.38), (0.0, 0.20)):
        config = ex.ExperimentConfig(simulated_conversion_lift=0.2, simulated_spend_lift=spend_lift)
        output = _output(list(ex.reactivation_simulation(config, warehouse, outcomes)))
        row = output.value.row(0, named=True)
        assert row["injected_conversion_lift"] == 0.2
        assert row["injected_spend_lift"] == spend_lift
        assert row["injected_revenue_per_user_lift"] == pytest.approx(implied, rel=1e-12)
        assert output.metadata["injected_revenue_per_user_lift"].value == pytest.approx(implied)
        assert row["injection_note"] is None
        welch = output.value.filter(pl.col("method") == ex.WELCH).row(0, named=True)
        assert welch["ci_low"] < implied * 10.0 < welch["ci_high"]
        assert not welch["ci_low"] < spend_lift * 10.0 < welch["ci_high"]


def test_a_conversion_lift_past_100_percent_records_what_was_injected(tmp_path: Path) -> None:
    """90% of the users bought: +20% would be 108%. Every treated non-buyer converts, a lift
    of 0.1 / 0.9 = 11.1%, and that is what the table records, with the reason; the z-test's
    interval for the difference holds 0.10, not the stated 0.18."""
    warehouse, outcomes = _outcomes(tmp_path, _spenders(20_000, 0.90, 100.0))
    config = ex.ExperimentConfig(simulated_conversion_lift=0.2, simulated_spend_lift=0.0)
    output = _output(list(ex.reactivation_simulation(config, warehouse, outcomes)))
    table = output.value
    row = table.row(0, named=True)
    base = _spenders(20_000, 0.90, 100.0)["bought"].mean()
    assert row["requested_conversion_lift"] == 0.2
    assert row["injected_conversion_lift"] == pytest.approx((1 - base) / base, rel=1e-12)
    assert row["injected_revenue_per_user_lift"] == pytest.approx((1 - base) / base)
    assert "would pass 100%" in row["injection_note"]
    assert output.metadata["injection_note"].value == row["injection_note"]
    z = table.filter(pl.col("method") == "two-proportion z-test").row(0, named=True)
    assert z["ci_low"] < 1 - base < z["ci_high"]
    assert not z["ci_low"] < 0.2 * base < z["ci_high"]
    assert ex.injected_conversion_lift(0.5, 1.0) == (1.0, None)  # exactly 100%: allowed


def _arrivals(name: str, members: int, buyers: int, per_day: list[int]) -> pl.DataFrame:
    """A segment of `members`, per_day[d] of them first visiting on day d + 1 (the others
    not at all), the first `buyers` visitors buying."""
    days = [d for d, n in enumerate(per_day) for _ in range(n)]
    frame = _segment(name, members, buyers, 1)
    first = [CUTOFF.date() + timedelta(days=d) for d in days] + [None] * (members - len(days))
    return frame.with_columns(
        active=pl.Series([d is not None for d in first]),
        first_active_day=pl.Series(first, dtype=pl.Date),
    )


def _days_oracle(total: int, frame: pl.DataFrame, window: int) -> tuple[int | None, bool | None]:
    """Days until `total` distinct members of the segment `frame` have first visited (and
    whether extrapolated), counted in Polars: within the window as observed; then at the
    latest week's arrivals, exactly; none past the segment's size or without new arrivals."""
    per_day = (
        frame.filter(pl.col("active"))
        .group_by("first_active_day")
        .len()
        .with_columns(day=(pl.col("first_active_day") - pl.lit(CUTOFF.date())).dt.total_days())
    )
    counts = dict(zip(per_day["day"].to_list(), per_day["len"].to_list(), strict=True))
    reached, have = [], 0
    for d in range(window):
        have += counts.get(d, 0)
        reached.append(have)
        if have >= total:
            return d + 1, False
    lately = Fraction(reached[-1] - (reached[-8] if window > 7 else 0), min(window, 7))
    if total > frame.height or not lately:
        return None, None
    return window + math.ceil((total - reached[-1]) / lately), True


def test_days_are_read_off_the_segments_first_visits(tmp_path: Path) -> None:
    """20,000 members, 10% of the visitors buy. 3,000 first visit on day 1, 400 a day on
    days 2-7, 20 a day on days 8-14: 5,540 in the window. +50% on 10% needs 2 x 681 = 1,362:
    day 1 (a steady 5,540 / 14 a day would say 4). +20% needs 2 x 3,835 = 7,670: 5,540 by day
    14, then 20 a day, (7,670 - 5,540) / 20 = 106.5: day 121, extrapolated and not feasible
    (the steady rate would say 20 days, feasible)."""
    per_day = [3_000] + [400] * 6 + [20] * 7
    frame = _arrivals("Champions", 20_000, 554, per_day)
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes)))
    row = plans.value.row(0, named=True)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    assert (n20, n50) == (3_835, 681)
    assert row["baseline_conversion"] == pytest.approx(0.1)
    assert row["members_reached_by_day"] == list(itertools.accumulate(per_day))
    assert row["window_days"] == 14
    assert row["new_members_per_day_latest_week"] == 20.0
    assert "daily_eligible_users" not in row
    assert (row["days_lift_50"], row["extrapolated_lift_50"], row["feasible_lift_50"]) == (
        1,
        False,
        True,
    )
    assert (row["days_lift_20"], row["extrapolated_lift_20"], row["feasible_lift_20"]) == (
        121,
        True,
        False,
    )
    # Every segment row of the power tables, against the same count in Polars.
    power = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes)))
    rows = power.value.filter(pl.col("baseline_source") == "segment: Champions")
    assert rows.height > 0
    for r in rows.iter_rows(named=True):
        total = 2 * (r["n_per_arm"] or r["sample_size"])
        assert (r["days_needed"], r["days_extrapolated"]) == _days_oracle(total, frame, 14), r
    assert rows.filter(pl.col("days_extrapolated")).height > 0
    assert rows.filter(pl.col("days_extrapolated").not_()).height > 0
    assert rows.filter(pl.col("days_needed").is_null()).height > 0  # 2 x 500,000 > 20,000


def test_the_window_is_the_one_stored_with_the_outcomes(tmp_path: Path) -> None:
    """Outcomes measured over 7 days (ExperimentConfig's window is 14): 4,000 of 20,000
    members visit, evenly over the 7 days, 400 buy. +20% needs 7,670: 4,000 by day 7, then
    4,000 / 7 a day: 7 + ceil(3,670 x 7 / 4,000) = 14 days (a 14-day divisor said 27)."""
    frame = _segment("Champions", 20_000, 400, 1).with_columns(active=pl.col("user_id") <= 4_000)
    frame = _spread(frame, 7)
    warehouse, outcomes = _outcomes(tmp_path, frame, days=7)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes)))
    row = plans.value.row(0, named=True)
    assert row["window_days"] == 7
    assert row["new_members_per_day_latest_week"] == pytest.approx(4_000 / 7)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    assert row["days_lift_20"] == 7 + math.ceil(Fraction((2 * n20 - 4_000) * 7, 4_000)) == 14
    assert row["extrapolated_lift_20"] is True
    assert plans.metadata["window"].value == "2019-11-16 to 2019-11-22 (7 days, last day included)"
    power = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes)))
    assert power.metadata["window"].value == plans.metadata["window"].value
    sizes = power.value.filter(pl.col("baseline_source") == "segment: Champions")
    assert sizes.height > 0
    for r in sizes.iter_rows(named=True):
        total = 2 * (r["n_per_arm"] or r["sample_size"])
        assert (r["days_needed"], r["days_extrapolated"]) == _days_oracle(total, frame, 7), r


def test_revenue_gets_the_conversion_grid_and_mde_rows(tmp_path: Path) -> None:
    """Revenue per visitor has the same lift x alpha x power x sidedness grid and MDE rows as
    conversion: each size is statsmodels' TTestIndPower solve (rounded up) for d = mean x
    lift / sd, each MDE its solved effect size x sd / mean, from the visitors' mean and sample
    SD computed here, with days."""
    frame = _spread(_segment("Loyal", 3_000, 300, 1), 14).with_columns(
        revenue=pl.when(pl.col("bought")).then(20.0 + (pl.col("user_id") * 37) % 200).otherwise(0.0)
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    mean, sd = frame["revenue"].mean(), frame["revenue"].std()
    power = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes))).value
    revenue = power.filter(pl.col("baseline_source") == "segment: Loyal")
    sizes = revenue.filter(pl.col("table") == "revenue_sample_size")
    grid = set(itertools.product(ex.LIFTS, ex.ALPHAS, ex.POWERS, ex.ALTERNATIVES))
    assert sizes.height == len(grid) == 48
    assert set(sizes.select("relative_lift", "alpha", "power", "alternative").iter_rows()) == grid
    solver = TTestIndPower()
    for r in sizes.iter_rows(named=True):
        assert r["baseline"] == pytest.approx(mean, rel=1e-12)
        d = mean * r["relative_lift"] / sd
        alternative = "two-sided" if r["alternative"] == "two-sided" else "larger"
        n = solver.solve_power(d, alpha=r["alpha"], power=r["power"], alternative=alternative)
        assert abs(r["n_per_arm"] - math.ceil(n)) <= 1, r
        assert (r["days_needed"], r["days_extrapolated"]) == _days_oracle(
            2 * r["n_per_arm"], frame, 14
        )
    mdes = revenue.filter(pl.col("table") == "revenue_mde")
    assert mdes["sample_size"].to_list() == list(ex.MDE_SAMPLE_SIZES)
    for r in mdes.iter_rows(named=True):
        d = solver.solve_power(nobs1=r["sample_size"], alpha=0.05, power=0.8)
        assert r["relative_lift"] == pytest.approx(d * sd / mean, rel=1e-3)
        assert (r["alpha"], r["power"], r["alternative"]) == (0.05, 0.8, "two-sided")
        assert (r["days_needed"], r["days_extrapolated"]) == _days_oracle(
            2 * r["sample_size"], frame, 14
        )
    assert sizes["days_needed"].null_count() < sizes.height  # some sizes fit the segment


def test_a_segment_smaller_than_the_test_has_no_duration(tmp_path: Path) -> None:
    """A segment is a fixed set of people: 1,000 users at a 10% baseline cannot fill the
    2 x 681 a +50% test needs, however long it runs (a steady 1000/14 a day would read as 20
    days and feasible). A segment near 100% conversion has no detectable lift: its MDE rows
    are empty, not a failed build."""
    loyal = _spread(_segment("Loyal", 1_000, 100, 1), 14)
    frame = pl.concat([loyal, _spread(_segment("Champions", 1_000, 999, 5001), 14)])
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes))).value
    row = plans.filter(pl.col("segment") == "Loyal").row(0, named=True)
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    assert 2 * n50 > 1_000 and row["n_per_arm_lift_50"] == n50
    assert row["days_lift_50"] is None and row["feasible_lift_50"] is False
    assert row["extrapolated_lift_50"] is None
    power = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes))).value
    loyal_sizes = power.filter(
        pl.col("baseline_source") == "segment: Loyal", pl.col("n_per_arm").is_not_null()
    )
    assert loyal_sizes.height > 0
    for r in loyal_sizes.iter_rows(named=True):
        assert (r["days_needed"], r["days_extrapolated"]) == _days_oracle(
            2 * r["n_per_arm"], loyal, 14
        )
    champions_mde = power.filter(
        pl.col("baseline_source") == "segment: Champions", pl.col("table") == "conversion_mde"
    )
    assert champions_mde.height == len(ex.MDE_SAMPLE_SIZES)
    assert champions_mde["relative_lift"].null_count() >= 1
    for r in champions_mde.filter(pl.col("relative_lift").is_not_null()).iter_rows(named=True):
        achieved = stats.power_two_proportions(0.999, r["relative_lift"], r["sample_size"])
        assert achieved == pytest.approx(0.8, abs=1e-6)


def test_a_segments_rate_and_arrivals_are_those_of_its_visitors(tmp_path: Path) -> None:
    """1,000 members, 200 of them active in the 14-day window, 20 of those bought: a test that
    enrols members as they visit meets those 200 converting at 10%, not at 2%; the whole
    segment still caps what it can enrol. Revenue per user is that of the visitors too."""
    frame = _segment("Loyal", 1_000, 20, 1, revenue=50.0).with_columns(
        active=pl.col("user_id") <= 200
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes))).value
    loyal = plans.row(0, named=True)
    assert (loyal["users"], loyal["active_users"]) == (1_000, 200)
    assert loyal["baseline_conversion"] == pytest.approx(0.1)
    # ids 1..200 on day 1 + id % 14: days 1..4 get 15 (ids whose residue is 0..4 hold 14 or 15)
    per_day = [sum(1 for i in range(1, 201) if i % 14 == d) for d in range(14)]
    assert loyal["members_reached_by_day"] == list(itertools.accumulate(per_day))
    assert loyal["members_reached_by_day"][-1] == 200
    assert loyal["new_members_per_day_latest_week"] == pytest.approx(sum(per_day[7:]) / 7)
    assert loyal["revenue_per_user"] == pytest.approx(20 * 50.0 / 200)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    assert loyal["n_per_arm_lift_20"] == n20
    assert loyal["days_lift_20"] is None  # 2 x n20 > 1,000 members
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    assert loyal["n_per_arm_lift_50"] == n50 and 2 * n50 > 1_000


def test_steady_arrivals_give_the_steady_rate_days(tmp_path: Path) -> None:
    """20,000 members, 4,000 visiting evenly over the 14 days (1,999 in the last 7), 400
    bought: +20% on 10% needs 2 x 3,835 = 7,670: 4,000 by day 14, then 1,999 / 7 a day:
    14 + ceil(3,670 x 7 / 1,999) = 27 days, as a steady 4,000 / 14 a day says too."""
    frame = _spread(
        _segment("Champions", 20_000, 400, 1).with_columns(active=pl.col("user_id") <= 4_000), 14
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes)))
    row = plans.value.row(0, named=True)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    assert row["new_members_per_day_latest_week"] == pytest.approx(1_999 / 7)
    assert row["days_lift_20"] == 14 + math.ceil(Fraction(3_670 * 7, 1_999)) == 27
    assert row["days_lift_20"] == math.ceil(Fraction(2 * n20 * 14, 4_000))
    assert row["extrapolated_lift_20"] is True
    assert row["feasible_lift_20"] is (row["days_lift_20"] <= ex.MAX_PLAN_DAYS)


def test_a_segment_without_visitors_has_no_rate(tmp_path: Path) -> None:
    frame = pl.concat(
        [
            _segment("Hibernating", 50, 0, 1).with_columns(active=pl.lit(False)),
            _segment("Loyal", 300, 30, 101),
        ]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes))).value
    idle = plans.filter(pl.col("segment") == "Hibernating").row(0, named=True)
    assert idle["baseline_conversion"] is None and idle["n_per_arm_lift_20"] is None
    assert idle["members_reached_by_day"] == [0] * 14
    assert idle["new_members_per_day_latest_week"] == 0.0
    power = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes))).value
    assert set(power["baseline_source"].unique()) >= {"segment: Loyal"}
    assert "segment: Hibernating" not in set(power["baseline_source"])


def test_the_outcomes_window_is_labelled_by_its_last_day(tmp_path: Path) -> None:
    """segment_outcomes over a small core.events: its metadata names the window's first and
    last day (the stored end is exclusive), and each buyer's first_active_day is their first
    event in the window, as Polars finds it."""
    events = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3, 3],
            "event_type": ["purchase", "view", "purchase", "purchase", "view", "purchase", "view"],
            "price": [5.0, 0.0, 7.0, 3.0, 0.0, 4.0, 0.0],
            "event_time": [
                datetime(2019, 11, 1, 10),
                datetime(2019, 11, 20, 9),
                datetime(2019, 11, 18, 23),
                datetime(2019, 11, 2, 8),
                datetime(2019, 11, 29, 12),
                datetime(2019, 11, 3, 8),
                datetime(2019, 11, 30, 22),
            ],
        }
    )
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    with warehouse.connect() as con:
        con.execute("CREATE SCHEMA core")
        con.register("rows", events)
        con.execute("CREATE TABLE core.events AS SELECT * FROM rows")
    output = _output(list(ex.segment_outcomes(ex.ExperimentConfig(), warehouse)))
    assert output.metadata["window"].value == (
        "2019-11-17 to 2019-11-30 (14 days, last day included)"
    )
    assert ex.window_label(datetime(2019, 11, 17), datetime(2019, 12, 1)) == (
        output.metadata["window"].value
    )
    with warehouse.connect(read_only=True) as con:
        got = con.sql(output.value.sql).pl().sort("user_id")
    window = events.filter(
        pl.col("event_time") >= datetime(2019, 11, 17), pl.col("event_time") < datetime(2019, 12, 1)
    )
    first = window.group_by("user_id").agg(pl.col("event_time").min().dt.date().alias("day"))
    want = dict(zip(first["user_id"], first["day"], strict=True))
    assert got["user_id"].to_list() == [1, 2, 3]
    assert got["first_active_day"].to_list() == [want.get(u) for u in (1, 2, 3)]
    assert got["first_active_day"].to_list()[0] is not None


def _varied(name: str, users: int, buyers: int, first_id: int) -> pl.DataFrame:
    """All `users` visit; the first `buyers` buy, spending 20 + (id x 37) % 200 (varied)."""
    return _segment(name, users, buyers, first_id).with_columns(
        revenue=pl.when(pl.col("bought")).then(20.0 + (pl.col("user_id") * 37) % 200).otherwise(0.0)
    )


def test_every_segment_left_out_of_the_power_tables_is_named(tmp_path: Path) -> None:
    """Lost: no member visited (no rate, no revenue). Hibernating: visitors, none bought (a
    lift on 0% is nothing; revenue 0 without variance). Champions: every visitor bought,
    each 100 (no room for a lift; revenue without variance). Potential: 90% bought, so +20%
    and +50% pass 100% (0.9 x 1.2 = 1.08) while +5% and +10% do not. Loyal: 999 of 1,000
    bought: every lift in the grid passes 100% (0.999 x 1.05 > 1), and some MDE rows are
    empty. Every left-out grid row and empty MDE row is in `not_planned` with its reason;
    nothing else is."""
    frame = pl.concat(
        [
            _segment("Lost", 40, 0, 1).with_columns(active=pl.lit(False)),
            _segment("Hibernating", 50, 0, 101),
            _segment("Champions", 30, 30, 201, revenue=100.0),
            _varied("Potential", 100, 90, 301),
            _varied("Loyal", 1_000, 999, 1_001),
            _varied("Regular", 500, 50, 3_001),
        ]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    output = _output(list(ex.ab_power_tables(dg.build_asset_context(), warehouse, outcomes)))
    table = output.value
    assert output.metadata["segments"].value == 6
    entries = output.metadata["not_planned"].value
    got = {
        (e["baseline_source"], e["metric"], e["relative_lift"], e["sample_size"]): e["reason"]
        for e in entries
    }
    assert len(got) == len(entries)  # one entry per thing left out
    whole = {k: v for k, v in got.items() if k[2] is None and k[3] is None}
    assert set(whole) == {
        ("segment: Lost", "conversion", None, None),
        ("segment: Lost", "revenue", None, None),
        ("segment: Hibernating", "conversion", None, None),
        ("segment: Hibernating", "revenue", None, None),
        ("segment: Champions", "conversion", None, None),
        ("segment: Champions", "revenue", None, None),
    }
    assert "no member visited" in whole[("segment: Lost", "conversion", None, None)]
    assert "no visitor bought" in whole[("segment: Hibernating", "conversion", None, None)]
    assert "every visitor bought" in whole[("segment: Champions", "conversion", None, None)]
    assert "no variance" in whole[("segment: Champions", "revenue", None, None)]
    for name in ("Lost", "Hibernating", "Champions"):
        assert f"segment: {name}" not in set(table["baseline_source"])
    # a lift is left out of the grid exactly when it takes the rate to 100% or past it
    lifts = {(k[0], k[2]): v for k, v in got.items() if k[2] is not None}
    want = {
        (f"segment: {name}", lift)
        for name, p in (("Potential", 0.9), ("Loyal", 0.999), ("Regular", 0.1))
        for lift in ex.LIFTS
        if p * (1 + lift) >= 1
    }
    assert want == {
        ("segment: Potential", 0.2),
        ("segment: Potential", 0.5),
        *(("segment: Loyal", lift) for lift in ex.LIFTS),
    }
    assert set(lifts) == want
    assert "would pass 100%" in lifts[("segment: Potential", 0.5)]
    sizes = table.filter(pl.col("table") == "conversion_sample_size")
    for source, lift in want:
        assert sizes.filter(
            pl.col("baseline_source") == source, pl.col("relative_lift") == lift
        ).is_empty()
    # every empty MDE row is named, with the sample size it is for
    empty = table.filter(pl.col("table").str.ends_with("_mde"), pl.col("relative_lift").is_null())
    assert empty.height > 0
    named = {(k[0], k[1], k[3]) for k in got if k[3] is not None}
    assert named == {
        (r["baseline_source"], r["table"].removesuffix("_mde"), r["sample_size"])
        for r in empty.iter_rows(named=True)
    }
    # the segments with figures have their rows: conversion and revenue both
    for name in ("Potential", "Loyal", "Regular"):
        rows = table.filter(pl.col("baseline_source") == f"segment: {name}")
        assert set(rows["table"]) >= {"conversion_mde", "revenue_sample_size", "revenue_mde"}


def test_plans_say_why_a_lift_has_no_plan(tmp_path: Path) -> None:
    """Each lift's plan says why it has no sample size or is not feasible, and nothing when it
    is: no visitor, 0%, 100%, a lift past 100% (0.7 x 1.5 = 1.05), a segment of 1,000 for
    2 x 681 members, and a plan past MAX_PLAN_DAYS. Regular, 9,000 visitors at 10%, plans
    both lifts within the window: no reason."""
    frame = pl.concat(
        [
            _segment("Lost", 40, 0, 1).with_columns(active=pl.lit(False)),
            _segment("Hibernating", 50, 0, 101),
            _segment("Champions", 30, 30, 201, revenue=100.0),
            _segment("Potential", 2_000, 1_400, 1_001),
            _segment("Loyal", 1_000, 100, 5_001),
            _segment("At Risk", 20_000, 100, 10_001).with_columns(
                active=pl.col("user_id") < 11_001
            ),
            _segment("Regular", 9_000, 900, 40_001),
        ]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(warehouse, outcomes))).value
    rows = {r["segment"]: r for r in plans.iter_rows(named=True)}
    for name, phrase in (
        ("Lost", "no member visited"),
        ("Hibernating", "no visitor bought"),
        ("Champions", "every visitor bought"),
    ):
        for tag in (20, 50):
            assert rows[name][f"n_per_arm_lift_{tag}"] is None
            assert phrase in rows[name][f"reason_lift_{tag}"], (name, tag)
    potential = rows["Potential"]
    assert potential["n_per_arm_lift_20"] is not None and potential["feasible_lift_20"]
    assert potential["reason_lift_20"] is None
    assert potential["n_per_arm_lift_50"] is None
    assert "would pass 100%" in potential["reason_lift_50"]
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    loyal = rows["Loyal"]
    assert loyal["days_lift_50"] is None and not loyal["feasible_lift_50"]
    assert f"{2 * n50:,} members" in loyal["reason_lift_50"] and "1,000" in loyal["reason_lift_50"]
    at_risk = rows["At Risk"]
    assert at_risk["days_lift_20"] > ex.MAX_PLAN_DAYS and not at_risk["feasible_lift_20"]
    assert f"{at_risk['days_lift_20']} days" in at_risk["reason_lift_20"]
    assert f"{ex.MAX_PLAN_DAYS}" in at_risk["reason_lift_20"]
    assert at_risk["feasible_lift_50"] and at_risk["reason_lift_50"] is None
    assert rows["Regular"]["feasible_lift_20"] and rows["Regular"]["feasible_lift_50"]
    assert rows["Regular"]["reason_lift_20"] is None and rows["Regular"]["reason_lift_50"] is None
    # a reason exactly where the plan is not feasible
    for r in rows.values():
        for tag in (20, 50):
            assert (r[f"reason_lift_{tag}"] is None) is r[f"feasible_lift_{tag}"], r


def test_a_spend_lift_on_no_revenue_records_none_injected(tmp_path: Path) -> None:
    """No at-risk visitor spent anything: +15% on every treated user's spend multiplies
    zeros. The table and metadata record 0 spend lift and 0 revenue-per-user lift injected,
    the requested 15% beside it, and the reason."""
    warehouse, outcomes = _outcomes(tmp_path, _segment("At Risk", 60, 0, 1))
    output = _output(list(ex.reactivation_simulation(ex.ExperimentConfig(), warehouse, outcomes)))
    row = output.value.row(0, named=True)
    assert row["requested_spend_lift"] == 0.15
    assert row["injected_spend_lift"] == 0.0
    assert row["injected_revenue_per_user_lift"] == 0.0
    assert "no at-risk visitor spent anything" in row["injection_note"]
    assert output.metadata["injected_spend_lift"].value == 0.0
    assert output.metadata["injected_revenue_per_user_lift"].value == 0.0
    assert output.metadata["injection_note"].value == row["injection_note"]


@pytest.mark.parametrize("field", ["simulated_conversion_lift", "simulated_spend_lift"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 1e308])
def test_non_finite_or_overflowing_lifts_are_refused(field: str, value: float) -> None:
    """An infinite or NaN lift is refused when the config is read, naming the field, not
    recorded with a nonsense note; so is a spend lift past MAX_SPEND_LIFT (1e308 overflows
    revenue to inf and fails deep in the Welch test). A conversion lift of 1e308 is finite
    and capped at 100% with its note, like any lift that passes it."""
    if field == "simulated_conversion_lift" and value == 1e308:
        assert ex.ExperimentConfig(simulated_conversion_lift=value).simulated_conversion_lift
        return
    with pytest.raises(pydantic.ValidationError, match=field):
        ex.ExperimentConfig(**{field: value})


def test_a_lift_sized_for_some_tests_only_names_the_others() -> None:
    """A size that fails only at alpha 0.01 for +5% (say past the cap on a sample) leaves 4
    of that lift's 12 rows out: each named with its alpha, power and sidedness, not the
    whole lift; a lift that fails everywhere for one reason is one entry."""

    def size(lift: float, alpha: float, power: float, alt: str) -> int | str:
        if lift == 0.05 and alpha == 0.01:
            return "the required sample size is unbounded for this effect"
        return "past 100%" if lift == 0.5 else 100

    left_out: list[dict[str, object]] = []
    rows = ex._rows("revenue", "segment: X", 1.0, size, lambda n: 0.1, None, left_out)
    sizes = [r for r in rows if r["table"] == "revenue_sample_size"]
    assert len(sizes) == 48 - 4 - 12
    partial = [e for e in left_out if e["relative_lift"] == 0.05]
    assert {(e["alpha"], e["power"], e["alternative"]) for e in partial} == set(
        itertools.product([0.01], ex.POWERS, ex.ALTERNATIVES)
    )
    assert all("unbounded" in str(e["reason"]) for e in partial)
    (whole,) = [e for e in left_out if e["relative_lift"] == 0.5]
    assert (whole["alpha"], whole["power"], whole["alternative"], whole["reason"]) == (
        None,
        None,
        None,
        "past 100%",
    )
    assert len(left_out) == 4 + 1


def test_a_rate_near_100_percent_is_not_printed_as_100() -> None:
    """A reason about a rate of 0.999999 says so: the 100% case is another reason."""
    left_out: list[dict[str, object]] = []
    ex._conversion_rows("t", 0.999999, None, left_out)
    reasons = {str(r["reason"]) for r in left_out}
    assert "+5% on a 99.9999% rate would pass 100%" in reasons
    assert not any("100.00%" in r or "on 100%" in r for r in reasons)
