"""The Polars type, for small tables: frames are written by DuckDB from Arrow and loaded back
as Polars frames. Owned here rather than taken from dagster-duckdb-polars, whose 0.29 line
calls a connection method that DuckDB 2.0 removed."""

import dagster as dg
import polars as pl

from cip_pipeline.io_managers.tables import (
    TableName,
    replace_rows,
    time_slice,
    warn_of_schema_changes,
)
from cip_pipeline.resources import WarehouseResource


class DuckDBPolarsIOManager(dg.ConfigurableIOManager):
    warehouse: dg.ResourceDependency[WarehouseResource]

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()} must return a polars DataFrame"
            )
        name = TableName.of(context.asset_key)
        with self.warehouse.connect() as con:
            con.register("_frame", obj.to_arrow())
            try:
                metadata = replace_rows(con, name, ["SELECT * FROM _frame"], time_slice(context))
            finally:
                con.unregister("_frame")
        warn_of_schema_changes(context, name, metadata)
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        name = TableName.of(context.asset_key)
        part = time_slice(context)
        where = f" WHERE {part.predicate()}" if part else ""
        with self.warehouse.connect(read_only=True) as con:
            return con.sql(f"SELECT * FROM {name.qualified}{where}").pl()
