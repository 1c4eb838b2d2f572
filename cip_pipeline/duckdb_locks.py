"""DuckDB's file lock, shared by the pipeline and the dashboard.

One process may write the warehouse file, or any number may read it, never both at once: a
connection that cannot take its lock fails at once with an IOException. The pipeline waits a
bounded time for readers (the dashboard) to let go; the dashboard never waits for the writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb

# How DuckDB words a lock held by another process (on Linux and macOS alike).
_LOCK_CONFLICT = "Could not set lock on file"
_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0


def is_lock_conflict(exc: BaseException) -> bool:
    """Whether `exc` says another process holds the database file's lock."""
    return isinstance(exc, duckdb.IOException) and _LOCK_CONFLICT in str(exc)


def connect_waiting(
    path: str | Path,
    *,
    read_only: bool,
    config: Mapping[str, str | int],
    timeout: float,
    on_wait: Callable[[duckdb.IOException], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection to `path`, retried with exponential backoff while another process holds a
    conflicting lock, for at most `timeout` seconds; then the last lock error is raised.
    `on_wait` is called once, with the first conflict, before the first wait."""
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = _FIRST_DELAY
    waited = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=dict(config))
        except duckdb.IOException as exc:
            remaining = deadline - time.monotonic()
            if not is_lock_conflict(exc) or remaining <= 0:
                raise
            if not waited and on_wait is not None:
                on_wait(exc)
            waited = True
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_DELAY)
