"""The SQL type: an asset returns a query over upstream tables or lake files; the warehouse
runs it and stores the result. Downstream assets receive a reference, never rows."""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import duckdb

from cip_pipeline.assets.common import headline, recorded
from cip_pipeline.io_managers.tables import (
    CHUNKS,
    Chunk,
    TableName,
    TimeSlice,
    replace_rows,
    time_slice,
    warn_of_schema_changes,
)
from cip_pipeline.resources import WarehouseResource


@dataclass(frozen=True)
class SqlQuery:
    """A SELECT that DuckDB runs inside the warehouse to produce an asset's rows.

    `headline`, when given, is a one-row SELECT over the view `written` (the rows just stored);
    its columns become materialization metadata, so figures of the table cost no second
    computation of it. `chunks`, when given, replace `sql`: SELECTs whose rows are stored
    together in one transaction, for a build too big for the memory budget in one query, and
    each kept from the last build when unchanged (see `Chunk`). `staging` names tables the
    query reads that the asset filled for it alone: they are dropped once the rows are stored.
    """

    sql: str = ""
    headline: str | None = None
    chunks: tuple[Chunk, ...] = ()
    staging: tuple[str, ...] = ()

    @classmethod
    def chunked(cls, chunks: Sequence[Chunk | str]) -> "SqlQuery":
        """The rows of several SELECTs (at least one), stored as one table or partition."""
        if not chunks:
            raise ValueError("a chunked build needs at least one SELECT")
        return cls(
            chunks=tuple(
                c if isinstance(c, Chunk) else Chunk(c, f"chunk {i + 1}")
                for i, c in enumerate(chunks)
            )
        )

    def parts(self) -> list[Chunk]:
        return list(self.chunks) or [Chunk(self.sql)]


@dataclass(frozen=True)
class SqlTable:
    """A table, or one partition of it, for downstream SQL to select from."""

    schema: str
    table: str
    where: str | None = None

    @property
    def qualified(self) -> str:
        return f'"{self.schema}"."{self.table}"'

    def select(self, columns: str = "*") -> str:
        """A subquery over the referenced rows."""
        where = f" WHERE {self.where}" if self.where else ""
        return f"(SELECT {columns} FROM {self.qualified}{where})"


class DuckDBSqlIOManager(dg.ConfigurableIOManager):
    """Materializes `SqlQuery` outputs as warehouse tables, replacing exactly the partition."""

    warehouse: dg.ResourceDependency[WarehouseResource]

    def handle_output(self, context: dg.OutputContext, obj: SqlQuery) -> None:
        if not isinstance(obj, SqlQuery):
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()} must return SqlQuery, got {type(obj)}"
            )
        name, part = TableName.of(context.asset_key), time_slice(context)
        parts = obj.parts()
        previous: list[dict] = []
        if any(c.fingerprint for c in parts):
            partition = context.partition_key if context.has_partition_key else None
            last = recorded(context.step_context.instance, context.asset_key, partition)
            previous = last.get(CHUNKS) or []
        summary = None
        if obj.headline is not None:
            statement = obj.headline

            def summary(con: duckdb.DuckDBPyConnection) -> dict[str, dg.MetadataValue]:
                written = _reference(name, part).select()
                con.execute(f"CREATE OR REPLACE TEMP VIEW written AS {written}")
                return headline(con, statement)

        with self.warehouse.connect() as con:
            metadata = replace_rows(con, name, parts, part, previous, summary)
            for table in obj.staging:
                con.execute(f"DROP TABLE IF EXISTS {table}")
        warn_of_schema_changes(context, name, metadata)
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> SqlTable:
        return _reference(TableName.of(context.asset_key), time_slice(context))


def _reference(name: TableName, part: TimeSlice | None) -> SqlTable:
    """The table, or its partition, as downstream SQL selects from it."""
    return SqlTable(name.schema, name.table, part.predicate() if part else None)
