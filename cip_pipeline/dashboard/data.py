"""Everything the dashboard reads, read-only: warehouse queries (the named statements of
`cip_pipeline/sql/dashboard.sql`, parameters bound), the raw files and the lake, the model
registry, the last benchmark report and the Dagster instance's materializations.

Each query opens its own short-lived read-only connection and closes it: a connection kept
open between reruns would keep DuckDB's file lock and block the pipeline's writer. Results are
cached (`st.cache_data`) per version of the warehouse file (its and its WAL's size and mtime),
so a finished pipeline write shows on the next rerun. The last good result of every query is
also kept: while a pipeline run holds the file, pages show it and say so (`stale_since`)
instead of failing, and only when nothing was ever read do they say the warehouse is busy. A
file that is missing or cannot be read otherwise (damaged) is said so, its last results
dropped: they would show data that is gone as if a run were refreshing it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import streamlit as st

from cip_pipeline import paths, sql
from cip_pipeline.budget import available_cores
from cip_pipeline.duckdb_locks import is_lock_conflict
from cip_pipeline.months import month_of_raw_file

log = logging.getLogger("cip_pipeline.dashboard")
CACHE_TTL_SECONDS = 600  # bounds memory; freshness comes from the file version in the key
FILE_TTL_SECONDS = 60  # lake, benchmark and Dagster figures
CACHE_ENTRIES = 512
# Per connection: the dashboard's queries are small aggregates; leave the machine to the
# pipeline.
CONNECTION_CONFIG: dict[str, str | int | bool] = {
    "memory_limit": "1GB",
    "threads": min(2, available_cores()),
    "enable_external_access": False,  # the dashboard's SQL reads no files
}
STALE_KEY = "cip_stale_since"
Params = tuple[tuple[str, Any], ...]


class Unavailable(Exception):
    """There is nothing to show: the page says why, never with a traceback."""

    headline = "The warehouse cannot be read"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class WarehouseMissing(Unavailable):
    headline = "The warehouse is not built yet"


class WarehouseBusy(Unavailable):
    headline = "The warehouse is being refreshed"


class NotBuilt(Unavailable):
    """A table the pipeline has not built (yet), e.g. the model on too little history."""

    headline = "Not built yet"


@dataclass(frozen=True)
class Snapshot:
    frame: pl.DataFrame
    read_at: datetime


@dataclass
class _LastGood:
    """The last result of each query, the least recently stored dropped beyond `limit` (a
    product picker alone could otherwise keep one per product for the life of the server)."""

    limit: int = 2 * CACHE_ENTRIES
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: OrderedDict[tuple[str, str, Params], Snapshot] = field(default_factory=OrderedDict)

    def get(self, key: tuple[str, str, Params]) -> Snapshot | None:
        with self.lock:
            return self.results.get(key)

    def put(self, key: tuple[str, str, Params], snapshot: Snapshot) -> None:
        with self.lock:
            self.results[key] = snapshot
            self.results.move_to_end(key)
            while len(self.results) > self.limit:
                self.results.popitem(last=False)

    def forget(self, db: str) -> None:
        """Drop every result of the database file `db`."""
        with self.lock:
            for key in [k for k in self.results if k[0] == db]:
                del self.results[key]

    def clear(self) -> None:
        with self.lock:
            self.results.clear()


# Shared by every session of the server process (imported modules live as long as it does).
_LAST_GOOD = _LastGood()


def warehouse_path() -> Path:
    return paths.warehouse_path()


def file_version(path: Path) -> tuple[int, ...]:
    """Size and mtime of the database file and its WAL: a finished write changes them."""
    version: list[int] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            s = p.stat()
            version += [s.st_size, s.st_mtime_ns]
        except FileNotFoundError:
            version += [0, 0]
    return tuple(version)


def _read(db: str, name: str, params: Params) -> pl.DataFrame:
    con = duckdb.connect(db, read_only=True, config=dict(CONNECTION_CONFIG))
    try:
        frame = con.sql(sql.statement("dashboard", name), params=dict(params)).pl()
    finally:
        con.close()
    # Money is DECIMAL in the warehouse; the pages format floats.
    return frame.with_columns(
        pl.col(c).cast(pl.Float64) for c, t in frame.schema.items() if isinstance(t, pl.Decimal)
    )


@st.cache_data(ttl=CACHE_TTL_SECONDS, max_entries=CACHE_ENTRIES, show_spinner=False)
def _cached_read(db: str, version: tuple[int, ...], name: str, params: Params) -> Snapshot:
    return Snapshot(_read(db, name, params), datetime.now(UTC))


def _note_stale(read_at: datetime) -> None:
    since = st.session_state.get(STALE_KEY)
    st.session_state[STALE_KEY] = read_at if since is None else min(since, read_at)


def stale_since() -> datetime | None:
    """When the oldest result shown on this run was read, if any came from the last good
    results because the warehouse could not be read."""
    value = st.session_state.get(STALE_KEY)
    return value if isinstance(value, datetime) else None


def reset_stale() -> None:
    st.session_state.pop(STALE_KEY, None)


def _missing(db: Path) -> WarehouseMissing:
    return WarehouseMissing(f"{db} does not exist yet: run `cip run` to build it.")


def query(statement: str, /, **params: Any) -> pl.DataFrame:
    """The rows of the named statement of `sql/dashboard.sql`, with `params` bound."""
    db = warehouse_path()
    bound: Params = tuple(sorted(params.items()))
    key = (str(db), statement, bound)
    store = _LAST_GOOD
    try:
        if not db.exists():
            raise _missing(db)
        snapshot = _cached_read(str(db), file_version(db), statement, bound)
    except duckdb.CatalogException as exc:
        raise NotBuilt(str(exc).splitlines()[0]) from exc
    except duckdb.IOException as exc:
        if is_lock_conflict(exc):
            # A pipeline run is writing the file: what was read last, until it ends.
            last = store.get(key)
            if last is not None:
                _note_stale(last.read_at)
                return last.frame
            raise WarehouseBusy(
                "A pipeline run is writing the warehouse and nothing has been read from it "
                "yet: this page fills in once the write ends (reload in a moment). If no run "
                "has built it yet, run `cip run`."
            ) from exc
        # Damaged, or deleted since the check: its last results are of a file that is gone.
        store.forget(str(db))
        if not db.exists():
            raise _missing(db) from exc
        raise Unavailable(str(exc).splitlines()[0]) from exc
    except WarehouseMissing:
        store.forget(str(db))
        raise
    store.put(key, snapshot)
    return snapshot.frame


def row(statement: str, /, **params: Any) -> dict[str, Any]:
    """The first row of a query, by column name (empty when it has no rows)."""
    frame = query(statement, **params)
    return frame.row(0, named=True) if frame.height else {}


def expire_cache() -> None:
    """Drop the cached results, as their TTL would, keeping the last good ones."""
    # Outside a server run Streamlit warns that it has no runtime each time; nothing is wrong.
    chatty = logging.getLogger("streamlit.runtime.caching.cache_data_api")
    was, chatty.disabled = chatty.disabled, True
    try:
        st.cache_data.clear()
    finally:
        chatty.disabled = was


def clear_caches() -> None:
    """Forget every cached and last good result (tests and `cip dashboard --measure`)."""
    expire_cache()
    _LAST_GOOD.clear()


# Months ------------------------------------------------------------------------------------


def month_bounds(month: date) -> tuple[date, date]:
    """The first day of `month` and of the month after."""
    start = month.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def data_months() -> list[date]:
    """The months with daily figures in the warehouse."""
    days = query("daily_kpis", start=date.min, end=date.max)["day"]
    return sorted({d.replace(day=1) for d in days.to_list()})


def period(month: date | None) -> tuple[date, date]:
    """The bounds of `month`, or of every month when None."""
    if month is not None:
        return month_bounds(month)
    return date.min, date.max


# Files: raw, lake, benchmark ---------------------------------------------------------------


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def storage_files() -> pl.DataFrame:
    """Per month, the raw file the pipeline reads (its name, bytes on disk, whether gzip) and
    the lake's events and quarantine Parquet bytes and rows."""
    import pyarrow.parquet as pq

    from cip_pipeline.partitions import is_partition_month  # Dagster: loaded when needed

    months: dict[str, dict[str, Any]] = {}
    raw = paths.raw_dir()
    names = {f.name for f in raw.iterdir()} if raw.is_dir() else set()
    # the months the pipeline reads, each from the file it reads (a file outside the
    # partitions is left alone)
    for month in sorted(
        {m for n in names if (m := month_of_raw_file(n)) and is_partition_month(m)}
    ):
        read = paths.raw_file(raw, month)
        if read is not None:  # removed since the listing
            months[month] = {
                "raw_file": read.name,
                "raw_bytes": _size(read),
                "raw_gzip": read.name.endswith(".gz"),
            }
    lake = paths.lake_dir()
    for kind in ("events", "quarantine"):
        for f in sorted((lake / kind).glob("month=*/*.parquet")):
            month = f.parent.name.removeprefix("month=")
            entry = months.setdefault(month, {})
            try:
                rows = pq.ParquetFile(f).metadata.num_rows
            except (OSError, ValueError):  # replaced by a run right now: counted next time
                continue
            entry[f"{kind}_bytes"] = entry.get(f"{kind}_bytes", 0) + _size(f)
            entry[f"{kind}_rows"] = entry.get(f"{kind}_rows", 0) + rows
    columns = [
        "raw_file",
        "raw_gzip",
        "raw_bytes",
        "events_bytes",
        "events_rows",
        "quarantine_bytes",
        "quarantine_rows",
    ]
    records = [{"month": m, **{c: v.get(c) for c in columns}} for m, v in sorted(months.items())]
    schema = {
        "month": pl.String,
        "raw_file": pl.String,
        "raw_gzip": pl.Boolean,
        **{c: pl.Int64 for c in columns[2:]},
    }
    return pl.DataFrame(records, schema=schema)


def warehouse_bytes() -> int:
    db = warehouse_path()
    return _size(db) + _size(db.with_name(db.name + ".wal"))


@st.cache_data(ttl=FILE_TTL_SECONDS, show_spinner=False)
def _parquet_columns(parts: tuple[str, ...]) -> pl.DataFrame:
    """Part names are unique to their contents: the list of them is the cache key."""
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in parts]
    meta, schema = files[0].metadata, files[0].schema_arrow
    records = []
    for i in range(meta.num_columns):
        chunks = [
            f.metadata.row_group(g).column(i)
            for f in files
            for g in range(f.metadata.num_row_groups)
        ]
        records.append(
            {
                "column": meta.schema.column(i).name,
                "parquet_physical": meta.schema.column(i).physical_type,
                "arrow_type": str(schema.field(meta.schema.column(i).name).type),
                "compression": chunks[0].compression if chunks else None,
                "compressed_bytes": sum(c.total_compressed_size for c in chunks),
                "uncompressed_bytes": sum(c.total_uncompressed_size for c in chunks),
            }
        )
    return pl.DataFrame(records)


def parquet_columns(month: str) -> pl.DataFrame | None:
    """Per column of a month's events Parquet (all its parts): types, codec, compressed and
    raw bytes."""
    parts = paths.lake_parts(paths.lake_dir() / "events" / f"month={month}")
    if not parts:
        return None
    return _parquet_columns(tuple(str(p) for p in parts))


@dataclass(frozen=True)
class BenchReport:
    path: Path
    figures: dict[str, Any]


def latest_bench() -> BenchReport | None:
    """The newest `cip bench` report under `$CIP_DATA_DIR/bench/results`, if any."""
    folder = paths.data_dir() / "bench" / "results"
    reports = sorted(folder.glob("bench-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(reports):
        try:
            return BenchReport(path, json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a report being written, or damaged: the one before it
    return None


# The Dagster instance: last materializations ----------------------------------------------


@st.cache_data(ttl=FILE_TTL_SECONDS, show_spinner=False)
def _materializations(home: str) -> pl.DataFrame:
    import dagster as dg

    # Opened and disposed in this thread: an instance kept across Streamlit's script threads
    # leaves SQLite connections to be finalized (and their errors logged) in another thread,
    # which on CPython 3.11 can break a concurrent ast.parse ("AST constructor recursion
    # depth mismatch").
    with dg.DagsterInstance.from_config(home) as instance:
        return _materialization_records(instance)


def _materialization_records(instance: Any) -> pl.DataFrame:
    import dagster as dg

    records: list[dict[str, Any]] = []
    keys = list(instance.get_asset_keys())
    latest = instance.get_latest_materialization_events(keys)
    for key in keys:
        partitions = sorted(instance.get_materialized_partitions(key))
        if not partitions:
            entry = latest.get(key)
            if entry is not None:
                records.append(
                    {
                        "asset": key.to_user_string(),
                        "partition": None,
                        "materialized_at": datetime.fromtimestamp(entry.timestamp, UTC),
                        "run_id": entry.run_id,
                    }
                )
            continue
        for partition in partitions:
            found = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
            ).records
            if found:
                records.append(
                    {
                        "asset": key.to_user_string(),
                        "partition": partition,
                        "materialized_at": datetime.fromtimestamp(found[0].timestamp, UTC),
                        "run_id": found[0].run_id,
                    }
                )
    schema = {
        "asset": pl.String,
        "partition": pl.String,
        "materialized_at": pl.Datetime("us", "UTC"),
        "run_id": pl.String,
    }
    return pl.DataFrame(records, schema=schema)


def materializations() -> pl.DataFrame | None:
    """The last materialization of every asset, and of every month of the partitioned ones,
    from the project's Dagster home; None when there is none (a warehouse built elsewhere)."""
    home = paths.dagster_home()
    if not (home / "dagster.yaml").exists():
        return None
    try:
        return _materializations(str(home))
    except Exception:  # a damaged, newer or busy instance must not break the page
        log.warning("could not read the Dagster home %s", home, exc_info=True)
    # The failure's traceback holds SQLite connections in reference cycles: collected in this
    # thread, where they were opened (see _materializations).
    gc.collect()
    return None


def lake_written() -> dict[str, datetime]:
    """When each month's events Parquet was last written to: freshness without a Dagster
    home."""
    written: dict[str, datetime] = {}
    for f in (paths.lake_dir() / "events").glob("month=*/part-*.parquet"):
        try:
            mtime = f.stat().st_mtime
        except FileNotFoundError:
            continue
        month, when = f.parent.name.removeprefix("month="), datetime.fromtimestamp(mtime, UTC)
        written[month] = max(when, written.get(month, when))  # the newest part
    return written


# What pages other than Home import: loaded once the first page has been drawn.
WARM_UP_MODULES = ("scipy.stats", "lightgbm", "plotly.subplots", "pyarrow.parquet", "dagster")
_warmed_up = threading.Event()


def warm_up() -> None:
    """Once per server process, after the first page is drawn: import the other pages' heavy
    modules, so the first visit to each page does not pay for them. In the script's own
    thread: CPython 3.11 can fail with "AST constructor recursion depth mismatch" when two
    threads compile at once (an import compiles a module that has no bytecode cache yet)."""
    if _warmed_up.is_set():
        return
    _warmed_up.set()
    for module in WARM_UP_MODULES:
        with contextlib.suppress(ImportError):  # the page that needs it will say so
            importlib.import_module(module)


# The model registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: int
    created_at: datetime
    params: dict[str, Any]
    features: list[str]
    windows: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    encodings: dict[str, Any]


def models() -> list[ModelCard]:
    """Every registered model version, newest first within each model."""
    return [
        ModelCard(
            name=r["model_name"],
            version=int(r["version"]),
            created_at=r["created_at"],
            params=json.loads(r["params"]),
            features=json.loads(r["features"]),
            windows=json.loads(r["windows"]),
            metrics=json.loads(r["metrics"]),
            encodings=json.loads(r["encodings"]),
        )
        for r in query("model_versions").iter_rows(named=True)
    ]


@st.cache_data(ttl=CACHE_TTL_SECONDS, show_spinner=False)
def _importance(booster: str) -> pl.DataFrame:
    import lightgbm as lgb

    model = lgb.Booster(model_str=booster)
    return pl.DataFrame(
        {
            "feature": model.feature_name(),
            "gain": model.feature_importance("gain").astype(float),
            "splits": model.feature_importance("split").astype(int),
        }
    ).sort("gain", descending=True)


def feature_importance(card: ModelCard) -> pl.DataFrame:
    """Gain and split importance of a registered version, from its stored booster."""
    booster = query("model_booster", model=card.name, version=card.version)
    if booster.height == 0:
        raise NotBuilt(f"{card.name} v{card.version} is no longer in the registry")
    return _importance(booster["booster"][0])
