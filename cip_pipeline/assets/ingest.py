"""Ingest: raw month file -> validated Parquet in the lake -> `core.events` in the warehouse."""

import json
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pyarrow.parquet as pq

from cip_pipeline import paths, sql
from cip_pipeline.assets.common import fetch_row, recorded
from cip_pipeline.ingest import reader
from cip_pipeline.io_managers import SqlQuery, SqlTable
from cip_pipeline.io_managers.tables import PARTITION_EXPR, Chunk, TimeSlice
from cip_pipeline.months import raw_file_name
from cip_pipeline.partitions import (
    WAREHOUSE_POOL,
    month_of_partition,
    month_spans,
    month_window,
    monthly,
    span_label,
)
from cip_pipeline.resources import LakeResource, WarehouseResource

QUARANTINE_WARN_SHARE = 0.001
QUARANTINE_FAIL_SHARE = 0.05


def _raw_file(lake: LakeResource, partition_key: str) -> Path:
    month = month_of_partition(partition_key)
    raw = lake.raw_file(month)
    if raw is None:
        raise dg.Failure(
            description=f"no raw file for {month} in {lake.raw_dir}",
            metadata={"expected": f"{raw_file_name(month)}.csv or {raw_file_name(month)}.csv.gz"},
        )
    return raw


def unread_note(read: Path, unread: Path) -> str:
    return (
        f"{unread.name} is not read: {read.name} is there too, and a month's .csv is read "
        "before its .csv.gz (remove the one not meant)"
    )


def _lake_counts(lake: LakeResource, month: str) -> tuple[int, dict[str, int]]:
    """Rows in the month's events Parquet (from the parts' footers), and quarantined rows by
    reason."""
    parquet_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in lake.events_parts(month))
    quarantine = lake.quarantine_parts(month)
    if not quarantine:
        return parquet_rows, {}
    reasons = pl.read_parquet(quarantine, columns=["reason"])["reason"]
    return parquet_rows, dict(reasons.value_counts().iter_rows())


def _parquet_schema(path: Path) -> dg.TableSchema:
    schema = pq.read_schema(path)
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


LAKE_STATE = "lake_state"  # events_parquet metadata: the LakeState the next ingest starts from


@dg.asset(
    partitions_def=monthly,
    group_name="ingest",
    kinds={"polars", "parquet"},
    description="The month's raw REES46 file, every row validated, typed and written as ZSTD "
    "Parquet in the lake; rejected rows go to the quarantine with a reason. When the file only "
    "grew since the last run, only the appended bytes are read, into a new part. A last line "
    "without a newline is left for the next run (a writer may not have finished it).",
)
def events_parquet(
    context: dg.AssetExecutionContext, lake: LakeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    month = month_of_partition(context.partition_key)
    raw = _raw_file(lake, context.partition_key)
    unread = paths.unread_beside(raw)  # before the read: a .csv arriving during it was not read
    start, end = month_window(context.partition_key)
    previous = reader.LakeState.from_json(
        recorded(context.instance, events_parquet.key, context.partition_key).get(LAKE_STATE)
    )
    try:
        result = reader.ingest_month(
            raw,
            start,
            end,
            lake.events_dir(month),
            lake.quarantine_dir(month),
            warehouse.scratch,
            previous,
        )
    except reader.RawFileError as exc:
        raise dg.Failure(description=str(exc)) from exc
    # The bytes the lake was read from: a gzip file's uncompressed, up to the last newline.
    raw_bytes = result.state.raw_bytes
    parts = lake.events_parts(month)
    parquet_bytes = sum(p.stat().st_size for p in parts)
    context.log.info(
        f"{month}: {result.describe()}, {result.rows_read:,} rows in {result.seconds:.1f} s; "
        f"the month: {result.rows_in:,} rows in, {result.rows_loaded:,} to load, "
        f"{sum(result.quarantined.values()):,} quarantined, {result.duplicates:,} duplicates"
    )
    if result.pending_bytes:
        context.log.warning(
            f"{month}: the last {result.pending_bytes:,} bytes of {raw.name} have no newline "
            "after them and were not read: a line still being written is read by the next run "
            "once it ends; a finished file needs a final newline for its last row to load"
        )
    raw_extra: dict[str, dg.MetadataValue] = {}
    if raw.name.endswith(".gz"):
        raw_extra["raw_gzip_bytes"] = dg.MetadataValue.int(raw.stat().st_size)
    if unread is not None:
        context.log.warning(unread_note(raw, unread))
        raw_extra["raw_file_not_read"] = dg.MetadataValue.path(str(unread))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(result.rows_valid),
            "dagster/column_schema": _parquet_schema(parts[-1]),
            "read": dg.MetadataValue.text(result.mode),
            "read_whole_because": dg.MetadataValue.text(result.why),
            "raw_rows": dg.MetadataValue.int(result.raw_rows),
            "raw_rows_read": dg.MetadataValue.int(result.rows_read),
            "rows_in": dg.MetadataValue.int(result.rows_in),
            "rows_valid": dg.MetadataValue.int(result.rows_valid),
            "rows_loaded": dg.MetadataValue.int(result.rows_loaded),
            "rows_quarantined": dg.MetadataValue.int(sum(result.quarantined.values())),
            "rows_duplicate": dg.MetadataValue.int(result.duplicates),
            "quarantine_by_reason": dg.MetadataValue.json(result.quarantined),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "rows_per_second": dg.MetadataValue.int(
                round(result.rows_read / max(result.seconds, 1e-9))
            ),
            "raw_file": dg.MetadataValue.path(str(raw)),
            "raw_bytes": dg.MetadataValue.int(raw_bytes),
            **raw_extra,
            "raw_bytes_pending": dg.MetadataValue.int(result.pending_bytes),
            "parquet": dg.MetadataValue.path(str(lake.events_dir(month))),
            "parquet_parts": dg.MetadataValue.int(len(parts)),
            "parquet_bytes": dg.MetadataValue.int(parquet_bytes),
            "size_reduction": dg.MetadataValue.float(
                round(1 - parquet_bytes / max(raw_bytes, 1), 4)
            ),
            LAKE_STATE: dg.MetadataValue.json(result.state.to_json()),
        }
    )


def _spec(
    name: str, asset: dg.AssetKey | dg.AssetsDefinition, description: str, blocking: bool = False
) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():
        # Month-partitioned checks are a preview feature of the Dagster range we pin and test.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, description=description, blocking=blocking, partitions_def=monthly
        )


@dg.multi_asset_check(
    specs=[
        _spec(
            "row_accounting",
            events_parquet,
            "Raw rows (counted from the file's bytes, apart from the parser) = "
            "rows in the Parquet + invalid rows in the quarantine.",
            blocking=True,
        ),
        _spec("schema_and_types", events_parquet, "The Parquet has the typed schema."),
        _spec(
            "quarantine_rate",
            events_parquet,
            "Invalid rows (duplicates counted apart): warn above 0.1%, fail above 5%.",
        ),
        _spec(
            "non_null_keys",
            events_parquet,
            "event_time, event_type, product_id, category_id, user_id, price never null.",
        ),
        _spec("event_time_in_month", events_parquet, "Every event lies in the month."),
        _spec(
            "event_type_domain",
            events_parquet,
            "event_type in view, cart, purchase, remove_from_cart.",
        ),
        _spec("price_non_negative", events_parquet, "price >= 0."),
    ],
)
def events_parquet_checks(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    month = month_of_partition(context.partition_key)
    parts = lake.events_parts(month)
    raw_rows = recorded_raw_rows(context.instance, context.partition_key, lake)
    parquet_rows, reasons = _lake_counts(lake, month)
    duplicates = reasons.pop(reader.DUPLICATE, 0)
    invalid = sum(reasons.values())
    yield dg.AssetCheckResult(
        check_name="row_accounting",
        passed=raw_rows == parquet_rows + invalid,
        metadata={
            "raw_rows": raw_rows,
            "parquet_rows": parquet_rows,
            "quarantined": invalid,
            "duplicates": duplicates,
        },
    )

    mismatched = []
    for part in parts:
        actual = pl.read_parquet_schema(part)
        mismatched += [
            f"{part.name} {name}: {actual.get(name, 'missing')} != {dtype}"
            for name, dtype in reader.EVENTS_SCHEMA.items()
            if actual.get(name) != dtype
        ]
        mismatched += [
            f"{part.name} {name}: unexpected" for name in actual if name not in reader.EVENTS_SCHEMA
        ]
    yield dg.AssetCheckResult(
        check_name="schema_and_types", passed=not mismatched, metadata={"mismatched": mismatched}
    )

    yield quarantine_rate(invalid, duplicates, raw_rows)
    with warehouse.scratch() as con:
        profile = events_profile(con, f"read_parquet({sql.quote_paths(parts)})")
    yield from row_checks(profile, *month_window(context.partition_key))


def recorded_raw_rows(instance: dg.DagsterInstance, partition_key: str, lake: LakeResource) -> int:
    """The raw file's rows as events_parquet counted them from the bytes while it read the file
    (the lake files checked came from that read); counted now for a materialization that
    recorded none."""
    raw_rows = recorded(instance, events_parquet.key, partition_key).get("raw_rows")
    if isinstance(raw_rows, int):
        return raw_rows
    return reader.count_raw_rows(_raw_file(lake, partition_key))


def quarantine_rate(invalid: int, duplicates: int, raw_rows: int) -> dg.AssetCheckResult:
    """Invalid rows over raw rows: passes up to 0.1%, a warning above, an error above 5%."""
    share = invalid / max(raw_rows, 1)
    if share > QUARANTINE_FAIL_SHARE:
        severity, passed = dg.AssetCheckSeverity.ERROR, False
    elif share > QUARANTINE_WARN_SHARE:
        severity, passed = dg.AssetCheckSeverity.WARN, False
    else:
        severity, passed = dg.AssetCheckSeverity.WARN, True
    return dg.AssetCheckResult(
        check_name="quarantine_rate",
        passed=passed,
        severity=severity,
        metadata={
            "quarantine_share": round(share, 6),
            "duplicate_share": round(duplicates / max(raw_rows, 1), 6),
        },
    )


def events_profile(con: duckdb.DuckDBPyConnection, events: str) -> dict[str, Any]:
    """One scan of a month's events (`events`: a relation) for the row checks."""
    return fetch_row(con, sql.statement("ingest", "events_profile", events=events))


def row_checks(
    profile: dict[str, Any], start: datetime, end: datetime
) -> Iterator[dg.AssetCheckResult]:
    """non_null_keys, event_time_in_month, event_type_domain and price_non_negative of a
    month's events, from their profile."""
    yield dg.AssetCheckResult(
        check_name="non_null_keys",
        passed=profile["null_keys"] == 0,
        metadata={"rows_with_null_key": profile["null_keys"]},
    )
    lo, hi = profile["min_time"], profile["max_time"]
    yield dg.AssetCheckResult(
        check_name="event_time_in_month",
        passed=lo is None or (lo >= start and hi < end),
        metadata={"min": str(lo), "max": str(hi)},
    )
    yield dg.AssetCheckResult(
        check_name="event_type_domain",
        passed=profile["rows_outside_domain"] == 0,
        metadata={
            "rows_outside_domain": profile["rows_outside_domain"],
            "outside_domain": profile["outside_domain"],
        },
    )
    yield dg.AssetCheckResult(
        check_name="price_non_negative",
        passed=profile["negative_prices"] == 0,
        metadata={"negative_prices": profile["negative_prices"]},
    )


@dg.asset(
    key=["core", "events"],
    deps=[events_parquet],
    partitions_def=monthly,
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    metadata={PARTITION_EXPR: "event_time"},
    description="The month's events in the warehouse, loaded by DuckDB from the lake's Parquet "
    "with exact duplicate rows left out.",
)
def core_events(context: dg.AssetExecutionContext, lake: LakeResource) -> SqlQuery:
    month = month_of_partition(context.partition_key)
    return SqlQuery.chunked(load_chunks(lake, month, *month_window(context.partition_key)))


def load_chunks(lake: LakeResource, month: str, start: datetime, end: datetime) -> list[Chunk]:
    """A chunk per span of the month (`month_spans`) with events, reading the lake parts that
    hold rows of the span. A part's name is unique to what it holds, so a chunk's SQL is its
    fingerprint: after an append, only the spans the new part touches are loaded again."""
    parts = lake.events_parts(month)
    if not parts:
        raise dg.Failure(f"no events Parquet for {month} in the lake: materialize events_parquet")
    ranges = {part: _time_ranges(part, start, end) for part in parts}
    spans = [
        (
            since,
            until,
            [p for p in parts if any(lo < until and hi >= since for lo, hi in ranges[p])],
        )
        for since, until in month_spans(start, end)
    ]
    # A month without rows at all still gets one (empty) load, over the whole month.
    spans = [span for span in spans if span[2]] or [(start, end, parts)]
    quarantine = lake.quarantine_dir(month)
    chunks = []
    for since, until, in_span in spans:
        select = "\nUNION ALL\n".join(
            sql.statement(
                "ingest",
                "load_events",
                events_parquet=sql.quote_path(part),
                quarantine_parquet=sql.quote_path(quarantine / part.name),
                since=sql.timestamp(since),
                until=sql.timestamp(until),
            )
            for part in in_span
        )
        keep = TimeSlice("event_time", since, until).predicate()
        chunks.append(Chunk(select, span_label(since, until), sql.digest(select), keep))
    return chunks


def _time_ranges(part: Path, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The [min, max] event_time of each of a part's row groups, from their statistics (the
    whole month for a row group without them)."""
    meta = pq.ParquetFile(part).metadata
    column = meta.schema.names.index("event_time")
    ranges = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(column).statistics
        if group.num_rows:
            ranges.append((stats.min, stats.max) if stats and stats.has_min_max else (start, end))
    return ranges


CORE_EVENTS_COLUMNS = {
    "event_time": "TIMESTAMP",
    "event_type": "ENUM('view', 'cart', 'purchase', 'remove_from_cart')",
    "product_id": "INTEGER",
    "category_id": "BIGINT",
    "category_code": "VARCHAR",
    "brand": "VARCHAR",
    "price": "DECIMAL(9,2)",
    "user_id": "INTEGER",
    "user_session": "UUID",
}


@dg.multi_asset_check(
    specs=[
        _spec(
            "row_accounting",
            core_events.key,
            "Rows in the partition = rows in the Parquet - duplicates in the quarantine.",
        ),
        _spec("schema_and_types", core_events.key, "Columns and types as designed."),
        _spec(
            "non_null_keys",
            core_events.key,
            "event_time, event_type, product_id, category_id, user_id, price never null.",
        ),
        _spec(
            "event_time_in_month",
            core_events.key,
            "Every event the month's load came from lies in the month.",
        ),
        _spec(
            "event_type_domain",
            core_events.key,
            "event_type in view, cart, purchase, remove_from_cart.",
        ),
        _spec("price_non_negative", core_events.key, "price >= 0."),
    ],
    pool=WAREHOUSE_POOL,
)
def core_events_checks(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    month = month_of_partition(context.partition_key)
    start, end = month_window(context.partition_key)
    parquet_rows, reasons = _lake_counts(lake, month)
    duplicates = reasons.get(reader.DUPLICATE, 0)
    partition = SqlTable("core", "events", TimeSlice("event_time", start, end).predicate())
    with warehouse.connect(read_only=True) as con:
        profile = events_profile(con, partition.select())
        columns = dict(con.execute(sql.statement("ingest", "events_columns")).fetchall())
        # The month's time range is that of the rows its load came from.
        profile["min_time"], profile["max_time"] = con.execute(
            sql.statement(
                "ingest",
                "parquet_time_range",
                events_parquet=sql.quote_paths(lake.events_parts(month)),
            )
        ).fetchone()
    rows = profile["rows"]
    yield dg.AssetCheckResult(
        check_name="row_accounting",
        passed=rows == parquet_rows - duplicates,
        metadata={"rows": rows, "parquet_rows": parquet_rows, "duplicates": duplicates},
    )
    yield dg.AssetCheckResult(
        check_name="schema_and_types",
        passed=columns == CORE_EVENTS_COLUMNS,
        metadata={"columns": json.dumps(columns)},
    )
    yield from row_checks(profile, start, end)


@dg.asset(
    key=["core", "ingest_audit"],
    deps=[core_events],
    partitions_def=monthly,
    group_name="core",
    kinds={"polars", "duckdb"},
    io_manager_key="polars_io_manager",
    pool=WAREHOUSE_POOL,
    metadata={PARTITION_EXPR: "month"},
    description="Row accounting of the month: rows in, loaded, duplicates and quarantined rows "
    "by reason (one row per outcome).",
)
def ingest_audit(context: dg.AssetExecutionContext, lake: LakeResource) -> pl.DataFrame:
    month = month_of_partition(context.partition_key)
    start, _ = month_window(context.partition_key)
    parquet_rows, reasons = _lake_counts(lake, month)
    loaded = parquet_rows - reasons.get(reader.DUPLICATE, 0)
    outcomes = pl.DataFrame(
        {"reason": ["loaded", *reasons], "rows": [loaded, *reasons.values()]},
        schema={"reason": pl.String, "rows": pl.Int64},
    )
    return outcomes.select(
        pl.lit(start).cast(pl.Datetime("us")).alias("month"),
        pl.when(pl.col("reason").is_in(["loaded", reader.DUPLICATE]))
        .then(pl.col("reason"))
        .otherwise(pl.lit("quarantined"))
        .alias("outcome"),
        "reason",
        pl.col("rows").cast(pl.Int64),
    ).sort("outcome", "reason")
