"""The pipeline's warehouse connections wait, bounded, for another process's lock on the file
(the dashboard reading) instead of failing at once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from cip_pipeline.duckdb_locks import is_lock_conflict
from cip_pipeline.resources import WarehouseResource

# Holds a read-only connection, says so, and lets go after argv[2] seconds or at end of input.
HOLDER = """
import select, sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
con.sql("SELECT count(*) FROM t").fetchall()
print("held", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
con.close()
print("released", flush=True)
"""


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "cip.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    return path


@contextmanager
def reader_holding(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process with a read-only connection open, for at most `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)


def _resource(path: Path, timeout: float) -> WarehouseResource:
    return WarehouseResource(
        path=str(path), memory_limit="256MB", threads=1, spill_dir="", lock_timeout=timeout
    )


def test_writer_waits_for_a_reader_then_connects(warehouse: Path) -> None:
    with reader_holding(warehouse, seconds=1.5) as holder:
        # The lock really is held: a plain connection fails at once.
        with pytest.raises(duckdb.IOException) as raised:
            duckdb.connect(str(warehouse)).close()
        assert is_lock_conflict(raised.value)
        t0 = time.monotonic()
        with _resource(warehouse, timeout=30).connect() as con:
            waited = time.monotonic() - t0
            con.execute("INSERT INTO t VALUES (2)")
            rows = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
        assert holder.stdout is not None and holder.stdout.readline().strip() == "released"
    assert rows == 2
    assert 0.5 < waited < 15


def test_the_wait_is_bounded(warehouse: Path) -> None:
    with reader_holding(warehouse, seconds=30):
        t0 = time.monotonic()
        with pytest.raises(duckdb.IOException) as raised, _resource(warehouse, 0.4).connect():
            pass
        elapsed = time.monotonic() - t0
    assert is_lock_conflict(raised.value)
    assert 0.3 < elapsed < 5


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-database.duckdb"
    bad.write_text("not a DuckDB file\n" * 100)
    t0 = time.monotonic()
    with pytest.raises(duckdb.Error), _resource(bad, timeout=30).connect(read_only=True):
        pass
    assert time.monotonic() - t0 < 5
