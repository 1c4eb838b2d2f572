"""Months as Dagster partitions."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from cip_pipeline.months import month_bounds, partition_key

FIRST_MONTH = "2019-10-01"
# end_offset=1 includes the month in progress, which the nightly schedule refreshes.
monthly = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, end_offset=1)

# The single-writer pool every warehouse write goes through (limit 1 in dagster.yaml).
WAREHOUSE_POOL = "duckdb_warehouse"


def month_of_partition(key: str) -> str:
    """`2019-10-01` -> `2019-10`."""
    return key[:7]


def month_window(key: str) -> tuple[datetime, datetime]:
    start, end = month_bounds(month_of_partition(key))
    return datetime(start.year, start.month, 1), datetime(end.year, end.month, 1)


__all__ = ["WAREHOUSE_POOL", "month_of_partition", "month_window", "monthly", "partition_key"]
