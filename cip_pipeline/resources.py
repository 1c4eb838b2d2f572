"""Warehouse and lake settings as Dagster resources."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from cip_pipeline import paths, sql
from cip_pipeline.budget import Budget
from cip_pipeline.duckdb_locks import connect_waiting
from cip_pipeline.months import month_of_raw_file
from cip_pipeline.paths import lake_parts


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file and the budget every connection to it runs under."""

    path: str = Field(
        default_factory=lambda: str(paths.warehouse_path()), description="DuckDB database file"
    )
    memory_limit: str = Field(
        default_factory=lambda: Budget.from_env().duckdb_memory_limit,
        description="DuckDB memory_limit; default: its share of the run's memory budget",
    )
    threads: int = Field(default=0, description="DuckDB threads; 0 = the run's share of cores")
    spill_dir: str = Field(default="", description="temp_directory; default beside the file")
    lock_timeout: float = Field(
        default=60.0,
        description="seconds to wait, with backoff, while another process (the dashboard) holds "
        "a conflicting lock on the file before failing",
    )

    def effective_threads(self) -> int:
        return self.threads or Budget.from_env().threads_per_run

    def _config(self) -> dict[str, str | int]:
        spill = Path(self.spill_dir) if self.spill_dir else Path(self.path).parent / "spill"
        spill.mkdir(parents=True, exist_ok=True)
        return {
            "memory_limit": self.memory_limit,
            "threads": self.effective_threads(),
            "temp_directory": str(spill),
            # Results keep an order only where the SQL says ORDER BY. Keeping insertion order
            # as well made the 110 M recommendations table fail its write under the budget
            # (an extra 512 MiB buffer); nothing here relies on an unstated order.
            "preserve_insertion_order": False,
        }

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse file. Writers must hold the warehouse pool (one at a time); a lock
        held by another process, such as the dashboard reading, is waited for (`lock_timeout`)."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = connect_waiting(
            self.path,
            read_only=read_only,
            config=self._config(),
            timeout=self.lock_timeout,
            on_wait=self._log_wait,
        )
        try:
            if not read_only:
                con.execute(sql.statement("warehouse", "create_types"))
                con.execute(sql.statement("warehouse", "drop_retired_tables"))
            yield con
        finally:
            con.close()

    def _log_wait(self, exc: duckdb.IOException) -> None:
        dg.get_dagster_logger().warning(
            f"{self.path} is locked by another process; retrying for up to "
            f"{self.lock_timeout:g} s ({str(exc).splitlines()[0]})"
        )

    def scratch(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB under the same budget, for work that needs no warehouse lock."""
        return duckdb.connect(":memory:", config=self._config())


class LakeResource(dg.ConfigurableResource):
    """Where raw files are read and the Parquet lake is written."""

    raw_dir: str = Field(default_factory=lambda: str(paths.raw_dir()))
    lake_dir: str = Field(default_factory=lambda: str(paths.lake_dir()))

    def events_dir(self, month: str) -> Path:
        """The month's events Parquet: one part per ingest that read new bytes of the raw file."""
        return Path(self.lake_dir) / "events" / f"month={month}"

    def quarantine_dir(self, month: str) -> Path:
        """The month's quarantine: per events part, a file of the same name."""
        return Path(self.lake_dir) / "quarantine" / f"month={month}"

    def events_parts(self, month: str) -> list[Path]:
        return lake_parts(self.events_dir(month))

    def quarantine_parts(self, month: str) -> list[Path]:
        return lake_parts(self.quarantine_dir(month))

    def raw_file(self, month: str) -> Path | None:
        """The month's raw file; `.csv` wins over `.csv.gz` when both exist."""
        return paths.raw_file(Path(self.raw_dir), month)

    def raw_months(self) -> list[str]:
        root = Path(self.raw_dir)
        if not root.is_dir():
            return []
        return sorted({m for p in root.iterdir() if (m := month_of_raw_file(p.name))})
