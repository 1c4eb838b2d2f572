"""Months as Dagster partitions."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg

from cip_pipeline.months import month_bounds, partition_key

FIRST_MONTH = "2019-10-01"
# end_offset=1 includes the month in progress, which the nightly schedule refreshes.
monthly = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, end_offset=1)

# The single-writer pool every warehouse write goes through (limit 1 in dagster.yaml).
WAREHOUSE_POOL = "duckdb_warehouse"


def is_partition_month(month: str) -> bool:
    """`2019-10` is a partition; a month before the first or after the one in progress is
    not (Dagster rejects a run of it)."""
    return monthly.has_partition_key(partition_key(month))


def month_of_partition(key: str) -> str:
    """`2019-10-01` -> `2019-10`."""
    return key[:7]


def month_window(key: str) -> tuple[datetime, datetime]:
    start, end = month_bounds(month_of_partition(key))
    return datetime(start.year, start.month, 1), datetime(end.year, end.month, 1)


# A month's events are loaded, and its sessions built, in spans of this many days, each kept
# while what it reads is unchanged: fine enough that late rows rebuild little, coarse enough
# that each span reads several row groups in parallel (at 110 M events, one chunk a day made the
# load 40% slower than one for the month, spans of three days 15%).
SPAN_DAYS = 3


def month_spans(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The month [start, end) as [since, until) spans of SPAN_DAYS days (the last may be
    shorter)."""
    starts = [start + timedelta(days=d) for d in range(0, (end - start).days, SPAN_DAYS)]
    return list(zip(starts, [*starts[1:], end], strict=True))


def span_label(since: datetime, until: datetime) -> str:
    """How a chunk of whole days is named in the `chunks` metadata."""
    return f"{since:%Y-%m-%d} to {until:%Y-%m-%d}"


__all__ = [
    "SPAN_DAYS",
    "WAREHOUSE_POOL",
    "month_of_partition",
    "month_spans",
    "month_window",
    "monthly",
    "partition_key",
    "span_label",
]
