"""Replacing a table, or one partition of it, inside one DuckDB transaction. Shared by the IO
managers so that every stored type gets the same idempotency and crash safety."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import duckdb

# Asset definition metadata naming the column that a time partition filters on.
PARTITION_EXPR = "partition_expr"


@dataclass(frozen=True)
class TableName:
    schema: str
    table: str

    @classmethod
    def of(cls, key: dg.AssetKey) -> TableName:
        if len(key.path) != 2:
            raise dg.DagsterInvariantViolationError(
                f"warehouse assets are keyed schema/table, got {key.to_user_string()}"
            )
        return cls(*key.path)

    @property
    def qualified(self) -> str:
        return f'"{self.schema}"."{self.table}"'


@dataclass(frozen=True)
class TimeSlice:
    """The rows of one partition: `column` in [start, end)."""

    column: str
    start: datetime
    end: datetime

    def predicate(self) -> str:
        return (
            f"{self.column} >= TIMESTAMP '{self.start:%Y-%m-%d %H:%M:%S}' AND "
            f"{self.column} < TIMESTAMP '{self.end:%Y-%m-%d %H:%M:%S}'"
        )


def time_slice(context: dg.OutputContext | dg.InputContext) -> TimeSlice | None:
    """The partition the IO call is about, or None for an unpartitioned asset."""
    if not context.has_asset_partitions:
        return None
    column = (context.definition_metadata or {}).get(PARTITION_EXPR)
    if isinstance(context, dg.InputContext) and context.upstream_output is not None:
        column = (context.upstream_output.definition_metadata or {}).get(PARTITION_EXPR)
    if not column:
        raise dg.DagsterInvariantViolationError(
            f"{context.asset_key.to_user_string()} is partitioned but declares no "
            f"'{PARTITION_EXPR}' metadata"
        )
    window = context.asset_partitions_time_window
    return TimeSlice(column, window.start.replace(tzinfo=None), window.end.replace(tzinfo=None))


def replace_rows(
    con: duckdb.DuckDBPyConnection,
    name: TableName,
    selects: Sequence[str],
    part: TimeSlice | None,
) -> dict[str, dg.RawMetadataValue]:
    """Make `name` (or its partition) hold exactly the rows of the `selects` (one query, or the
    chunks of a build too big for the memory budget in one), atomically.

    A failure anywhere rolls back to the previous version of the table or partition.
    """
    first, *rest = selects
    chunk_seconds: list[float] = []

    def timed(statement: str) -> None:
        started = time.perf_counter()
        con.execute(statement)
        chunk_seconds.append(round(time.perf_counter() - started, 3))

    t0 = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{name.schema}"')
        if part is None:
            timed(f"CREATE OR REPLACE TABLE {name.qualified} AS {first}")
            for select_sql in rest:
                timed(f"INSERT INTO {name.qualified} BY NAME {select_sql}")
        else:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {name.qualified} AS SELECT * FROM ({first}) LIMIT 0"
            )
            outside = (
                f"SELECT count(*) FILTER (WHERE ({part.predicate()}) IS NOT TRUE) "
                f"FROM {name.qualified}"
            )
            before = con.execute(outside).fetchone()[0]
            con.execute(f"DELETE FROM {name.qualified} WHERE {part.predicate()}")
            for select_sql in selects:
                timed(f"INSERT INTO {name.qualified} BY NAME {select_sql}")
            stray = con.execute(outside).fetchone()[0] - before
            if stray:
                # Such rows would never be replaced by a later run of this partition.
                raise dg.Failure(
                    f"{name.qualified}: the query returned {stray} rows outside "
                    f"the partition ({part.predicate()})"
                )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    where = f" WHERE {part.predicate()}" if part else ""
    rows = con.execute(f"SELECT count(*) FROM {name.qualified}{where}").fetchone()[0]
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [name.schema, name.table],
    ).fetchall()
    chunks = {"chunk_seconds": dg.MetadataValue.json(chunk_seconds)} if rest else {}
    return {
        **chunks,
        "dagster/row_count": dg.MetadataValue.int(int(rows)),
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in columns]),
        "dagster/table_name": f"{name.schema}.{name.table}",
        "write_seconds": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
    }
