"""The one `dg.Definitions` of the `cip_pipeline` code location."""

from __future__ import annotations

import dagster as dg

from cip_pipeline import automation
from cip_pipeline.assets import ingest
from cip_pipeline.io_managers import DuckDBPolarsIOManager, DuckDBSqlIOManager
from cip_pipeline.resources import LakeResource, WarehouseResource

PARTITIONED_ASSETS = [ingest.events_parquet, ingest.core_events, ingest.ingest_audit]
PARTITIONED_CHECKS = [ingest.events_parquet_checks, ingest.core_events_checks]
UNPARTITIONED_ASSETS: list[dg.AssetsDefinition] = []
UNPARTITIONED_CHECKS: list[dg.AssetChecksDefinition] = []


def resources() -> dict[str, object]:
    """Resources under the current `CIP_DATA_DIR`."""
    warehouse = WarehouseResource()
    return {
        "lake": LakeResource(),
        "warehouse": warehouse,
        "sql_io_manager": DuckDBSqlIOManager(warehouse=warehouse),
        "polars_io_manager": DuckDBPolarsIOManager(warehouse=warehouse),
    }


def build_definitions() -> dg.Definitions:
    sensors: list[dg.SensorDefinition] = [automation.raw_file_sensor]
    if UNPARTITIONED_ASSETS:
        sensors.append(automation.downstream_automation(UNPARTITIONED_ASSETS))
    return dg.Definitions(
        assets=[*PARTITIONED_ASSETS, *UNPARTITIONED_ASSETS],
        asset_checks=[*PARTITIONED_CHECKS, *UNPARTITIONED_CHECKS],
        jobs=automation.build_jobs(
            [*PARTITIONED_ASSETS, *PARTITIONED_CHECKS],
            [*UNPARTITIONED_ASSETS, *UNPARTITIONED_CHECKS],
        ),
        schedules=[automation.nightly_refresh],
        sensors=sensors,
        resources=resources(),
    )


defs = build_definitions()
