"""The experiment assets on a window with no buyers before it: they say so, not crash."""

from __future__ import annotations

import math
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import dagster as dg
import polars as pl
import pydantic
import pytest

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
            "cutoff TIMESTAMP, window_end TIMESTAMP)"
        )
    outcomes = SqlTable("experiments", "segment_outcomes")
    config = ex.ExperimentConfig()
    results = {
        ex.POWER_KEY: list(
            ex.ab_power_tables(dg.build_asset_context(), config, warehouse, outcomes)
        ),
        ex.PLANS_KEY: list(
            ex.segment_test_plans(config=config, warehouse=warehouse, outcomes=outcomes)
        ),
    }
    for key, events in results.items():
        assert len(events) == 1, key
        (observation,) = events
        assert isinstance(observation, dg.AssetObservation)
        assert observation.asset_key == key
        assert observation.metadata[SKIPPED].value == ex.NO_BUYERS


def _outcomes(tmp_path: Path, frame: pl.DataFrame) -> tuple[WarehouseResource, SqlTable]:
    """experiments.segment_outcomes holding `frame` (user_id, segment, pre_revenue, bought,
    revenue, active), over a 14-day window."""
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    rows = frame.with_columns(
        cutoff=pl.lit(datetime(2019, 11, 16)), window_end=pl.lit(datetime(2019, 11, 30))
    )
    with warehouse.connect() as con:
        con.execute("CREATE SCHEMA experiments")
        con.register("rows", rows)
        con.execute("CREATE TABLE experiments.segment_outcomes AS SELECT * FROM rows")
    return warehouse, SqlTable("experiments", "segment_outcomes")


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


def test_simulated_new_buyers_spend_like_the_real_ones(tmp_path: Path) -> None:
    """Every real buyer spent 100 and nobody else anything: with no revenue lift injected,
    each arm's revenue per user is 100 times its conversion rate, new buyers included, so the
    revenue difference is 100 times the conversion difference."""
    frame = pl.concat(
        [_segment("At Risk", 400, 80, 1, 100.0), _segment(ex.TARGET_SEGMENT, 200, 30, 1001, 100.0)]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    config = ex.ExperimentConfig(simulated_conversion_lift=0.5, simulated_revenue_lift=0.0)
    table = _output(list(ex.reactivation_simulation(config, warehouse, outcomes))).value
    methods = {r["method"]: r for r in table.iter_rows(named=True)}
    conversion = methods["two-proportion z-test"]["estimate"]
    assert conversion > 0
    assert methods["Welch t-test"]["estimate"] == pytest.approx(100 * conversion, rel=1e-9)


def test_a_negative_injected_lift_is_refused() -> None:
    """The simulation can only add conversions: a negative lift is a config error, not a
    table that reports an effect it never injected."""
    with pytest.raises(pydantic.ValidationError, match="simulated_conversion_lift"):
        ex.ExperimentConfig(simulated_conversion_lift=-0.1)
    with pytest.raises(pydantic.ValidationError, match="simulated_revenue_lift"):
        ex.ExperimentConfig(simulated_revenue_lift=-1.0)


def test_a_segment_smaller_than_the_test_has_no_duration(tmp_path: Path) -> None:
    """A segment is a fixed set of people: 1,000 users at a 10% baseline cannot fill the
    2 x 1,012 a +50% test needs (at 1000/14 a day that would read as 29 days and feasible).
    A segment near 100% conversion has no detectable lift: its MDE rows are empty, not a
    failed build."""
    frame = pl.concat([_segment("Loyal", 1_000, 100, 1), _segment("Champions", 1_000, 999, 5001)])
    warehouse, outcomes = _outcomes(tmp_path, frame)
    config = ex.ExperimentConfig()
    plans = _output(list(ex.segment_test_plans(config, warehouse, outcomes))).value
    loyal = plans.filter(pl.col("segment") == "Loyal").row(0, named=True)
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    assert 2 * n50 > 1_000 and loyal["n_per_arm_lift_50"] == n50
    assert loyal["days_lift_50"] is None and loyal["feasible_lift_50"] is False
    tables = _output(
        list(ex.ab_power_tables(dg.build_asset_context(), config, warehouse, outcomes))
    )
    power = tables.value
    loyal_sizes = power.filter(
        pl.col("baseline_source") == "segment: Loyal", pl.col("n_per_arm").is_not_null()
    )
    assert loyal_sizes.height > 0
    for row in loyal_sizes.iter_rows(named=True):
        want = math.ceil(Fraction(2 * row["n_per_arm"] * 14, 1_000))
        assert row["days_needed"] == (want if 2 * row["n_per_arm"] <= 1_000 else None)
    champions_mde = power.filter(
        pl.col("baseline_source") == "segment: Champions", pl.col("table") == "conversion_mde"
    )
    assert champions_mde.height == len(ex.MDE_SAMPLE_SIZES)
    assert champions_mde["relative_lift"].null_count() >= 1
    for row in champions_mde.filter(pl.col("relative_lift").is_not_null()).iter_rows(named=True):
        achieved = stats.power_two_proportions(0.999, row["relative_lift"], row["sample_size"])
        assert achieved == pytest.approx(0.8, abs=1e-6)


def test_a_segments_rate_and_traffic_are_those_of_its_visitors(tmp_path: Path) -> None:
    """1,000 members, 200 of them active in the 14-day window, 20 of those bought: a test that
    enrols members as they visit meets 200/14 a day converting at 10%, not at 2%; the whole
    segment still caps what it can enrol. Revenue per user is that of the visitors too."""
    frame = _segment("Loyal", 1_000, 20, 1, revenue=50.0).with_columns(
        active=pl.col("user_id") <= 200
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    config = ex.ExperimentConfig()
    plans = _output(list(ex.segment_test_plans(config, warehouse, outcomes))).value
    loyal = plans.row(0, named=True)
    assert (loyal["users"], loyal["active_users"]) == (1_000, 200)
    assert loyal["baseline_conversion"] == pytest.approx(0.1)
    assert loyal["daily_eligible_users"] == pytest.approx(200 / 14)
    assert loyal["revenue_per_user"] == pytest.approx(20 * 50.0 / 200)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    assert loyal["n_per_arm_lift_20"] == n20
    assert loyal["days_lift_20"] is None  # 2 x n20 > 1,000 members
    n50 = stats.sample_size_two_proportions(0.1, 0.5).n_control
    assert loyal["n_per_arm_lift_50"] == n50 and 2 * n50 > 1_000


def test_a_large_segments_days_come_from_its_visitors(tmp_path: Path) -> None:
    """20,000 members, 4,000 visited in the 14 days, 400 bought: +20% on 10% needs 2 x n
    members, arriving at 4,000/14 a day: ceil(2n x 14 / 4,000) days, counted exactly."""
    frame = _segment("Champions", 20_000, 400, 1).with_columns(active=pl.col("user_id") <= 4_000)
    warehouse, outcomes = _outcomes(tmp_path, frame)
    plans = _output(list(ex.segment_test_plans(ex.ExperimentConfig(), warehouse, outcomes)))
    row = plans.value.row(0, named=True)
    n20 = stats.sample_size_two_proportions(0.1, 0.2).n_control
    assert 2 * n20 <= 20_000
    assert row["days_lift_20"] == math.ceil(Fraction(2 * n20 * 14, 4_000))
    assert row["feasible_lift_20"] is (row["days_lift_20"] <= ex.MAX_PLAN_DAYS)


def test_a_segment_without_visitors_has_no_rate(tmp_path: Path) -> None:
    frame = pl.concat(
        [
            _segment("Hibernating", 50, 0, 1).with_columns(active=pl.lit(False)),
            _segment("Loyal", 300, 30, 101),
        ]
    )
    warehouse, outcomes = _outcomes(tmp_path, frame)
    config = ex.ExperimentConfig()
    plans = _output(list(ex.segment_test_plans(config, warehouse, outcomes))).value
    idle = plans.filter(pl.col("segment") == "Hibernating").row(0, named=True)
    assert idle["baseline_conversion"] is None and idle["n_per_arm_lift_20"] is None
    power = _output(
        list(ex.ab_power_tables(dg.build_asset_context(), config, warehouse, outcomes))
    ).value
    assert set(power["baseline_source"].unique()) >= {"segment: Loyal"}
    assert "segment: Hibernating" not in set(power["baseline_source"])
