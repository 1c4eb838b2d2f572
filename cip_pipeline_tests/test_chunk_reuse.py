"""Chunked builds keep a chunk's stored rows only while its fingerprint and its rows hold."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dagster as dg
import duckdb
import pytest

from cip_pipeline.io_managers import Chunk
from cip_pipeline.io_managers.tables import (
    CHUNKS,
    SCHEMA_CHANGES,
    TableName,
    TimeSlice,
    replace_rows,
    transaction,
)

NAME = TableName("t", "parts")
# two month partitions of a table keyed by `day`
OCTOBER = TimeSlice("day", datetime(2019, 10, 1), datetime(2019, 11, 1))
NOVEMBER = TimeSlice("day", datetime(2019, 11, 1), datetime(2019, 12, 1))


def _chunk(k: int, value: int, fingerprint: str | None = "same") -> Chunk:
    """Chunk k: rows k*10 .. k*10+2, each carrying `value` (a rebuild shows in `value`)."""
    select = f"SELECT {k} AS k, k * 10 + i AS id, {value} AS value FROM range(3) AS r(i)"
    return Chunk(
        select,
        label=f"chunk {k}",
        fingerprint=None if fingerprint is None else f"{fingerprint}-{k}",
        keep=f"k = {k}",
    )


def _build(
    con: duckdb.DuckDBPyConnection, chunks: list[Chunk], previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    metadata = replace_rows(con, NAME, chunks, None, previous)
    records = metadata[CHUNKS]
    assert isinstance(records, dg.JsonMetadataValue)
    return list(records.value)  # type: ignore[arg-type]


def _values(con: duckdb.DuckDBPyConnection) -> dict[int, set[int]]:
    rows = con.execute(f"SELECT k, value FROM {NAME.qualified}").fetchall()
    out: dict[int, set[int]] = {}
    for k, value in rows:
        out.setdefault(k, set()).add(value)
    return out


def test_unchanged_chunks_keep_their_rows_and_changed_ones_are_built() -> None:
    con = duckdb.connect()
    first = _build(con, [_chunk(k, 1) for k in range(3)], [])
    assert [r["kept"] for r in first] == [False, False, False]
    assert [r["rows"] for r in first] == [3, 3, 3]

    # Same fingerprints: the stored rows stay (the new SELECTs, which say 2, never run).
    second = _build(con, [_chunk(k, 2) for k in range(3)], first)
    assert [r["kept"] for r in second] == [True, True, True]
    assert _values(con) == {0: {1}, 1: {1}, 2: {1}}

    # Chunk 1's input changed: only it is built again.
    changed = [_chunk(0, 3), _chunk(1, 3, "other"), _chunk(2, 3)]
    third = _build(con, changed, second)
    assert [r["kept"] for r in third] == [True, False, True]
    assert _values(con) == {0: {1}, 1: {3}, 2: {1}}
    assert con.execute(f"SELECT count(*) FROM {NAME.qualified}").fetchone() == (9,)

    # Rows of a kept chunk gone behind the pipeline's back: that chunk is built again.
    con.execute(f"DELETE FROM {NAME.qualified} WHERE id = 21")
    fourth = _build(con, [_chunk(0, 4), _chunk(1, 4, "other"), _chunk(2, 4)], third)
    assert [r["kept"] for r in fourth] == [True, True, False]
    assert _values(con) == {0: {1}, 1: {3}, 2: {4}}
    assert con.execute(f"SELECT count(*) FROM {NAME.qualified}").fetchone() == (9,)

    # A chunk no longer in the build takes its rows with it, kept chunks or not.
    fifth = _build(con, [_chunk(0, 5), _chunk(1, 5, "other")], fourth)
    assert [r["kept"] for r in fifth] == [True, True]
    assert _values(con) == {0: {1}, 1: {3}}
    sixth = _build(con, [_chunk(0, 6, None), _chunk(1, 6, None)], fifth)
    assert [r["kept"] for r in sixth] == [False, False]
    assert _values(con) == {0: {6}, 1: {6}}


def test_a_failed_build_leaves_kept_and_replaced_rows_as_they_were() -> None:
    con = duckdb.connect()
    first = _build(con, [_chunk(k, 1) for k in range(3)], [])
    broken = Chunk("SELECT 2 AS k, 20 AS id, error('boom') AS value", "chunk 2", "x", "k = 2")
    with pytest.raises(duckdb.Error, match="boom"):
        _build(con, [_chunk(0, 2), _chunk(1, 2, "other"), broken], first)
    assert _values(con) == {0: {1}, 1: {1}, 2: {1}}
    assert con.execute(f"SELECT count(*) FROM {NAME.qualified}").fetchone() == (9,)


def test_kept_rows_of_a_partition_leave_other_partitions_alone() -> None:
    con = duckdb.connect()

    def days(month: int, value: int, tag: str) -> list[Chunk]:
        return [
            Chunk(
                f"SELECT DATE '2019-{month}-{d:02d}' AS day, {value} AS value",
                label=f"{month}-{d}",
                fingerprint=f"{tag}-{month}-{d}",
                keep=f"day = DATE '2019-{month}-{d:02d}'",
            )
            for d in (1, 2)
        ]

    def build(part: TimeSlice, chunks: list[Chunk], previous: list[dict[str, Any]]) -> list:
        records = replace_rows(con, NAME, chunks, part, previous)[CHUNKS]
        assert isinstance(records, dg.JsonMetadataValue)
        return list(records.value)  # type: ignore[arg-type]

    octobers = build(OCTOBER, days(10, 1, "a"), [])
    novembers = build(NOVEMBER, days(11, 1, "a"), [])
    # November again, its second day changed; October's rows share no fingerprint with it
    again = build(NOVEMBER, [days(11, 2, "a")[0], days(11, 2, "b")[1]], novembers)
    assert [r["kept"] for r in again] == [True, False]
    rows = con.execute(f"SELECT day::VARCHAR, value FROM {NAME.qualified} ORDER BY day").fetchall()
    assert rows == [("2019-10-01", 1), ("2019-10-02", 1), ("2019-11-01", 1), ("2019-11-02", 2)]
    # October with November's records: nothing matches, all of October is built
    rebuilt = build(OCTOBER, days(10, 3, "c"), again)
    assert [r["kept"] for r in rebuilt] == [False, False] and len(octobers) == 2


def test_a_partition_built_with_new_columns_changes_the_table_and_says_so() -> None:
    """A partition whose query gained a column and lost another (new code, one month
    materialized): the table follows the query, the other month holds NULL in the new column,
    and the metadata lists the change."""
    con = duckdb.connect()
    old = "SELECT DATE '2019-{m}-01' AS day, 1 AS value, 'x' AS gone"
    new = "SELECT DATE '2019-{m}-01' AS day, 2 AS value, [{m}, 1] AS products"
    for part, m in ((OCTOBER, 10), (NOVEMBER, 11)):
        assert SCHEMA_CHANGES not in replace_rows(con, NAME, [old.format(m=m)], part)
    metadata = replace_rows(con, NAME, [new.format(m=11)], NOVEMBER)
    assert metadata[SCHEMA_CHANGES].value == ["added products INTEGER[]", "dropped gone"]
    rows = con.execute(f"SELECT day::VARCHAR, * EXCLUDE (day) FROM {NAME.qualified} ORDER BY day")
    assert rows.fetchall() == [("2019-10-01", 1, None), ("2019-11-01", 2, [11, 1])]
    assert SCHEMA_CHANGES not in replace_rows(con, NAME, [new.format(m=10)], OCTOBER)


def test_a_column_whose_type_changed_is_converted_in_every_row_and_said_so() -> None:
    """November's query now returns `value` as DOUBLE and `code` as VARCHAR: the column
    changes type for October's rows too (converted, not left as text or rounded), and the
    metadata names the change. A stored value that would not survive a conversion (text that
    is no number, a fraction into an integer) fails the write, which leaves the table as it
    was."""
    con = duckdb.connect()
    old = "SELECT DATE '2019-{m}-01' AS day, 1 AS value, 7 AS code"
    new = "SELECT DATE '2019-{m}-01' AS day, 2.75::DOUBLE AS value, 'A7' AS code"
    for part, m in ((OCTOBER, 10), (NOVEMBER, 11)):
        replace_rows(con, NAME, [old.format(m=m)], part)
    metadata = replace_rows(con, NAME, [new.format(m=11)], NOVEMBER)
    assert metadata[SCHEMA_CHANGES].value == [
        "changed value INTEGER -> DOUBLE",
        "changed code INTEGER -> VARCHAR",
    ]
    rows = con.execute(f"SELECT day::VARCHAR, value, code FROM {NAME.qualified} ORDER BY day")
    assert rows.fetchall() == [("2019-10-01", 1.0, "7"), ("2019-11-01", 2.75, "A7")]
    # Back to INTEGER: 'A7' does not convert, nor 2.75 without rounding; nothing changes.
    with pytest.raises(dg.Failure, match="column value is now INTEGER, not DOUBLE, and 1 "):
        replace_rows(con, NAME, [old.format(m=10)], OCTOBER)
    narrower = "SELECT DATE '2019-10-01' AS day, 1.0::DOUBLE AS value, '7' AS code"
    replace_rows(con, NAME, [narrower], OCTOBER)
    with pytest.raises(dg.Failure, match="column code is now INTEGER, not VARCHAR, and 1 "):
        replace_rows(
            con, NAME, ["SELECT DATE '2019-10-01' AS day, 1.0::DOUBLE AS value, 7 AS code"], OCTOBER
        )
    types = con.execute(f"DESCRIBE {NAME.qualified}").fetchall()
    assert [(c, t) for c, t, *_ in types] == [
        ("day", "DATE"),
        ("value", "DOUBLE"),
        ("code", "VARCHAR"),
    ]


def test_a_summary_that_fails_leaves_the_table_as_it_was() -> None:
    con = duckdb.connect()
    replace_rows(con, NAME, ["SELECT 1 AS id"], None)

    def summary(c: duckdb.DuckDBPyConnection) -> dict[str, dg.MetadataValue]:
        c.execute("SELECT error('summary broke')").fetchall()
        return {}

    with pytest.raises(duckdb.Error, match="summary broke"):
        replace_rows(con, NAME, ["SELECT 2 AS id"], None, summary=summary)
    assert con.execute(f"SELECT id FROM {NAME.qualified}").fetchall() == [(1,)]


def test_a_commit_that_fails_raises_its_own_error() -> None:
    """Two connections write the same key: the second COMMIT fails on the conflict, and that
    is the error raised (not the ROLLBACK's "no transaction is active")."""
    con = duckdb.connect()
    con.execute("CREATE TABLE keyed (id INTEGER PRIMARY KEY)")
    other = con.cursor()
    other.execute("BEGIN TRANSACTION")
    other.execute("INSERT INTO keyed VALUES (1)")
    with pytest.raises(duckdb.TransactionException, match="duplicate key"), transaction(con):
        con.execute("INSERT INTO keyed VALUES (1)")
        other.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM keyed").fetchone() == (1,)
