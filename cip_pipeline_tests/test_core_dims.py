"""core/dim_products and core/dim_users against an independent Polars computation from the
raw CSV files of the same sample."""

from __future__ import annotations

import polars as pl
import pytest

from cip_pipeline_tests import warehouse_oracle as oracle
from cip_pipeline_tests.warehouse_sample import WarehouseSample, assert_frames_match


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
