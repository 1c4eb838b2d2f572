"""What every writing connection to the warehouse applies before the pipeline writes."""

from __future__ import annotations

from pathlib import Path

import duckdb

from cip_pipeline.resources import WarehouseResource

RETIRED = [
    "feature_carts_not_bought",
    "feature_purchase_days",
    "feature_staging",
    "feature_user_days",
]


def _ml_tables(path: Path) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ml' "
            "ORDER BY table_name"
        ).fetchall()
    return [name for (name,) in rows]


def test_tables_of_earlier_versions_are_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "cip.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA ml")
        for name in [*RETIRED, "propensity_features"]:
            con.execute(f"CREATE TABLE ml.{name} AS SELECT 1 AS x")
    warehouse = WarehouseResource(path=str(path), memory_limit="300MB", threads=1)

    with warehouse.connect(read_only=True):
        pass  # a reader changes nothing
    assert _ml_tables(path) == sorted([*RETIRED, "propensity_features"])

    with warehouse.connect() as con:
        assert con.execute("SELECT enum_range(NULL::event_type)").fetchone() == (
            ["view", "cart", "purchase", "remove_from_cart"],
        )
    assert _ml_tables(path) == ["propensity_features"]
    with warehouse.connect():
        pass  # and again, on a warehouse that has none of them
    assert _ml_tables(path) == ["propensity_features"]
