"""core/dim_products and core/dim_users against an independent Polars computation from the
raw CSV files of the same sample."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import polars as pl
import pytest

from cip_pipeline import sql
from cip_pipeline.assets.common import fetch_row, reconcile
from cip_pipeline_tests import warehouse_oracle as oracle
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    assert_frames_match,
    hand_made_events,
)


@pytest.fixture(scope="module")
def events(warehouse_sample: WarehouseSample) -> pl.DataFrame:
    return oracle.read_events(warehouse_sample.raw_files)


def test_dim_products_equal_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table("SELECT * FROM core.dim_products")
    expected = oracle.dim_products(events)
    assert_frames_match(actual, expected, ["product_id"])
    # Deeper codes keep their rest in l3 (electronics.audio.music_tools.piano).
    deep = actual.filter(pl.col("category_code").str.count_matches(r"\.") >= 3)
    assert all(row.count(".") == 1 for row in deep["category_l3"].to_list())
    meta = warehouse_sample.materialization(["core", "dim_products"])
    assert meta["products_purchased"].value == expected.filter(pl.col("purchases") > 0).height
    assert meta["last_event"].value == str(events["event_time"].max())
    assert meta["dagster/row_count"].value == actual.height


def test_dim_users_equal_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table("SELECT * FROM core.dim_users")
    expected = oracle.dim_users(events, oracle.fact_sessions(events))
    assert_frames_match(actual, expected, ["user_id"])
    meta = warehouse_sample.materialization(["core", "dim_users"])
    purchases = events.filter(pl.col("event_type") == "purchase")
    assert meta["buyers"].value == purchases["user_id"].n_unique()
    assert meta["revenue"].value == pytest.approx(purchases["price"].sum(), rel=1e-9)


def _dim_products(rows: list[tuple], threads: int = 1) -> list[tuple]:
    """core/dim_products' SQL over hand-made events (time, product, category id, code,
    brand), in the order given: product, category id, code, brand."""
    con = hand_made_events()
    con.execute(f"SET threads = {threads}")
    con.executemany("INSERT INTO core.events VALUES (?, 'view', ?, ?, ?, ?, 1.00, 1, uuid())", rows)
    query = sql.statement("core", "dim_products", events="core.events")
    return con.execute(
        f"SELECT product_id, category_id, category_code, brand FROM ({query}) ORDER BY 1"
    ).fetchall()


def test_a_products_category_id_and_code_come_from_one_event() -> None:
    """Product 1's latest event has no code: its id and code are both the latest coded
    event's (the id alone used to be the latest event's, beside another event's code).
    Product 2 never has a code: the latest id. Product 3's simultaneous events with other ids
    and brands give the same answer in any order and with any threads."""
    t = datetime(2019, 10, 5, 12)
    rows = [
        (t, 1, 10, "electronics.phone", "acme"),
        (t + timedelta(days=31), 1, 20, None, None),
        (t, 2, 30, None, "bolt"),
        (t + timedelta(days=1), 2, 31, None, None),
        (t, 3, 41, "kids.toys", "zeta"),
        (t, 3, 42, "sport.bike", "alpha"),
        (t, 3, 43, "apparel.shoes", "mid"),
    ]
    got = _dim_products(rows)
    assert got[:2] == [(1, 10, "electronics.phone", "acme"), (2, 31, None, "bolt")]
    # ties: the highest id (43), its code with it
    assert got[2][:3] == (3, 43, "apparel.shoes")
    for order in (rows[::-1], rows[4:] + rows[:4]):
        for threads in (1, 4):
            assert _dim_products(order, threads) == got


def test_simultaneous_ids_sharing_their_low_bits_are_ordered_by_the_whole_id() -> None:
    """Two simultaneous coded events of one product whose ids differ only above bit 20 (the
    old key kept the low 20 bits: a tie that row order settled). The higher id wins, with its
    own code, in either order and with any threads."""
    t = datetime(2019, 10, 5, 12)
    low = 2053013555631882655
    high = low + (1 << 20)
    rows = [(t, 1, low, "electronics.smartphone", "apple"), (t, 1, high, "kids.toys", "apple")]
    for order in (rows, rows[::-1]):
        for threads in (1, 2):
            assert _dim_products(order, threads) == [(1, high, "kids.toys", "apple")]


def test_simultaneous_brands_are_ordered_by_their_whole_hash() -> None:
    """Two brands whose 64-bit hashes share their low 20 bits (the old key's part), on
    simultaneous events: the brand of the higher whole hash, in either order."""
    con = duckdb.connect()
    a, b, hash_a, hash_b = con.execute(
        "WITH b AS (SELECT 'brand' || i AS brand, hash('brand' || i) AS h FROM range(20000) t(i)) "
        "SELECT x.brand, y.brand, x.h, y.h FROM b AS x JOIN b AS y "
        "ON x.h % 1048576 = y.h % 1048576 AND x.brand < y.brand ORDER BY x.brand LIMIT 1"
    ).fetchone()
    con.close()
    winner = a if hash_a > hash_b else b
    t = datetime(2019, 10, 5, 12)
    rows = [(t, 1, 10, "kids.toys", a), (t, 1, 10, "kids.toys", b)]
    for order in (rows, rows[::-1]):
        for threads in (1, 2):
            assert _dim_products(order, threads) == [(1, 10, "kids.toys", winner)]


def test_a_category_id_with_two_codes_is_warned_of() -> None:
    con = hand_made_events()
    con.execute(
        "CREATE TABLE core.dim_products AS SELECT * FROM (VALUES "
        "(1, 10::BIGINT, 'kids.toys'), (2, 10, 'appliances.kitchen'), (3, 20, 'sport.bike'), "
        "(4, 20, 'sport.bike'), (5, 30, NULL), (6, 40, 'auto.parts'), (7, 40, NULL)) "
        "AS t(product_id, category_id, category_code)"
    )
    row = con.execute(sql.statement("core", "check_category_codes")).fetchone()
    assert row == (2, [10, 40])


def test_empty_tables_reconcile_with_empty_events() -> None:
    """A month (or warehouse) with no events: sums over no rows are 0, as the events' counts
    are, so the reconciliations pass instead of comparing NULL with 0."""
    con = hand_made_events()
    con.execute(
        "CREATE TABLE core.fact_user_days (user_id INTEGER, day DATE, events BIGINT, "
        "views BIGINT, carts BIGINT, purchases BIGINT, remove_from_carts BIGINT, "
        "revenue DECIMAL(18, 2), first_event TIMESTAMP, last_event TIMESTAMP, "
        "last_cart TIMESTAMP, first_purchase TIMESTAMP, carts_not_bought BIGINT); "
        "CREATE TABLE core.dim_products (views BIGINT, carts BIGINT, purchases BIGINT, "
        "revenue DECIMAL(18, 2)); "
        "CREATE TABLE core.dim_users (events BIGINT, purchases BIGINT, revenue DECIMAL(18, 2), "
        "sessions BIGINT); CREATE TABLE core.fact_sessions (user_session UUID)"
    )
    window = {"start": datetime(2019, 11, 1), "end": datetime(2019, 12, 1)}
    for name, params in (
        ("check_user_days", window),
        ("check_dim_products_reconcile", None),
        ("check_dim_users_reconcile", None),
    ):
        row = fetch_row(con, sql.statement("core", name), params)
        pairs = {
            k: (row[k], row[k.removeprefix("day_").removeprefix("dim_")])
            for k in row
            if k.startswith(("day_", "dim_"))
        }
        assert pairs and reconcile(pairs)[0], (name, pairs)


def test_a_month_without_events_heads_its_kpis_with_zero_counts() -> None:
    """The month's figures over no daily rows: counts 0 (as the month has none), rates NULL
    (no denominator), not NULL counts beside a revenue of 0."""
    con = duckdb.connect()
    con.execute(
        "CREATE VIEW written AS SELECT * FROM (VALUES (0::BIGINT, 0::BIGINT, 0::BIGINT, "
        "0::BIGINT, 0::DECIMAL(18, 2), 0::BIGINT, 0::BIGINT)) AS t(events, views, carts, "
        "purchases, revenue, sessions, converting_sessions) WHERE false"
    )
    row = fetch_row(con, sql.statement("core", "month_headline"))
    assert row == {
        "month_events": 0,
        "month_purchases": 0,
        "month_revenue": 0.0,
        "month_average_order_value": None,
        "month_view_to_cart_rate": None,
        "month_cart_to_purchase_rate": None,
        "month_sessions": 0,
        "month_session_conversion_rate": None,
    }
