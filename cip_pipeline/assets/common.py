"""Helpers shared by the warehouse assets: check specs, headline metadata and comparisons."""

import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import dagster as dg
import duckdb

from cip_pipeline.partitions import monthly

# Floating figures (rates, shares) must agree to this relative tolerance in checks.
FLOAT_TOLERANCE = 1e-9


def check_spec(
    name: str,
    asset: dg.AssetKey | dg.AssetsDefinition,
    description: str,
    *,
    monthly_partitions: bool,
    blocking: bool = False,
) -> dg.AssetCheckSpec:
    """A check of `asset`, month-partitioned like it or over the whole table."""
    if not monthly_partitions:
        return dg.AssetCheckSpec(name, asset=asset, description=description, blocking=blocking)
    with warnings.catch_warnings():
        # Month-partitioned checks are a preview feature of the Dagster range we pin and test.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, description=description, blocking=blocking, partitions_def=monthly
        )


def metadata_value(value: Any) -> dg.MetadataValue:
    """A value of a SQL result as Dagster metadata."""
    if value is None:
        return dg.MetadataValue.null()
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, Decimal):
        return dg.MetadataValue.float(float(value))
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, datetime | date):
        return dg.MetadataValue.text(
            value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
        )
    return dg.MetadataValue.text(str(value))


def fetch_row(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The single row of a query, by column name."""
    cursor = con.execute(statement, dict(params or {}))
    names = [d[0] for d in cursor.description]
    row = cursor.fetchone()
    return dict(zip(names, row if row is not None else [None] * len(names), strict=True))


def headline(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> dict[str, dg.MetadataValue]:
    """The single row of a small summary query as materialization metadata."""
    return {name: metadata_value(v) for name, v in fetch_row(con, statement, params).items()}


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dg.MetadataValue:
    """A few rows as a Markdown table for the UI."""

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def query_table(
    con: duckdb.DuckDBPyConnection, statement: str, params: Mapping[str, Any] | None = None
) -> dg.MetadataValue:
    """The result of a small query as a Markdown table."""
    cursor = con.execute(statement, dict(params or {}))
    return markdown_table([d[0] for d in cursor.description], cursor.fetchall())


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    return a == b


def reconcile(pairs: Mapping[str, tuple[Any, Any]]) -> tuple[bool, dict[str, Any]]:
    """Compare named (table, expected) figures: whether all agree, and metadata showing both."""
    metadata: dict[str, Any] = {}
    mismatched: list[str] = []
    for name, (actual, expected) in pairs.items():
        metadata[name] = metadata_value(actual)
        metadata[f"{name}_expected"] = metadata_value(expected)
        if not _close(actual, expected):
            mismatched.append(name)
    metadata["mismatched"] = dg.MetadataValue.json(mismatched)
    return not mismatched, metadata


def zero_counts(row: Mapping[str, Any], names: Sequence[str]) -> tuple[bool, dict[str, Any]]:
    """Whether every named count is 0, with the counts as metadata."""
    return all((row[n] or 0) == 0 for n in names), {n: metadata_value(row[n]) for n in names}


# A month derived from its neighbours (sessions crossing a month boundary) is derived again
# when a neighbouring month's events change after it was built, e.g. month M+1 landing after
# M. Only partitions built before are refreshed: months without data stay unmaterialized.
# NEIGHBOUR_CHANGED holds from the tick a month it reads changes until it is requested or built
# (the tables over all months wait on it too, see automation.ON_ANY_MONTH_CHANGE).
NEIGHBOUR_CHANGED = (
    ~dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
).with_label("built, and a month it reads changed since")
ON_NEIGHBOUR_CHANGE = (
    NEIGHBOUR_CHANGED
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("rebuild when an upstream month changes")
# The assets ON_NEIGHBOUR_CHANGE rebuilds (a test holds this list to the definitions).
REBUILT_ON_NEIGHBOUR_CHANGE = [
    dg.AssetKey(["core", "fact_sessions"]),
    dg.AssetKey(["core", "fact_user_days"]),
    dg.AssetKey(["core", "fact_daily_kpis"]),
    dg.AssetKey(["analytics", "data_profile"]),
]

# Metadata key of an observation saying why an asset was not built this time (`cip run`
# lists them).
SKIPPED = "skipped"


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dg.EventLogRecord | None:
    """The latest materialization record of `key` (or of its `partition`), if any."""
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return found[0] if found else None


def recorded(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dict[str, Any]:
    """The metadata values of the latest materialization of `key` (or of its `partition`);
    empty when there is none."""
    record = latest_materialization(instance, key, partition)
    materialization = record.asset_materialization if record else None
    return {k: v.value for k, v in materialization.metadata.items()} if materialization else {}


def skipped(key: dg.AssetKey, reason: str) -> dg.AssetObservation:
    """The asset was not built this time, and why (too little data, say)."""
    return dg.AssetObservation(asset_key=key, metadata={SKIPPED: reason})
