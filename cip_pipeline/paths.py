"""Where the project keeps its files: everything under `CIP_DATA_DIR` (default `./data`)."""

from __future__ import annotations

import os
from pathlib import Path

from cip_pipeline.months import raw_file_name


def data_dir() -> Path:
    return Path(os.environ.get("CIP_DATA_DIR", "data")).resolve()


def raw_dir() -> Path:
    return data_dir() / "raw"


def lake_dir() -> Path:
    return data_dir() / "lake"


def warehouse_path() -> Path:
    return data_dir() / "warehouse" / "cip.duckdb"


def dagster_home() -> Path:
    return data_dir() / "dagster_home"


def lake_parts(folder: Path) -> list[Path]:
    """A month's files in the lake (events or quarantine), in the order they were written."""
    return sorted(folder.glob("part-*.parquet"))


def raw_file(folder: Path, month: str) -> Path | None:
    """The month's raw file in `folder`; `.csv` wins over `.csv.gz` when both exist."""
    for suffix in (".csv", ".csv.gz"):
        candidate = folder / (raw_file_name(month) + suffix)
        if candidate.exists():
            return candidate
    return None


def unread_beside(raw: Path) -> Path | None:
    """The `.csv.gz` beside `raw`, a month's `.csv` that is read instead of it."""
    gz = raw.with_name(raw.name + ".gz")
    return gz if raw.name.endswith(".csv") and gz.exists() else None
