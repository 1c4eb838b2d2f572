"""core/fact_sessions, core/fact_user_days and core/fact_daily_kpis against an independent
Polars computation from the raw CSV files of the same sample."""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl
import pytest

from cip_pipeline.assets.core import session_chunks, user_days_chunks
from cip_pipeline.io_managers import SqlTable
from cip_pipeline.io_managers.tables import TimeSlice
from cip_pipeline_tests import warehouse_oracle as oracle
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    assert_frames_match,
    check_problems,
    hand_made_events,
)

OCT, NOV = "2019-10-01", "2019-11-01"
EVENTS_TABLE = SqlTable("core", "events")


@pytest.fixture(scope="module")
def events(warehouse_sample: WarehouseSample) -> pl.DataFrame:
    return oracle.read_events(warehouse_sample.raw_files)


@pytest.fixture(scope="module")
def sessions(events: pl.DataFrame) -> pl.DataFrame:
    return oracle.fact_sessions(events)


def test_every_run_succeeds_and_every_check_passes(warehouse_sample: WarehouseSample) -> None:
    assert [s.label for s in warehouse_sample.summaries] == [
        "2019-10",
        "2019-11",
        "2019-10 derived",
        "2019-11 derived",
        "2019-10 checks across months",
        "all months",
    ]
    assert all(s.success for s in warehouse_sample.summaries)
    assert check_problems(warehouse_sample.summaries) == []
    # per month 13 ingest checks (7 on the Parquet, 6 on core/events) and 10 derived; 17 over
    # all months
    assert sum(s.checks_passed for s in warehouse_sample.summaries) == 2 * 13 + 2 * 10 + 17


def test_fact_sessions_equal_the_oracle(
    warehouse_sample: WarehouseSample, sessions: pl.DataFrame
) -> None:
    actual = warehouse_sample.table(
        "SELECT * EXCLUDE (user_session), user_session::VARCHAR AS user_session "
        "FROM core.fact_sessions"
    )
    assert actual["user_session"].n_unique() == actual.height  # across both months
    assert_frames_match(actual, sessions, ["user_session"])
    # The headline of each partition, over the oracle's sessions of that month.
    for month in (OCT, NOV):
        meta = warehouse_sample.materialization(["core", "fact_sessions"], month)
        mine = sessions.filter(pl.col("start_time").dt.strftime("%Y-%m-01") == month)
        assert meta["revenue"].value == pytest.approx(mine["revenue"].sum(), rel=1e-9)
        assert meta["session_conversion_rate"].value == pytest.approx(
            mine["has_purchase"].mean(), rel=1e-12
        )
        carted = mine.filter(pl.col("has_cart"))
        assert meta["cart_abandonment_rate"].value == pytest.approx(
            carted["cart_abandoned"].mean(), rel=1e-12
        )


def test_each_session_lies_in_the_month_it_began(warehouse_sample: WarehouseSample) -> None:
    months = warehouse_sample.table(
        "SELECT date_trunc('month', start_time) AS month, count(*) AS n "
        "FROM core.fact_sessions GROUP BY ALL ORDER BY month"
    )
    assert months.height == 2
    # Sessions of the sample that begin late on Oct 31 carry their November events.
    crossing = warehouse_sample.table(
        "SELECT count(*) AS n FROM core.fact_sessions "
        "WHERE start_time < '2019-11-01' AND end_time >= '2019-11-01'"
    )["n"][0]
    assert crossing >= 1
    meta = warehouse_sample.materialization(["core", "fact_sessions"], OCT)
    assert meta["sessions_into_next_month"].value == crossing
    assert meta["next_month_events_included"].value > 0
    nov = warehouse_sample.materialization(["core", "fact_sessions"], NOV)
    assert nov["sessions_from_previous_month"].value == crossing
    assert nov["dagster/row_count"].value == months["n"][1]
    assert "write_seconds" in nov and "dagster/column_schema" in nov


def test_fact_user_days_equal_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table("SELECT * FROM core.fact_user_days")
    expected = oracle.fact_user_days(events)
    assert_frames_match(actual, expected, ["user_id", "day"])
    for column in ("carts_not_bought", "top_category", "top_brand"):  # the cases occur
        assert expected[column].drop_nulls().n_unique() > 1, column
    nov = warehouse_sample.materialization(["core", "fact_user_days"], NOV)
    assert (
        nov["dagster/row_count"].value
        == expected.filter(pl.col("day") >= pl.date(2019, 11, 1)).height
    )


def test_user_days_built_in_small_chunks_equal_one_chunk(
    warehouse_sample: WarehouseSample,
) -> None:
    start, end = datetime(2019, 11, 1), datetime(2019, 12, 1)
    november = SqlTable("core", "events", TimeSlice("event_time", start, end).predicate())
    con = duckdb.connect(str(warehouse_sample.root / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        whole = user_days_chunks(con, november, end, 10**12)
        chunked = user_days_chunks(con, november, end, 1)  # a chunk per day
        one = con.sql(whole[0].select).pl().sort("user_id", "day")
        many = pl.concat([con.sql(c.select).pl() for c in chunked]).sort("user_id", "day")
    finally:
        con.close()
    assert len(whole) == 1 and len(chunked) == 30
    assert one.height > 1_000
    assert many.equals(one)


def test_fact_daily_kpis_equal_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame, sessions: pl.DataFrame
) -> None:
    actual = warehouse_sample.table("SELECT * FROM core.fact_daily_kpis")
    expected = oracle.fact_daily_kpis(events, sessions)
    assert_frames_match(actual, expected, ["day"])
    assert actual.height == 61


def test_daily_kpis_reconcile_with_the_month(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    october = events.filter(pl.col("event_time") < pl.datetime(2019, 11, 1))
    meta = warehouse_sample.materialization(["core", "fact_daily_kpis"], OCT)
    purchases = october.filter(pl.col("event_type") == "purchase")
    assert meta["month_purchases"].value == purchases.height
    assert meta["month_revenue"].value == pytest.approx(purchases["price"].sum(), rel=1e-9)
    assert meta["month_events"].value == october.height


def test_session_products_by_hand() -> None:
    """Distinct and viewed products of hand-made sessions, through the chunk SQL alone:
    repeated views, a product carted but never viewed, neighbouring ids (whose codes in the
    SQL differ by one), negative ids (the ingest accepts any Int32) and both ends of Int32."""
    big = 2**31 - 1
    rows = [
        # (minute, event_type, product_id, session)
        (0, "view", 7, "s"),
        (1, "view", 7, "s"),
        (2, "cart", 7, "s"),
        (3, "view", 8, "s"),
        (4, "cart", 3, "s"),
        (5, "purchase", 3, "s"),
        (6, "view", big, "s"),
        (7, "remove_from_cart", 8, "s"),
        (8, "cart", 5, "t"),
        (9, "cart", 5, "t"),
        (10, "view", -3, "u"),
        (11, "cart", -3, "u"),
        (12, "view", -(2**31), "u"),
        (13, "view", -2, "u"),
    ]
    ids = {
        "s": "aaaaaaaa-0000-4000-8000-000000000001",
        "t": "bbbbbbbb-0000-4000-8000-00000000000b",
        "u": "cccccccc-0000-4000-8000-00000000000c",
    }
    con = hand_made_events()
    con.executemany(
        "INSERT INTO core.events VALUES (TIMESTAMP '2019-11-05 10:00' + to_minutes($1::BIGINT),"
        " $2, $3, 1, 'electronics.phone', NULL, 9.99, 1, $4)",
        [(minute, kind, product, ids[s]) for minute, kind, product, s in rows],
    )
    start, end = datetime(2019, 11, 1), datetime(2019, 12, 1)
    [chunk] = [
        c
        for c in session_chunks(con, EVENTS_TABLE, start, end, end, None)
        if c.label.startswith("2019-11-04")
    ]
    got = con.execute(
        f"SELECT user_session::VARCHAR, distinct_products, viewed_products FROM ({chunk.select})"
        " ORDER BY 1"
    ).fetchall()
    assert got == [
        (ids["s"], 4, [7, 8, big]),
        (ids["t"], 1, []),
        (ids["u"], 3, [-(2**31), -3, -2]),
    ]
