"""Replacing a table, or one partition of it, inside one DuckDB transaction. Shared by the IO
managers so that every stored type gets the same idempotency and crash safety."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import duckdb

from cip_pipeline import sql

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

    def exists(self, con: duckdb.DuckDBPyConnection) -> bool:
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name = ?",
            [self.schema, self.table],
        ).fetchall()
        return found[0][0] > 0


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


@dataclass(frozen=True)
class Chunk:
    """One SELECT of a table's (or partition's) build.

    With a `fingerprint` (a digest of its SQL and of every row it reads) and `keep` (a
    predicate that picks exactly its rows out of the stored table), the stored rows are kept
    instead of running the SELECT again when the last materialization recorded the same
    fingerprint, and the table still holds as many such rows as it recorded.
    """

    select: str
    label: str = "all"
    fingerprint: str | None = None
    keep: str | None = None


def fingerprint(select: str, read: Iterable[tuple[int, int]]) -> str:
    """A chunk's fingerprint: its SQL, and the (rows, hash sum) pairs of what it reads."""
    counts = list(read)
    return f"{sql.digest(select)} {sum(n for n, _ in counts)} {sum(h for _, h in counts)}"


# Materialization metadata: per chunk, its label, fingerprint, rows, seconds and whether kept.
CHUNKS = "chunks"


def reusable(
    con: duckdb.DuckDBPyConnection,
    name: TableName,
    chunks: Sequence[Chunk],
    part: TimeSlice | None,
    previous: Sequence[dict[str, Any]],
) -> dict[int, int]:
    """The chunks whose stored rows can be kept, by index, with their rows: same fingerprint
    as recorded by the last materialization, and the recorded number of rows still there."""
    recorded_rows = {
        c["fingerprint"]: c["rows"] for c in previous if c.get("fingerprint") is not None
    }
    candidates = [
        i
        for i, c in enumerate(chunks)
        if c.fingerprint is not None and c.keep is not None and c.fingerprint in recorded_rows
    ]
    if not candidates or not name.exists(con):
        return {}
    scope = f"({part.predicate()}) AND " if part else ""
    counts = ", ".join(f"count(*) FILTER (WHERE {chunks[i].keep}) AS c{i}" for i in candidates)
    found = con.execute(f"SELECT {counts} FROM {name.qualified} WHERE {scope}true").fetchone()
    return {
        i: n
        for i, n in zip(candidates, found, strict=True)
        if n == recorded_rows[chunks[i].fingerprint]
    }


# Materialization metadata: the columns a partial rewrite added to or dropped from the table.
SCHEMA_CHANGES = "schema_changes"


def _columns(con: duckdb.DuckDBPyConnection, name: TableName) -> list[tuple[str, str]]:
    """The table's (column, type) pairs, in order."""
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [name.schema, name.table],
    ).fetchall()


# A column the query returns only NULL in (a Polars frame's all-null column) has this type; it
# inserts into any stored type.
_UNTYPED = '"NULL"'


def _follow_columns(con: duckdb.DuckDBPyConnection, name: TableName, select: str) -> list[str]:
    """Give a table that is rewritten in part (a partition, or some chunks) the columns its
    query now returns: new columns are added, NULL in the rows kept until those are built
    again; a column whose type changed is converted, the rows kept too (unless a stored value
    would not survive it: the write fails); columns the query no longer returns are dropped, in
    every row.
    Returns what changed."""
    wanted = con.execute(f"DESCRIBE SELECT * FROM ({select}) LIMIT 0").fetchall()
    stored = dict(_columns(con, name))
    changes = []
    for column, data_type, *_ in wanted:
        if column not in stored:
            con.execute(f'ALTER TABLE {name.qualified} ADD COLUMN "{column}" {data_type}')
            changes.append(f"added {column} {data_type}")
        elif data_type not in (stored[column], _UNTYPED):
            _convert(con, name, column, stored[column], data_type)
            changes.append(f"changed {column} {stored[column]} -> {data_type}")
    for column in stored.keys() - {c for c, *_ in wanted}:
        con.execute(f'ALTER TABLE {name.qualified} DROP COLUMN "{column}"')
        changes.append(f"dropped {column}")
    return changes


def _convert(
    con: duckdb.DuckDBPyConnection, name: TableName, column: str, old: str, new: str
) -> None:
    """Change a column's type in every row, provided every stored value survives the change
    (cast to the new type and back, it is what it was): a narrower type (DOUBLE to BIGINT,
    fewer decimals) would silently round the rows this run does not rebuild."""
    lossy = con.execute(
        f'SELECT count(*) FROM {name.qualified} WHERE "{column}" IS NOT NULL AND '
        f'TRY_CAST(TRY_CAST("{column}" AS {new}) AS {old}) IS DISTINCT FROM "{column}"'
    ).fetchone()[0]
    if lossy:
        raise dg.Failure(
            f"{name.qualified}: column {column} is now {new}, not {old}, and {lossy} stored "
            f"rows would change converted to it; rebuild every partition of the table (drop "
            "it, then materialize them all) to change its type"
        )
    con.execute(f'ALTER TABLE {name.qualified} ALTER COLUMN "{column}" SET DATA TYPE {new}')


def warn_of_schema_changes(
    context: dg.OutputContext, name: TableName, metadata: dict[str, dg.RawMetadataValue]
) -> None:
    """A partial rewrite that changed the columns changed them for the rows it kept too."""
    changes = metadata.get(SCHEMA_CHANGES)
    if changes is not None:
        context.log.warning(
            f"{name.qualified}: {', '.join(changes.value)}, in every row: the rows this run did "
            "not rebuild hold NULL in added columns, have lost dropped ones and hold converted "
            "values in changed ones, until their partitions are materialized again"
        )


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back on any failure."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails has ended the transaction already: the error to raise is its own.
        with suppress(duckdb.TransactionException):
            con.execute("ROLLBACK")
        raise


def _record(chunk: Chunk, rows: int, seconds: float, kept: bool) -> dict[str, Any]:
    return {
        "label": chunk.label,
        "rows": rows,
        "seconds": round(seconds, 3),
        "kept": kept,
        "fingerprint": chunk.fingerprint,
    }


def replace_rows(
    con: duckdb.DuckDBPyConnection,
    name: TableName,
    chunks: Sequence[Chunk | str],
    part: TimeSlice | None,
    previous: Sequence[dict[str, Any]] = (),
    summary: Callable[[duckdb.DuckDBPyConnection], dict[str, dg.MetadataValue]] | None = None,
) -> dict[str, dg.RawMetadataValue]:
    """Make `name` (or its partition) hold exactly the rows of the `chunks` (one query, or the
    chunks of a build too big for the memory budget in one), atomically. A chunk whose stored
    rows are still what it would build (see `Chunk`; `previous` is the CHUNKS metadata of the
    last materialization) keeps them instead of being built again. `summary`, run on the new
    rows before they are committed, adds its figures to the metadata.

    A failure anywhere, the summary's included, rolls back to the previous version of the
    table or partition.
    """
    parts = [c if isinstance(c, Chunk) else Chunk(c) for c in chunks]
    records: list[dict[str, Any]] = []
    schema_changes: list[str] = []

    def build(chunk: Chunk, statement: str) -> None:
        started = time.perf_counter()
        rows = con.execute(statement).fetchone()[0]
        records.append(_record(chunk, int(rows), time.perf_counter() - started, kept=False))

    t0 = time.perf_counter()
    with transaction(con):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{name.schema}"')
        kept = reusable(con, name, parts, part, previous)
        if part is None and not kept:
            first, *rest = parts
            build(first, f"CREATE OR REPLACE TABLE {name.qualified} AS {first.select}")
            for chunk in rest:
                build(chunk, f"INSERT INTO {name.qualified} BY NAME {chunk.select}")
        else:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {name.qualified} AS "
                f"SELECT * FROM ({parts[0].select}) LIMIT 0"
            )
            schema_changes = _follow_columns(con, name, parts[0].select)
            scope = part.predicate() if part else "true"
            outside = f"SELECT count(*) FILTER (WHERE ({scope}) IS NOT TRUE) FROM {name.qualified}"
            before = con.execute(outside).fetchone()[0]
            keep = " OR ".join(f"({parts[i].keep})" for i in sorted(kept)) or "false"
            con.execute(f"DELETE FROM {name.qualified} WHERE ({scope}) AND ({keep}) IS NOT TRUE")
            for i, chunk in enumerate(parts):
                if i in kept:
                    records.append(_record(chunk, kept[i], 0.0, kept=True))
                else:
                    build(chunk, f"INSERT INTO {name.qualified} BY NAME {chunk.select}")
            stray = con.execute(outside).fetchone()[0] - before
            if stray:
                # Such rows would never be replaced by a later run of this partition.
                raise dg.Failure(
                    f"{name.qualified}: the query returned {stray} rows outside "
                    f"the partition ({scope})"
                )
        t_summary = time.perf_counter()
        figures = summary(con) if summary else {}
        t_summary = time.perf_counter() - t_summary
    where = f" WHERE {part.predicate()}" if part else ""
    rows = con.execute(f"SELECT count(*) FROM {name.qualified}{where}").fetchone()[0]
    columns = _columns(con, name)
    chunked = len(parts) > 1 or any(c.fingerprint for c in parts)
    return {
        **({CHUNKS: dg.MetadataValue.json(records)} if chunked else {}),
        **({SCHEMA_CHANGES: dg.MetadataValue.json(schema_changes)} if schema_changes else {}),
        "dagster/row_count": dg.MetadataValue.int(int(rows)),
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in columns]),
        "dagster/table_name": f"{name.schema}.{name.table}",
        "write_seconds": dg.MetadataValue.float(round(time.perf_counter() - t0 - t_summary, 3)),
        **figures,
    }
