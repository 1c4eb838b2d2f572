"""A generated sample run through every asset, and helpers to compare warehouse tables with
the Polars oracle."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from cip_pipeline import definitions
from cip_pipeline.assets import analytics, core, experiments, ml
from cip_pipeline.automation import ALL_MONTHS_JOB
from cip_pipeline.budget import Budget
from cip_pipeline.runner import RunSummary, execute, run_months, write_instance_config

REL_TOLERANCE = 1e-6


def hand_made_events() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding an empty core.events with the warehouse's columns (the
    event type as text), for a statement run on hand-made rows."""
    con = duckdb.connect()
    con.execute(
        "CREATE SCHEMA core; CREATE TABLE core.events (event_time TIMESTAMP, event_type VARCHAR,"
        " product_id INTEGER, category_id BIGINT, category_code VARCHAR, brand VARCHAR,"
        " price DECIMAL(9, 2), user_id INTEGER, user_session UUID)"
    )
    return con


@dataclass
class WarehouseSample:
    root: Path
    instance: dg.DagsterInstance
    summaries: list[RunSummary] = field(default_factory=list)

    @property
    def raw_files(self) -> list[Path]:
        return sorted((self.root / "raw").glob("*.csv"))

    def table(self, query: str) -> pl.DataFrame:
        """A query over the warehouse as Polars (UUIDs as text, decimals as floats)."""
        return read_warehouse(self.root, query)

    def materialization(self, key: list[str], partition: str | None = None) -> dict:
        record = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(key),
                asset_partitions=[partition] if partition else None,
            ),
            limit=1,
        ).records[0]
        return dict(record.asset_materialization.metadata)


def run_sample(
    root: Path, months: list[str], instance: dg.DagsterInstance | None = None
) -> tuple[dg.DagsterInstance, list[RunSummary]]:
    """Load and derive `months` as `cip run` does, then build the tables over all months, with
    CIP_DATA_DIR=`root` (in an ephemeral instance unless one is given)."""
    instance = instance or dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(root))
        defs = definitions.build_definitions()  # resources bound to `root`
    summaries = run_months(defs, instance, months)
    # The tables over all months of this issue only (other domains test their own).
    over_all_months = [*core.UNPARTITIONED_ASSETS, *analytics.UNPARTITIONED_ASSETS]
    summaries.append(execute(defs, ALL_MONTHS_JOB, instance, "all months", assets=over_all_months))
    return instance, summaries


def build_dashboard_sample(source: Path, folder: Path) -> Path:
    """Copy the data folder `source` (raw files, lake, warehouse) under `folder`, then build
    the models and experiments on it through a persistent Dagster home there. Returns the new
    data folder."""
    root = folder / "data"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("spill", "dagster_home"))
    home = root / "dagster_home"
    home.mkdir()
    write_instance_config(home, Budget.from_env())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(root))
        defs = definitions.build_definitions()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        summary = execute(
            defs,
            ALL_MONTHS_JOB,
            instance,
            "models and experiments",
            assets=[*ml.ASSETS, *experiments.ASSETS],
        )
    assert summary.success and not summary.skipped, summary
    return root


def check_problems(summaries: list[RunSummary]) -> list[str]:
    return [p for s in summaries for p in [*s.check_problems, *s.failures]]


def read_warehouse(root: Path, query: str) -> pl.DataFrame:
    con = duckdb.connect(str(root / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        frame = con.sql(query).pl()
    finally:
        con.close()
    return frame.with_columns(
        [
            pl.col(name).cast(pl.Float64)
            for name, dtype in frame.schema.items()
            if isinstance(dtype, pl.Decimal)
        ]
    )


def assert_frames_match(actual: pl.DataFrame, expected: pl.DataFrame, key: list[str]) -> None:
    """Same rows (by key) and values: exact, floats within REL_TOLERANCE relative."""
    columns = [c for c in expected.columns if c in actual.columns]
    missing = sorted(set(actual.columns) - set(expected.columns))
    assert not missing, f"columns the oracle does not compute: {missing}"
    a = actual.select(columns).sort(key)
    e = expected.select(columns).sort(key)
    assert a.height == e.height, f"{a.height} rows, expected {e.height}"
    for column in columns:
        left, right = a[column].to_list(), e[column].to_list()
        floats = a[column].dtype.is_float() or e[column].dtype.is_float()
        for i, (x, y) in enumerate(zip(left, right, strict=True)):
            if x is None or y is None:
                ok = x is None and y is None
            elif floats:
                ok = math.isclose(float(x), float(y), rel_tol=REL_TOLERANCE, abs_tol=1e-9)
            else:
                ok = x == y
            assert ok, f"{column} differs at {a.select(key).row(i)}: {x!r} != {y!r}"
