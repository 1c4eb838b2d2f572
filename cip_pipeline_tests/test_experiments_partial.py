"""The experiment assets on a window with no buyers before it: they say so, not crash."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

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
