"""The one `dg.Definitions` of the `cip_pipeline` code location."""

from __future__ import annotations

import dagster as dg

from cip_pipeline import automation
from cip_pipeline.assets import analytics, core, experiments, ingest, ml
from cip_pipeline.io_managers import DuckDBPolarsIOManager, DuckDBSqlIOManager
from cip_pipeline.io_managers.model_io_manager import ModelRegistryIOManager
from cip_pipeline.resources import LakeResource, WarehouseResource

# A month's partitions come in two stages: loading the month, then what is derived from it.
# Derived partitions also read the neighbouring months (a session that crosses a month
# boundary belongs to the month it began in), so `cip run` loads every month first.
LOAD_ASSETS = [ingest.events_parquet, ingest.core_events, ingest.ingest_audit]
LOAD_CHECKS = [ingest.events_parquet_checks, ingest.core_events_checks]
DERIVED_ASSETS = [*core.PARTITIONED_ASSETS, *analytics.PARTITIONED_ASSETS]
DERIVED_CHECKS = [*core.PARTITIONED_CHECKS, *analytics.PARTITIONED_CHECKS]
NEIGHBOUR_ASSETS = core.NEIGHBOUR_ASSETS
CROSS_MONTH_CHECKS = core.CROSS_MONTH_CHECKS
PARTITIONED_ASSETS = [*LOAD_ASSETS, *DERIVED_ASSETS]
PARTITIONED_CHECKS = [*LOAD_CHECKS, *DERIVED_CHECKS]
UNPARTITIONED_ASSETS: list[dg.AssetsDefinition] = [
    *core.UNPARTITIONED_ASSETS,
    *analytics.UNPARTITIONED_ASSETS,
    *ml.ASSETS,
    *experiments.ASSETS,
]
UNPARTITIONED_CHECKS: list[dg.AssetChecksDefinition] = [
    *core.UNPARTITIONED_CHECKS,
    *analytics.UNPARTITIONED_CHECKS,
]


def resources() -> dict[str, object]:
    """Resources under the current `CIP_DATA_DIR`."""
    warehouse = WarehouseResource()
    return {
        "lake": LakeResource(),
        "warehouse": warehouse,
        "sql_io_manager": DuckDBSqlIOManager(warehouse=warehouse),
        "polars_io_manager": DuckDBPolarsIOManager(warehouse=warehouse),
        "model_io_manager": ModelRegistryIOManager(warehouse=warehouse),
    }


def build_definitions() -> dg.Definitions:
    sensors: list[dg.SensorDefinition] = [automation.raw_file_sensor]
    if UNPARTITIONED_ASSETS:
        # Derived months too: a month landing after its neighbour rebuilds the neighbour.
        sensors.append(automation.downstream_automation([*DERIVED_ASSETS, *UNPARTITIONED_ASSETS]))
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
