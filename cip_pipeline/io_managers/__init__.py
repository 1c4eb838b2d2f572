"""Typed IO managers: each stored type decides how it lands in the DuckDB warehouse."""

from cip_pipeline.io_managers.polars_io_manager import DuckDBPolarsIOManager
from cip_pipeline.io_managers.sql_io_manager import DuckDBSqlIOManager, SqlQuery, SqlTable
from cip_pipeline.io_managers.tables import Chunk, TableName, fingerprint

__all__ = [
    "Chunk",
    "DuckDBPolarsIOManager",
    "DuckDBSqlIOManager",
    "SqlQuery",
    "SqlTable",
    "TableName",
    "fingerprint",
]
