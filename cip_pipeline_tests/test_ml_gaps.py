"""Machine learning over data with days missing, the recommendations' fallback and counts, and
the ML configs' limits: each checked against figures computed another way (Polars over the
events, or worked by hand)."""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pydantic
import pytest

from cip_pipeline import definitions
from cip_pipeline.assets import ml
from cip_pipeline.assets.common import SKIPPED, recorded
from cip_pipeline.automation import ALL_MONTHS_JOB
from cip_pipeline.generator import generate
from cip_pipeline.ml import propensity as prop
from cip_pipeline.runner import execute, print_summary
from cip_pipeline_tests.test_ml import _hand_warehouse
from cip_pipeline_tests.warehouse_sample import check_problems, hand_made_events, run_sample

pytestmark = pytest.mark.slow

HORIZON, WINDOW = 14, 28
# December is not generated: the data runs Oct 1 to Nov 30, then Jan 1 to Jan 31, 2020.
GAP_MONTHS = ["2019-10", "2019-11", "2020-01"]
ML_ASSETS = [
    ml.propensity_features,
    ml.propensity_model,
    ml.propensity_scores,
    ml.product_affinity,
    ml.recommendations,
]


def _every_day(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _runs(days: list[date]) -> list[dict[str, Any]]:
    """Consecutive days as {from, to, days}, by hand."""
    runs: list[dict[str, Any]] = []
    for d in sorted(days):
        if runs and date.fromisoformat(runs[-1]["to"]) + timedelta(days=1) == d:
            runs[-1]["to"] = f"{d:%Y-%m-%d}"
            runs[-1]["days"] += 1
        else:
            runs.append({"from": f"{d:%Y-%m-%d}", "to": f"{d:%Y-%m-%d}", "days": 1})
    return runs


def _expected_plan(days: set[date]) -> dict[str, Any]:
    """The plan's rules applied to the days with events: weekly cutoffs from 14 days after
    the first day, labelled while their horizon ends by the day after the last; a labelled
    cutoff whose feature window or label window holds a day inside the data without events is
    left out; the validation cutoff is the latest kept, training ones those kept whose label
    window ends by it."""
    first, last = min(days), max(days)
    missing = sorted(set(_every_day(first, last)) - days)
    end = last + timedelta(days=1)
    labelled, c = [], first + timedelta(days=14)
    while c + timedelta(days=HORIZON) <= end:
        labelled.append(c)
        c += timedelta(days=7)

    def gaps(c: date) -> list[date]:
        return [d for d in missing if c - timedelta(days=WINDOW) <= d < c + timedelta(HORIZON)]

    kept = [c for c in labelled if not gaps(c)]
    validation = kept[-1] if kept else None
    train = [c for c in kept[:-1] if c + timedelta(days=HORIZON) <= validation]
    return {
        "missing": missing,
        "train": train,
        "validation": validation,
        "score": end,
        "left_out": {c: gaps(c) for c in labelled if gaps(c)},
    }


def test_the_plan_leaves_out_cutoffs_whose_windows_hold_days_without_events() -> None:
    """By hand: events Sep 1 to 3, none Sep 4 to 30, then Oct 1 to Nov 30. Weekly cutoffs from
    Sep 15 are labelled up to Nov 17 (Nov 17 + 14 days = Dec 1). Those to Oct 27 have days of
    Sep 4 to 30 in their 28-day window (Oct 27's runs from Sep 29); Nov 3 does not. So Nov 17
    validates, Nov 3 trains, Nov 10 (label window past Nov 17) is in neither."""
    days = [date(2019, 9, d) for d in (1, 2, 3)] + _every_day(date(2019, 10, 1), date(2019, 11, 30))
    plan = prop.plan_snapshots(
        datetime(2019, 9, 1, 8), datetime(2019, 11, 30, 22), days_with_events=days
    )
    assert plan.train == [datetime(2019, 11, 3)]
    assert plan.validation == datetime(2019, 11, 17)
    assert plan.score == datetime(2019, 12, 1)
    assert plan.not_built == [datetime(2019, 11, 10)]
    left_out = [datetime(2019, 9, 15) + timedelta(weeks=n) for n in range(7)]  # Sep 15..Oct 27
    assert list(plan.left_out) == left_out
    described = plan.describe()
    assert [r["cutoff"] for r in described["left_out"]] == [f"{c:%Y-%m-%d}" for c in left_out]
    # Oct 27 reads Sep 29 and 30 of the gap; Sep 15 all of it to Sep 28 (its label window's end)
    assert described["left_out"][-1]["days_without_events"] == [
        {"from": "2019-09-29", "to": "2019-09-30", "days": 2}
    ]
    assert described["left_out"][0]["days_without_events"] == [
        {"from": "2019-09-04", "to": "2019-09-28", "days": 25}
    ]
    assert described["days_without_events"] == [
        {"from": "2019-09-04", "to": "2019-09-30", "days": 27}
    ]
    assert described["score_window_days_without_events"] == []
    assert plan.usable


def test_a_plan_with_every_day_is_the_plan_of_the_first_and_last_event() -> None:
    """No day missing: the same snapshots, windows and description as planning from the
    first and last event alone (what the plan was before days were read)."""
    first = datetime(2019, 10, 1, 0, 13)
    for last in (datetime(2019, 11, 30, 23, 59), datetime(2019, 11, 10, 23), first):
        for horizon in (7, 14, 21):
            days = _every_day(first.date(), last.date())
            with_days = prop.plan_snapshots(first, last, horizon, days_with_events=days)
            without = prop.plan_snapshots(first, last, horizon)
            assert with_days == without
            assert with_days.left_out == () and with_days.missing_days == ()
            assert with_days.describe()["left_out"] == []


def test_a_plan_whose_every_labelled_cutoff_holds_missing_days_has_no_validation() -> None:
    """By hand: events Oct 1 to 20 and Nov 1 to 30. Labelled cutoffs Oct 15 to Nov 12: Oct 15's
    label window holds Oct 21 to 28, and every later one's window or label window some of
    Oct 21 to 31. None is left."""
    days = _every_day(date(2019, 10, 1), date(2019, 10, 20))
    days += _every_day(date(2019, 11, 1), date(2019, 11, 30))
    plan = prop.plan_snapshots(
        datetime(2019, 10, 1), datetime(2019, 11, 30, 12), days_with_events=days
    )
    assert plan.validation is None and plan.train == [] and not plan.usable
    assert plan.not_built == []
    assert list(plan.left_out) == [datetime(2019, 10, 15) + timedelta(weeks=n) for n in range(5)]


def test_a_history_too_short_anyway_is_named_before_its_missing_days() -> None:
    """36 days of data (42 needed with a 14-day horizon) and one missing: filling the day
    would still give no split, so the reason is the history's, not the day's."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA core; CREATE TABLE core.events (event_time TIMESTAMP)")
    first, last = datetime(2019, 10, 1), datetime(2019, 11, 5, 12)
    con.execute("INSERT INTO core.events VALUES (?), (?)", [first, last])
    days = [d for d in _every_day(first.date(), last.date()) if d != date(2019, 10, 10)]
    plan = prop.plan_snapshots(first, last, 14, days_with_events=days)
    assert plan.left_out and not plan.usable
    assert ml.split_shortfall(plan, con) == ml.history_shortfall(14, 36)


@pytest.fixture(scope="module")
def gap_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dg.DagsterInstance]:
    """About 300 k generated events over October, November and January (no December), through
    core and then the ML assets."""
    root = tmp_path_factory.mktemp("ml_gap")
    generate(300_000, seed=5, months=GAP_MONTHS, out=root / "raw")
    instance, summaries = run_sample(root, GAP_MONTHS)
    assert not check_problems(summaries), check_problems(summaries)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(root))
        defs = definitions.build_definitions()
    execute(defs, ALL_MONTHS_JOB, instance, "ml", assets=ML_ASSETS)
    return root, instance


def _table(root: Path, query: str) -> pl.DataFrame:
    con = duckdb.connect(str(root / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        return con.sql(query).pl()
    finally:
        con.close()


def _raw_days(root: Path) -> set[date]:
    """The days with events, read from the generated files themselves."""
    times = pl.scan_csv(sorted((root / "raw").glob("*.csv"))).select(
        pl.col("event_time").str.slice(0, 10).str.to_date().unique()
    )
    return set(times.collect()["event_time"].to_list())


def test_a_missing_month_leaves_out_the_snapshots_whose_windows_it_falls_in(
    gap_sample: tuple[Path, dg.DagsterInstance],
) -> None:
    root, instance = gap_sample
    expected = _expected_plan(_raw_days(root))
    # By hand: December missing; cutoffs Oct 15 to Nov 12 read only Oct and Nov, Nov 19's label
    # window reaches Dec 1, and every labelled cutoff in January (to Jan 14) reads December.
    assert expected["missing"] == _every_day(date(2019, 12, 1), date(2019, 12, 31))
    assert expected["train"] == [date(2019, 10, 15), date(2019, 10, 22), date(2019, 10, 29)]
    assert expected["validation"] == date(2019, 11, 12)
    assert list(expected["left_out"]) == [date(2019, 11, 19) + timedelta(weeks=n) for n in range(9)]

    stored = _table(
        root,
        "SELECT snapshot::DATE AS snapshot, role, count(*) FILTER (WHERE label) AS positives"
        " FROM ml.propensity_features GROUP BY ALL ORDER BY snapshot",
    )
    roles = [(c, "train") for c in expected["train"]]
    roles += [(expected["validation"], "validation"), (expected["score"], "score")]
    assert stored.select("snapshot", "role").rows() == roles

    # Each labelled snapshot's buyers, counted in Polars over the events: users with an event
    # before the cutoff who bought in the 14 days from it (none was a gap's false "no").
    events = _table(root, "SELECT user_id, event_time, event_type FROM core.events")
    for cutoff, role, positives in stored.rows():
        if role == "score":
            continue
        at = datetime.combine(cutoff, datetime.min.time())
        before = events.filter(pl.col("event_time") < at)["user_id"].unique()
        bought = events.filter(
            (pl.col("event_type") == "purchase")
            & (pl.col("event_time") >= at)
            & (pl.col("event_time") < at + timedelta(days=HORIZON))
            & pl.col("user_id").is_in(before.to_list())
        )["user_id"].n_unique()
        assert positives == bought > 0, (cutoff, positives, bought)

    metadata = recorded(instance, ml.FEATURES_KEY)
    assert metadata["out_of_time_split"] == "possible"
    windows = metadata["windows"]
    assert windows["days_without_events"] == _runs(expected["missing"])
    assert [(r["cutoff"], r["days_without_events"]) for r in windows["left_out"]] == [
        (f"{c:%Y-%m-%d}", _runs(gaps)) for c, gaps in expected["left_out"].items()
    ]
    assert all("without events" in r["why"] for r in windows["left_out"])
    # Nov 5 is labelled and kept, but its label window runs past the validation cutoff
    assert [r["cutoff"] for r in windows["labelled_not_built"]] == ["2019-11-05"]


def test_the_models_windows_list_the_snapshots_left_out(
    gap_sample: tuple[Path, dg.DagsterInstance],
) -> None:
    """The model's windows (from the stored snapshots) say which cutoffs the missing days
    left out, and do not count them among those left for a label window past validation."""
    root, instance = gap_sample
    expected = _expected_plan(_raw_days(root))
    model = recorded(instance, ml.MODEL_KEY)
    windows = model["windows"]
    assert [r["cutoff"] for r in windows["left_out"]] == [
        f"{c:%Y-%m-%d}" for c in expected["left_out"]
    ]
    assert [r["cutoff"] for r in windows["labelled_not_built"]] == ["2019-11-05"]
    assert windows["refit_on"] == [
        *(f"{c:%Y-%m-%d} (train)" for c in expected["train"]),
        f"{expected['validation']:%Y-%m-%d} (validation)",
    ]


def test_recommendation_counts_equal_an_independent_count(
    gap_sample: tuple[Path, dg.DagsterInstance],
) -> None:
    """products: distinct products of the events, in Polars; without recommendations: those
    absent from ml.recommendations; short of 10: those with 1 to 9 rows there."""
    root, instance = gap_sample
    products = set(_table(root, "SELECT product_id FROM core.events")["product_id"].to_list())
    per_product = (
        _table(root, "SELECT product_id FROM ml.recommendations").group_by("product_id").len()
    )
    metadata = recorded(instance, ml.RECOMMENDATIONS_KEY)
    assert metadata["products"] == len(products)
    assert metadata["products_without_recommendations"] == len(
        products - set(per_product["product_id"].to_list())
    )
    assert metadata["products_short_of_10"] == per_product.filter(pl.col("len") < 10).height


def test_when_missing_days_leave_no_split_the_features_and_model_say_which(
    tmp_path: Path,
) -> None:
    """By hand: one user with an event every day of October and Dec 1 to 30, none in
    November. Cutoffs from Oct 15 are labelled to Dec 17 (the data ends Dec 30); only Oct 15
    reads no November day: it validates, nothing trains, and the model is skipped."""
    (tmp_path / "warehouse").mkdir()
    days = _every_day(date(2019, 10, 1), date(2019, 10, 31))
    days += _every_day(date(2019, 12, 1), date(2019, 12, 30))
    rows = [(f"{d} 10:00:00", "view", 1, 1, "acme", 1, f"s{d}") for d in days]
    _hand_warehouse(rows, tmp_path / "warehouse" / "cip.duckdb").close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(tmp_path))
        defs = definitions.build_definitions()
    with dg.DagsterInstance.ephemeral() as instance:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "x", None, ML_ASSETS[:2])
        out = io.StringIO()
        print_summary(summary, out)
        assert summary.success, out.getvalue()
        metadata = recorded(instance, ml.FEATURES_KEY)
        skipped = instance.fetch_observations(ml.MODEL_KEY, limit=1).records
    stored = _table(tmp_path, "SELECT DISTINCT snapshot::DATE, role FROM ml.propensity_features")
    assert sorted(stored.rows()) == [
        (date(2019, 10, 15), "validation"),
        (date(2019, 12, 31), "score"),
    ]
    left = [datetime(2019, 10, 22) + timedelta(weeks=n) for n in range(9)]  # to Dec 17
    assert [r["cutoff"] for r in metadata["windows"]["left_out"]] == [f"{c:%Y-%m-%d}" for c in left]
    split = metadata["out_of_time_split"]
    assert split.startswith("not possible: 9 labelled cutoffs (2019-10-22 to 2019-12-17)"), split
    assert "2019-11-01 to 2019-11-30" in split
    reason = skipped[0].event_log_entry.asset_observation.metadata[SKIPPED].value
    assert reason.startswith("no out-of-time split: 9 labelled cutoffs"), reason
    assert "2019-11-01 to 2019-11-30" in reason


def test_fallback_chooses_its_candidates_by_the_popularity_it_ranks_them_by() -> None:
    """One category and brand: product 1 (a view), 10 to 21 (a purchase each: popularity
    1.0) and 30 (1,000 views, no purchase: popularity 10.0); product 99 alone in another
    category. Product 1's fallback is the 10 most popular others, computed in Polars."""
    con = hand_made_events()
    rows = [(1, 1, "x", "view")]
    rows += [(p, 1, "x", "purchase") for p in range(10, 22)]
    rows += [(30, 1, "x", "view")] * 1000
    rows += [(99, 2, "z", "view")]
    con.executemany(
        "INSERT INTO core.events (event_time, event_type, product_id, category_id, brand)"
        " VALUES (TIMESTAMP '2019-10-01 10:00', $4, $1, $2, $3)",
        rows,
    )
    con.execute(
        "CREATE TABLE core.fact_sessions (start_time TIMESTAMP, end_time TIMESTAMP,"
        " viewed_products INTEGER[])"
    )
    no_rules = (
        "(SELECT 0 AS antecedent, 0 AS consequent, 0.0 AS confidence, 0.0 AS lift WHERE false)"
    )
    got = dict(
        con.execute(
            "SELECT product_id, list(recommended_product_id ORDER BY rank) "
            f"FROM ({ml.recommendations_sql(ml.AffinityConfig(), no_rules)}) GROUP BY 1"
        ).fetchall()
    )
    events = pl.DataFrame(rows, schema=["product_id", "category", "brand", "type"], orient="row")
    popularity = events.group_by("product_id").agg(
        ((pl.col("type") == "purchase").sum() + (pl.col("type") == "view").sum() / 100.0).alias(
            "popularity"
        )
    )
    expected = (
        popularity.join(events.select("product_id", "category").unique(), on="product_id")
        .filter((pl.col("category") == 1) & (pl.col("product_id") != 1))
        .sort(["popularity", "product_id"], descending=[True, False])
        .head(10)["product_id"]
        .to_list()
    )
    assert expected[0] == 30  # by hand: the most popular, then 10 to 18
    assert got[1] == expected
    assert 99 not in got  # alone in its category: no recommendation at all


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (lambda: ml.PropensityConfig(horizon_days=0), "horizon_days"),
        (lambda: ml.PropensityConfig(horizon_days=-7), "horizon_days"),
        (lambda: ml.AffinityConfig(horizon_days=0), "horizon_days"),
        (lambda: ml.AffinityConfig(max_basket=1), "max_basket"),
        (lambda: ml.AffinityConfig(max_session_views=1), "max_session_views"),
        (lambda: ml.AffinityConfig(min_pair_support=0), "min_pair_support"),
        (lambda: ml.AffinityConfig(min_lift=-1.0), "min_lift"),
    ],
)
def test_configs_refuse_windows_and_counts_that_mean_nothing(config: Any, field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=f"{field}[\\s\\S]*greater than or equal"):
        config()


def test_a_run_with_a_zero_horizon_fails_before_any_query(tmp_path: Path) -> None:
    """Through Dagster's run config: the run is refused with the field and its limit."""
    result = dg.materialize(
        [ml.product_affinity],
        run_config={"ops": {"ml__product_affinity": {"config": {"horizon_days": 0}}}},
        resources={"sql_io_manager": dg.mem_io_manager},
        raise_on_error=False,
    )
    assert not result.success
    errors = json.dumps([str(e.event_specific_data) for e in result.all_events if e.is_failure])
    assert "horizon_days" in errors and "greater than or equal to 1" in errors
