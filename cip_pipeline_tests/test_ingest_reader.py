"""The month reader on hand-made bad inputs and on the real file head."""

from __future__ import annotations

import fcntl
import gzip
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from cip_pipeline.ingest import reader
from cip_pipeline.resources import WarehouseResource

HEADER = reader.HEADER
GOOD = (
    "2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,"
    "1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d"
)
OCT = (datetime(2019, 10, 1), datetime(2019, 11, 1))

# (raw line, expected reason or None for a good row)
CORPUS = [
    (GOOD, None),
    (GOOD, "duplicate"),
    (GOOD, "duplicate"),
    ("2019-10-01 00:00:05 UTC,cart,1004237,2053013555631882655,,,0.00,535871217,", None),
    (
        "2019-10-01 00:00:06 UTC,purchase,1004237,2053013555631882655,electronics.smartphone",
        "wrong_column_count",
    ),
    (GOOD + ",extra", "wrong_column_count"),
    (GOOD + ",extra,more", "wrong_column_count"),
    ("", "wrong_column_count"),
    ("2019-13-01 00:00:04 UTC" + GOOD[23:], "unparsable_timestamp"),
    ("yesterday" + GOOD[23:], "unparsable_timestamp"),
    ("2019-11-01 00:00:00 UTC" + GOOD[23:], "timestamp_outside_month"),
    ("2019-09-30 23:59:59 UTC" + GOOD[23:], "timestamp_outside_month"),
    # a leap second, which Polars would read as 2019-10-16 00:00:00 and 2019-10-01 00:00:00
    ("2019-10-15 23:59:60 UTC" + GOOD[23:], "unparsable_timestamp"),
    ("2019-09-30 23:59:60 UTC" + GOOD[23:], "unparsable_timestamp"),
    (GOOD.replace("apple", '"apple"'), "quoted_field"),
    (GOOD.replace("apple", '"apple, inc"'), "quoted_field"),  # not a wrong count
    (GOOD.replace(",view,", ",wishlist,"), "unknown_event_type"),
    (GOOD.replace(",view,", ",remove_from_cart,"), None),
    (GOOD.replace(",1004237,", ",,"), "missing_user_or_product"),
    (GOOD.replace(",535871217,", ",,"), "missing_user_or_product"),
    (GOOD.replace(",1004237,", ",10042x7,"), "non_numeric_id"),
    (GOOD.replace(",535871217,", ",99999999999,"), "non_numeric_id"),
    (GOOD.replace(",2053013555631882655,", ",abc,"), "non_numeric_id"),
    (GOOD.replace(",535871217,", ",-5,"), "non_numeric_id"),
    (GOOD.replace(",1004237,", ",-1004237,"), "non_numeric_id"),
    (GOOD.replace(",1081.98,", ",12.3.4,"), "invalid_price"),
    (GOOD.replace(",1081.98,", ",35.799,"), "invalid_price"),  # the cast would round it
    (GOOD.replace(",1081.98,", ",1e2,"), "invalid_price"),
    (GOOD.replace(",1081.98,", ",.5,"), "invalid_price"),
    (GOOD.replace(",1081.98,", ",-5.00,"), "negative_price"),
    (GOOD.replace("c6bd7419-2748-4c56-95b4-8cec9ff8b80d", "not-a-session"), "malformed_session"),
    (GOOD.replace(",1081.98,", ",7,"), None),  # a whole price
    (GOOD.replace(",1081.98,", ",7.5,"), None),
    (
        GOOD.replace(
            "c6bd7419-2748-4c56-95b4-8cec9ff8b80d", "zzbd7419-2748-4c56-95b4-8cec9ff8b80d"
        ),
        "malformed_session",
    ),
    (
        "2019-10-31 23:59:59 UTC,view,5,6,a.b,brand,1.50,7,00000000-0000-4000-8000-000000000000",
        None,
    ),
    # Text Polars would read, normalised: only the one way REES46 writes a value is read.
    ("2019-10-01 00:00:04UTC" + GOOD[23:], "unparsable_timestamp"),
    ("2019-10-1 0:0:4 UTC" + GOOD[23:], "unparsable_timestamp"),
    (" 2019-10-01 00:00:04 UTC" + GOOD[23:], "unparsable_timestamp"),
    ("2019-10-01 00:00:04  UTC" + GOOD[23:], "unparsable_timestamp"),
    ("2019-10-1  00:00:04 UTC" + GOOD[23:], "unparsable_timestamp"),  # 23 bytes
    ("2019-10-01 00:00: 4 UTC" + GOOD[23:], "unparsable_timestamp"),  # 23 bytes
    ("2019-10-01\t00:00:04 UTC" + GOOD[23:], "unparsable_timestamp"),
    (GOOD.replace(",1004237,", ",+1004237,"), "non_numeric_id"),
    (GOOD.replace(",2053013555631882655,", ",+2053013555631882655,"), "non_numeric_id"),
    (GOOD.replace(",535871217,", ",-0,"), "non_numeric_id"),
    (GOOD.replace(",1081.98,", ",-0.00,"), "negative_price"),
    (GOOD.replace(",1081.98,", ",+1081.98,"), "invalid_price"),
    (GOOD.replace(GOOD[-36:], "c6bd741927484c5695b48cec9ff8b80d----"), "malformed_session"),
    (GOOD.replace(GOOD[-36:], "c6bd7419-2748-4c56-95b48-cec9ff8b80d"), "malformed_session"),
]


def _write(path: Path, lines: list[str], eol: str = "\n", final_eol: bool = True) -> Path:
    text = eol.join([HEADER, *lines]) + (eol if final_eol else "")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_bytes(text.encode())
    return path


def _ingest(
    raw: Path, tmp: Path, previous: reader.LakeState | None = None
) -> tuple[reader.IngestResult, pl.DataFrame, pl.DataFrame]:
    """Ingest into `tmp`'s lake folders; the events and quarantine of every part, in order."""
    warehouse = WarehouseResource(path=str(tmp / "w" / "scratch.duckdb"))
    result = reader.ingest_month(
        raw, *OCT, tmp / "events", tmp / "quarantine", warehouse.scratch, previous
    )
    return (
        result,
        pl.concat([pl.read_parquet(p) for p in _parts(tmp / "events")]),
        pl.concat([pl.read_parquet(p) for p in _parts(tmp / "quarantine")]),
    )


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _lake_files(tmp: Path) -> dict[str, bytes]:
    """The lake's files (not the month's lock file)."""
    return {
        str(p.relative_to(tmp)): p.read_bytes()
        for p in tmp.glob("[eq]*/*")
        if not p.name.startswith(".")
    }


@pytest.mark.parametrize(
    ("name", "eol"), [("m.csv", "\n"), ("m.csv", "\r\n"), ("m.csv.gz", "\n"), ("m.csv.gz", "\r\n")]
)
def test_every_bad_row_is_quarantined_with_its_reason(tmp_path: Path, name: str, eol: str) -> None:
    raw = _write(tmp_path / name, [line for line, _ in CORPUS], eol=eol)
    result, events, quarantine = _ingest(raw, tmp_path)

    expected_bad = [
        (i + 2, reason, line)
        for i, (line, reason) in enumerate(CORPUS)
        if reason not in (None, "duplicate")
    ]
    invalid = quarantine.filter(pl.col("reason") != "duplicate").sort("line")
    assert list(invalid.select("line", "reason", "raw_line").iter_rows()) == expected_bad
    # Duplicates are valid rows in the Parquet, listed apart by their Parquet row: every
    # copy after the first of a row whose nine fields are all equal.
    dups = quarantine.filter(pl.col("reason") == "duplicate")
    indexed = events.with_row_index("row")
    copies = indexed.filter(pl.struct(events.columns).is_duplicated())
    later = copies.filter(pl.col("row") != pl.col("row").min().over(events.columns))
    assert dups["parquet_row"].sort().to_list() == later["row"].cast(pl.Int64).to_list()
    assert later.height == 2
    assert dups["raw_line"].to_list() == [GOOD, GOOD]

    good = [line for line, reason in CORPUS if reason in (None, "duplicate")]
    assert result.rows_in == len(CORPUS)
    assert result.rows_valid == len(good) == events.height
    assert result.duplicates == 2
    assert result.rows_loaded == len(good) - 2
    reasons = [reason for _, reason, _ in expected_bad]
    assert result.quarantined == {r: reasons.count(r) for r in set(reasons)}
    assert reader.count_raw_rows(raw) == result.raw_rows == result.rows_in


def test_good_rows_are_typed_exactly(tmp_path: Path) -> None:
    raw = _write(tmp_path / "m.csv", [line for line, _ in CORPUS])
    _, events, _ = _ingest(raw, tmp_path)
    assert events.schema == reader.EVENTS_SCHEMA
    session = bytes.fromhex("c6bd741927484c5695b48cec9ff8b80d")
    first = events.filter(pl.col("user_session") == session, pl.col("event_type") == "view").row(
        0, named=True
    )
    assert first["event_time"] == datetime(2019, 10, 1, 0, 0, 4)
    assert first["event_type"] == "view"
    assert first["category_id"] == 2053013555631882655
    assert str(first["price"]) == "1081.98"
    assert first["user_session"].hex() == "c6bd741927484c5695b48cec9ff8b80d"
    # empty code, brand and session are nulls, price 0.00
    empty = events.filter(pl.col("event_type") == "cart").row(0, named=True)
    assert (empty["category_code"], empty["brand"], empty["user_session"]) == (None, None, None)
    assert str(empty["price"]) == "0.00"
    assert events["event_type"].to_list().count("remove_from_cart") == 1


def test_only_canonical_text_is_read_and_stored_as_written(tmp_path: Path) -> None:
    """What Polars would read by normalising it (a sign on an id or a zero price, dashes
    elsewhere than a UUID's, a timestamp not spelled `YYYY-MM-DD HH:MM:SS UTC`) is
    quarantined, not stored as another value; leading zeros in an id say one number, and are
    read as it, and so are upper-case hex digits in a session (a UUID's text allows both)."""
    session = "c6bd7419-2748-4c56-95b4-8cec9ff8b80d"
    lines = [
        GOOD.replace(session, "c6bd741927484c5695b48cec9ff8b80d----"),  # same hex digits
        GOOD.replace(",535871217,", ",-0,").replace("00:00:04", "00:00:05"),
        GOOD.replace(",1004237,", ",+7,").replace("00:00:04", "00:00:06"),
        GOOD.replace(",1081.98,", ",-0.00,").replace("00:00:04", "00:00:07"),
        "2019-10-01 00:00:08UTC" + GOOD[23:],
        GOOD.replace(",1004237,", ",007,").replace("00:00:04", "00:00:09"),
        GOOD.replace(",535871217,", ",00,").replace("00:00:04", "00:00:10"),
        GOOD.replace(session, session.upper()).replace("00:00:04", "00:00:11"),
    ]
    result, events, quarantine = _ingest(_write(tmp_path / "m.csv", lines), tmp_path)
    assert list(quarantine.select("line", "reason").iter_rows()) == [
        (2, "malformed_session"),
        (3, "non_numeric_id"),
        (4, "non_numeric_id"),
        (5, "negative_price"),
        (6, "unparsable_timestamp"),
    ]
    assert result.quarantined == {
        "malformed_session": 1,
        "non_numeric_id": 2,
        "negative_price": 1,
        "unparsable_timestamp": 1,
    }
    stored = events.sort("event_time").select(
        pl.col("event_time").dt.second(), "product_id", "user_id", "user_session"
    )
    uuid = bytes.fromhex(session.replace("-", ""))
    assert list(stored.iter_rows()) == [
        (9, 7, 535871217, uuid),
        (10, 1004237, 0, uuid),
        (11, 1004237, 535871217, uuid),
    ]


def test_row_groups_in_file_order_and_by_product_within(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups take the file's rows in turn; inside one, rows go by product and then
    keep the file's order (time, in a REES46 file)."""
    monkeypatch.setattr(reader, "ROW_GROUP_ROWS", 4)
    products = [7, 3, 7, 1, 3, 9, 2, 2, 5, 1]
    lines = [
        f"2019-10-01 00:00:{i:02d} UTC,view,{p},1,a.b,x,1.00,{100 + i},"
        for i, p in enumerate(products)
    ]
    raw = _write(tmp_path / "m.csv", [*lines[:5], "cut,off", *lines[5:]])
    _, events, quarantine = _ingest(raw, tmp_path)
    assert quarantine["reason"].to_list() == ["wrong_column_count"]
    # By hand: good rows (0-3), (4-7), (8-9), each group sorted by product, stably.
    expected = [(1, 103), (3, 101), (7, 100), (7, 102)]
    expected += [(2, 106), (2, 107), (3, 104), (9, 105), (1, 109), (5, 108)]
    assert list(events.select("product_id", "user_id").iter_rows()) == expected
    (part,) = _parts(tmp_path / "events")
    assert pq.ParquetFile(part).metadata.num_row_groups == 3


def _event(second: int, user: int, product: int = 1, event: str = "view") -> str:
    return f"2019-10-01 {second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d} UTC," + (
        f"{event},{product},1,a.b,x,1.00,{user},"
    )


@pytest.mark.parametrize("in_order", [True, False])
def test_duplicates_are_found_across_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_order: bool
) -> None:
    """Exact copies in one row group, on both sides of a boundary, three groups apart and in
    a group out of time order (both a few seconds out), as the write finds them in a file in
    time order; a file out of order by more than the carried hour is left to the query over
    the whole part. Either way: every later copy by Parquet row, as Polars finds them in what
    was written."""
    monkeypatch.setattr(reader, "ROW_GROUP_ROWS", 4)
    seen: list[bool] = []
    whole_part_query = reader._duplicates

    def spy(*args: object) -> pl.DataFrame:
        seen.append(args[-1] is None)
        return whole_part_query(*args)

    monkeypatch.setattr(reader, "_duplicates", spy)
    lines = [
        _event(0, 1), _event(0, 1),  # a copy in the first group
        _event(1, 2), _event(5, 3),
        _event(5, 3),  # a copy of the row before, in the next group
        _event(5, 4, product=2),
        _event(5, 3, event="cart"),  # same product, time and user: not a copy
        _event(6, 5) if in_order else _event(5 * 3600, 5),
        _event(7, 6), _event(8, 7), _event(9, 8), _event(10, 9),
        _event(5, 3),  # the fourth row again, three groups later
        _event(11, 1), _event(11, 1, product=3), _event(12, 10),
        _event(20, 1), _event(19, 2), _event(20, 1),  # a copy two rows on, seconds out of order
        _event(21, 1),
    ]  # fmt: skip
    raw = _write(tmp_path / "m.csv", lines)
    result, events, quarantine = _ingest(raw, tmp_path)

    assert seen == [not in_order]
    indexed = events.with_row_index("row")
    later = indexed.filter(pl.col("row") != pl.col("row").min().over(events.columns))
    dups = quarantine.filter(pl.col("reason") == "duplicate")
    assert sorted(dups["parquet_row"]) == sorted(later["row"].cast(pl.Int64))
    assert result.duplicates == later.height == 4  # lines 2, 6, 15 and 19, by hand
    assert sorted(dups["raw_line"]) == sorted([lines[1], lines[4], lines[12], lines[18]])


SESSION = "00000000-0000-4000-8000-000000000000"
# A row with a session, cut where its bytes say nothing is missing (after the eighth comma:
# a row with an empty session) and where they do (in the middle of a field).
WITH_SESSION = GOOD.replace("00:00:04", "00:00:07").replace(GOOD[-36:], SESSION)
CUTS = [WITH_SESSION[: WITH_SESSION.rindex(",") + 1], WITH_SESSION[:60]]


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz"])
@pytest.mark.parametrize("cut", CUTS, ids=["after_8th_comma", "mid_field"])
def test_a_last_line_without_newline_is_left_for_the_next_ingest(
    tmp_path: Path, name: str, cut: str
) -> None:
    """A writer may not have finished the last line: it is not read (neither loaded nor
    quarantined) until a newline ends it, and is reported as pending bytes."""
    raw = _write(tmp_path / name, [GOOD, cut], final_eol=False)
    result, events, quarantine = _ingest(raw, tmp_path / "lake")
    assert (result.rows_in, result.raw_rows, events.height, quarantine.height) == (1, 1, 1, 0)
    assert events["user_session"].null_count() == 0
    assert result.pending_bytes == len(cut)
    assert result.state.raw_bytes == len(HEADER) + 1 + len(GOOD) + 1
    assert reader.count_raw_rows(raw) == 1
    # The writer ends the line: it is read, with its session.
    _write(raw, [GOOD, WITH_SESSION, GOOD.replace("00:00:04", "00:00:08")])
    again, events, quarantine = _ingest(raw, tmp_path / "lake", result.state)
    assert again.mode == ("full" if name.endswith(".gz") else "appended")
    assert (again.rows_in, again.pending_bytes, quarantine.height) == (3, 0, 0)
    assert events["user_session"].null_count() == 0
    assert events["event_time"].dt.second().sort().to_list() == [4, 7, 8]


def test_an_append_leaves_a_line_being_written_for_the_next_run(tmp_path: Path) -> None:
    """The nightly append catches the writer mid-line: the lines it finished are appended,
    the rest waits (no row with a null session, no whole read the night after)."""
    raw = _write(tmp_path / "m.csv", [GOOD])
    first, _, _ = _ingest(raw, tmp_path / "lake")
    written = (HEADER + "\n" + GOOD + "\n").encode()
    later = GOOD.replace("00:00:04", "00:00:05")
    for grown, mode, rows in [
        (CUTS[0], "unchanged", 1),  # only part of a line: nothing to read
        (later + "\n" + CUTS[0], "appended", 2),
        (later + "\n" + WITH_SESSION + "\n", "appended", 3),
    ]:
        raw.write_bytes(written + grown.encode())
        result, events, quarantine = _ingest(raw, tmp_path / "lake", first.state)
        first = result
        pending = len(grown) - grown.rindex("\n") - 1 if "\n" in grown else len(grown)
        assert (result.mode, result.rows_in, events.height) == (mode, rows, rows)
        assert result.pending_bytes == pending
        assert result.state.raw_bytes == raw.stat().st_size - result.pending_bytes
        assert quarantine.height == 0 and events["user_session"].null_count() == 0
    assert len(result.parts) == 3
    whole, whole_events, _ = _ingest(raw, tmp_path / "whole")
    assert _multiset(events) == _multiset(whole_events)
    assert result.raw_rows == whole.raw_rows == reader.count_raw_rows(raw) == 3


def test_wrong_header_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "m.csv"
    raw.write_text("time,type\n" + GOOD + "\n")
    with pytest.raises(reader.RawFileError, match="unexpected header"):
        _ingest(raw, tmp_path)
    assert not _parts(tmp_path / "events")


@pytest.mark.parametrize("appended", [False, True])
def test_failure_keeps_the_previous_month_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appended: bool
) -> None:
    raw = _write(tmp_path / "m.csv", [GOOD])
    first, _, _ = _ingest(raw, tmp_path)
    before = _lake_files(tmp_path)
    _write(raw, [GOOD, GOOD.replace("00:00:04", "00:00:09")])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(reader, "_write_lake_files", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _ingest(raw, tmp_path, first.state if appended else None)
    assert _lake_files(tmp_path) == before  # no temporary file left either


def test_a_file_written_to_while_it_is_read_whole_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser and the byte count read the file apart: a row written between the two
    would be in one and not the other, and the next append would start past it."""
    raw = _write(tmp_path / "m.csv", [GOOD, GOOD.replace("00:00:04", "00:00:05")])
    written = threading.Event()
    write_lake_files, scan_raw = reader._write_lake_files, reader.scan_raw

    def parse_then_grow(*args: object) -> None:
        write_lake_files(*args)  # type: ignore[arg-type]
        with raw.open("a") as f:
            f.write(GOOD.replace("00:00:04", "00:00:06") + "\n")
        written.set()

    def count_after_the_write(path: Path) -> reader.RawScan:
        written.wait(timeout=60)
        return scan_raw(path)

    monkeypatch.setattr(reader, "_write_lake_files", parse_then_grow)
    monkeypatch.setattr(reader, "scan_raw", count_after_the_write)
    with pytest.raises(reader.RawFileError, match="changed while it was read"):
        _ingest(raw, tmp_path)
    assert _lake_files(tmp_path) == {}  # no part, no temporary file
    monkeypatch.undo()
    result, events, _ = _ingest(raw, tmp_path)
    assert (result.raw_rows, events.height) == (3, 3)


def test_one_ingest_of_a_month_at_a_time(tmp_path: Path) -> None:
    """Two runs of a month (the sensor's and the schedule's) do not interleave: each commit
    removes the files of parts not in its own state."""
    raw = _write(tmp_path / "m.csv", [GOOD])
    (tmp_path / "events").mkdir()
    done = threading.Event()

    def ingest() -> None:
        _ingest(raw, tmp_path)
        done.set()

    with (tmp_path / "events" / ".ingest.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run of the month holds it
        worker = threading.Thread(target=ingest)
        worker.start()
        assert not done.wait(timeout=1.0)
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(timeout=60)
    assert done.is_set() and len(_parts(tmp_path / "events")) == 1


def test_bytes_that_are_not_text(tmp_path: Path) -> None:
    """A line with bytes that are not UTF-8 is quarantined, the rest of the month read; a
    byte the line reader cannot take (0x1F) is a clear error."""
    later = GOOD.replace("00:00:04", "00:00:09").encode()
    bad = GOOD.replace("apple", "app\udcffle").encode("utf-8", "surrogateescape")  # 0xFF
    raw = tmp_path / "m.csv"
    raw.write_bytes(b"\n".join([HEADER.encode(), GOOD.encode(), bad, later, b""]))
    result, events, quarantine = _ingest(raw, tmp_path)
    assert (result.rows_valid, result.quarantined) == (2, {"invalid_encoding": 1})
    row = quarantine.row(0, named=True)
    assert (row["line"], row["raw_line"]) == (3, GOOD.replace("apple", "app\ufffdle"))
    assert events["event_time"].dt.second().to_list() == [4, 9]
    raw.write_bytes(raw.read_bytes().replace(b"app\xffle", b"app\x1fle"))
    with pytest.raises(reader.RawFileError, match="cannot be read as lines of text"):
        _ingest(raw, tmp_path / "again")
    assert not (tmp_path / "again" / "events").exists() or not _parts(tmp_path / "again" / "events")


def test_an_unchanged_file_clears_files_a_stopped_run_left(tmp_path: Path) -> None:
    """A run stopped between renaming its part into place and removing the parts it
    replaced, or before its commit, leaves files the loads would read: the next ingest, even
    of an unchanged file, removes them."""
    raw = _write(tmp_path / "m.csv", [GOOD])
    first, _, _ = _ingest(raw, tmp_path)
    before = _lake_files(tmp_path)
    for folder in ("events", "quarantine"):
        (part,) = _parts(tmp_path / folder)
        (tmp_path / folder / "part-0000-0badf00d.parquet").write_bytes(part.read_bytes())
        (tmp_path / folder / "part-0001-0badf00d.parquet.tmp").write_bytes(b"cut")
    result, events, _ = _ingest(raw, tmp_path, first.state)
    assert result.mode == "unchanged" and events.height == 1
    assert _lake_files(tmp_path) == before


LATE = [
    GOOD,  # a copy of a row of the first part
    GOOD.replace("00:00:04", "23:10:00"),
    GOOD.replace("00:00:04", "23:10:00"),  # a copy of a row of the appended part
    GOOD[:60],  # cut off
    "2019-10-31 23:59:59 UTC" + GOOD[23:].replace(",view,", ",wishlist,"),
    # the first part's last row again
    "2019-10-31 23:59:59 UTC,view,5,6,a.b,brand,1.50,7,00000000-0000-4000-8000-000000000000",
]


def _multiset(frame: pl.DataFrame) -> list[tuple[object, ...]]:
    return sorted(frame.iter_rows(), key=repr)


def test_appended_bytes_become_a_part_equal_to_reading_the_whole_file(tmp_path: Path) -> None:
    """The file grows by late rows: only they are read, into a second part, and the month
    holds what a whole read of the grown file gives: the same rows, the same invalid rows at
    the same lines, and the same copies counted as duplicates (across parts too)."""
    raw = _write(tmp_path / "m.csv", [line for line, _ in CORPUS])
    first, _, _ = _ingest(raw, tmp_path / "lake")
    with raw.open("a") as f:
        f.write("\n".join(LATE) + "\n")
    result, events, quarantine = _ingest(raw, tmp_path / "lake", first.state)
    assert (result.mode, len(result.parts)) == ("appended", 2)
    assert result.parts[0] == first.parts[0]
    assert result.parts[1].raw_rows == len(LATE)

    whole, whole_events, whole_quarantine = _ingest(raw, tmp_path / "whole")
    assert whole.mode == "full"
    assert _multiset(events) == _multiset(whole_events)
    invalid = ["line", "reason", "raw_line"]
    assert _multiset(quarantine.filter(pl.col("reason") != "duplicate").select(invalid)) == (
        _multiset(whole_quarantine.filter(pl.col("reason") != "duplicate").select(invalid))
    )
    by_hand = {"wrong_column_count": 1, "unknown_event_type": 1}
    assert result.parts[1].quarantined == by_hand
    assert result.parts[1].duplicates == 3  # LATE[0], LATE[2] and LATE[5]
    assert (result.quarantined, result.duplicates) == (whole.quarantined, whole.duplicates)
    assert (result.rows_in, result.rows_loaded) == (whole.rows_in, whole.rows_loaded)
    assert result.raw_rows == whole.raw_rows == reader.count_raw_rows(raw)
    # The appended part's duplicates point at its own rows.
    part = pl.read_parquet(_parts(tmp_path / "lake" / "events")[1]).with_row_index("row")
    dups = pl.read_parquet(_parts(tmp_path / "lake" / "quarantine")[1]).filter(
        pl.col("reason") == "duplicate"
    )
    assert sorted(dups["raw_line"]) == sorted([LATE[0], LATE[2], LATE[5]])
    late_copy = part.filter(pl.col("event_time") == datetime(2019, 10, 1, 23, 10))["row"][1]
    first_copies = part.filter(
        pl.col("event_time").is_in(
            [datetime(2019, 10, 1, 0, 0, 4), datetime(2019, 10, 31, 23, 59, 59)]
        )
    )["row"]
    assert sorted(dups["parquet_row"]) == sorted([late_copy, *first_copies])
    # Nothing new: nothing read, nothing written.
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").glob("*/*.parquet")}
    again, _, _ = _ingest(raw, tmp_path / "lake", result.state)
    assert (again.mode, again.state) == ("unchanged", result.state)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lake").glob("*/*.parquet")} == files


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("rewrite", "bytes changed since the last ingest"),
        ("shrink", "smaller than at the last ingest"),
        ("open_line", "ended inside a line"),
        ("reader", "the reader changed"),
        ("lost_part", "is missing"),
        ("gzip", "gzip file is read whole"),
    ],
)
def test_a_file_that_did_not_only_grow_is_read_whole(tmp_path: Path, change: str, why: str) -> None:
    lines = [line for line, _ in CORPUS]
    raw = _write(tmp_path / ("m.csv.gz" if change == "gzip" else "m.csv"), lines)
    if change == "open_line":  # only the header, without its newline: no whole line read
        raw.write_bytes(HEADER.encode())
    first, _, _ = _ingest(raw, tmp_path)
    previous = first.state
    if change == "rewrite":
        _write(raw, [lines[0].replace("1081.98", "1081.99"), *lines[1:], GOOD])
    elif change == "shrink":
        _write(raw, lines[:-1])
    elif change == "gzip":
        _write(raw, [*lines, GOOD])
    else:
        with raw.open("a") as f:
            f.write("\n" + GOOD + "\n")
    if change == "reader":
        previous = replace(previous, reader_version="another")
    if change == "lost_part":
        (tmp_path / "events" / previous.parts[0].name).unlink()
    result, events, _ = _ingest(raw, tmp_path, previous)
    assert result.mode == "full" and why in result.why
    assert [p.name for p in _parts(tmp_path / "events")] == [result.parts[0].name]
    assert [p.name for p in _parts(tmp_path / "quarantine")] == [result.parts[0].name]
    assert result.parts[0].name != previous.parts[0].name
    whole, whole_events, _ = _ingest(raw, tmp_path / "whole")
    assert _multiset(events) == _multiset(whole_events)
    assert result.raw_rows == whole.raw_rows == reader.count_raw_rows(raw)


def test_real_head(tmp_path: Path, real_head: Path) -> None:
    result, events, quarantine = _ingest(real_head, tmp_path)
    assert result.rows_in == 17_434
    assert result.rows_loaded == 17_429
    assert result.duplicates == 5
    assert (result.quarantined, quarantine.height) == ({}, 5)  # the duplicates
    # The head is cut inside its last line, which no newline ends: left unread, as pending.
    cut = real_head.read_bytes().rsplit(b"\n", 1)[1]
    assert cut.endswith(b",25.71,52040330") and result.pending_bytes == len(cut)
    assert events["user_session"].null_count() == 0
    # The independent oracle: Polars' own CSV reader on the same file, cut-off row dropped.
    oracle = pl.read_csv(real_head, infer_schema_length=0).head(17_434)
    assert oracle.unique().height == result.rows_loaded


def test_parquet_row_checks_fail_on_bad_rows(tmp_path: Path) -> None:
    """The events_parquet row checks on a hand-made file: one null key, one event of the
    next month, one negative price, one unknown type (a file not written by the reader)."""
    from cip_pipeline import sql
    from cip_pipeline.assets.ingest import events_profile, row_checks

    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "event_time": [datetime(2019, 10, 5), datetime(2019, 11, 1), datetime(2019, 10, 9)],
            "event_type": ["view", "wishlist", "cart"],
            "product_id": [1, None, 3],
            "category_id": [1, 2, 3],
            "user_id": [7, 8, 9],
            "price": [1.5, 2.0, -0.5],
        }
    ).write_parquet(path)
    with duckdb.connect() as con:
        profile = events_profile(con, f"read_parquet({sql.quote_path(path)})")
    results = {r.check_name: r for r in row_checks(profile, *OCT)}
    assert {name: r.passed for name, r in results.items()} == {
        "non_null_keys": False,
        "event_time_in_month": False,
        "event_type_domain": False,
        "price_non_negative": False,
    }
    assert results["non_null_keys"].metadata["rows_with_null_key"].value == 1
    assert results["price_non_negative"].metadata["negative_prices"].value == 1
    assert results["event_type_domain"].metadata["outside_domain"].value == ["wishlist"]
    assert results["event_time_in_month"].metadata["max"].value == "2019-11-01 00:00:00"


@pytest.mark.parametrize(
    ("invalid", "passed", "severity"),
    [
        (0, True, "WARN"),
        (10, True, "WARN"),  # exactly 0.1%: still fine
        (11, False, "WARN"),
        (500, False, "WARN"),  # exactly 5%: a warning
        (501, False, "ERROR"),
    ],
)
def test_quarantine_rate_thresholds(invalid: int, passed: bool, severity: str) -> None:
    """Invalid rows of 10,000 raw rows; duplicates (here 2,000) never count."""
    from cip_pipeline.assets.ingest import quarantine_rate

    result = quarantine_rate(invalid, 2_000, 10_000)
    assert (result.passed, result.severity.name) == (passed, severity)
    assert result.metadata["quarantine_share"].value == invalid / 10_000
    assert result.metadata["duplicate_share"].value == 0.2


def test_a_file_without_a_good_row(tmp_path: Path) -> None:
    raw = _write(tmp_path / "m.csv", ["cut,off", GOOD.replace(",view,", ",wishlist,")])
    result, events, quarantine = _ingest(raw, tmp_path)
    assert (result.rows_in, result.rows_valid, events.height) == (2, 0, 0)
    assert events.schema == reader.EVENTS_SCHEMA
    assert quarantine["reason"].to_list() == ["wrong_column_count", "unknown_event_type"]


@pytest.mark.parametrize("line", [0, 1])
@pytest.mark.parametrize("appended", [False, True])
def test_a_0x1f_byte_is_a_clear_error_on_any_line(
    tmp_path: Path, line: int, appended: bool
) -> None:
    """The line reader splits at 0x1F: on the first line read (of the file or of the bytes
    appended) Polars reports it as another error than on a later line; both name the file."""
    later = [GOOD.replace("00:00:04", f"00:00:{s:02d}") for s in (5, 6)]
    later[line] = later[line].replace("apple", "ap\x1fple")
    raw = _write(tmp_path / "m.csv", [GOOD])
    first, _, _ = _ingest(raw, tmp_path)
    before = _lake_files(tmp_path)
    _write(raw, [GOOD, *later] if appended else later)
    with pytest.raises(reader.RawFileError, match=r"^m\.csv: cannot be read as lines of text"):
        _ingest(raw, tmp_path, first.state if appended else None)
    assert _lake_files(tmp_path) == before


def test_a_0x1f_byte_in_bytes_appended_is_named_while_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appended lines are read from a copy: a writer appending meanwhile changes nothing
    that was read, so a bad byte among them is the error named, not a changed file (which
    every retry, the writer still going, would report again)."""
    raw = _write(tmp_path / "m.csv", [GOOD])
    first, _, _ = _ingest(raw, tmp_path)
    before = _lake_files(tmp_path)
    _write(raw, [GOOD, GOOD.replace("apple", "ap\x1fple").replace("00:00:04", "00:00:05")])
    copy_appended = reader._copy_appended

    def copy_then_the_writer_appends(*args: Path) -> reader.RawScan:
        copied = copy_appended(*args)  # type: ignore[arg-type]
        with raw.open("a") as f:
            f.write(GOOD.replace("00:00:04", "00:00:06") + "\n")
        return copied

    monkeypatch.setattr(reader, "_copy_appended", copy_then_the_writer_appends)
    with pytest.raises(
        reader.RawFileError,
        match=r"^m\.csv: cannot be read as lines of text \(a line holds a 0x1F byte",
    ):
        _ingest(raw, tmp_path, first.state)
    assert _lake_files(tmp_path) == before


def test_a_leap_second_is_an_unparsable_timestamp(tmp_path: Path) -> None:
    """Polars reads second 60 as second 0 of the next minute: such a row would be loaded in
    the next month, or taken for a copy of a real row."""
    rest = GOOD[23:]
    lines = [
        "2019-10-15 23:59:60 UTC" + rest,  # would copy the next row
        "2019-10-16 00:00:00 UTC" + rest,
        "2019-10-31 23:59:60 UTC" + rest,  # would be November
        "2019-09-30 23:59:60 UTC" + rest,  # would be October
        "2019-10-20 12:30: 60 UTC" + rest,  # Polars' parser allows a space there
        "2019-10-20 12:30:06 UTC" + rest,
    ]
    result, events, quarantine = _ingest(_write(tmp_path / "m.csv", lines), tmp_path)
    assert list(quarantine.select("line", "reason", "raw_line").iter_rows()) == [
        (i + 2, "unparsable_timestamp", lines[i]) for i in (0, 2, 3, 4)
    ]
    assert events["event_time"].to_list() == [
        datetime(2019, 10, 16),
        datetime(2019, 10, 20, 12, 30, 6),
    ]
    assert (result.duplicates, result.rows_in) == (0, 6)


def test_a_line_with_a_double_quote_is_quarantined(tmp_path: Path) -> None:
    """REES46 files never quote: a quoted field would be stored with its quotes (another
    brand) or, holding a comma, be taken for a row with a wrong field count."""
    lines = [
        GOOD.replace("apple", '"apple"'),
        GOOD.replace("apple", '"apple, inc"').replace("00:00:04", "00:00:05"),
        GOOD.replace(",view,", ',"view",').replace("00:00:04", "00:00:06"),
        GOOD.replace("apple", 'app"le').replace("00:00:04", "00:00:07"),
        GOOD.replace("00:00:04", "00:00:08"),
    ]
    result, events, quarantine = _ingest(_write(tmp_path / "m.csv", lines), tmp_path)
    assert list(quarantine.select("line", "reason", "raw_line").iter_rows()) == [
        (i + 2, "quoted_field", lines[i]) for i in range(4)
    ]
    assert result.quarantined == {"quoted_field": 4}
    assert events["brand"].to_list() == ["apple"]
    # checked before the field count, after the encoding
    assert reader.REASONS[:3] == ("invalid_encoding", "quoted_field", "wrong_column_count")


def _gzip(text: bytes, damage: str) -> bytes:
    data = gzip.compress(text)
    return {
        "cut": data[:-20],
        "zero_padding": data + bytes(512),  # what `gzip -d` and Python skip
        "garbage": data + b"\x00\x00garbage",
    }[damage]


@pytest.mark.parametrize("damage", ["cut", "zero_padding", "garbage"])
def test_a_damaged_gzip_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    text = "\n".join([HEADER, *[GOOD.replace("1004237", str(i)) for i in range(2000)], ""])
    raw = tmp_path / "2019-Oct.csv.gz"
    raw.write_bytes(_gzip(text.encode(), damage))
    with pytest.raises(reader.RawFileError, match=r"^2019-Oct\.csv\.gz: cannot be read"):
        _ingest(raw, tmp_path)
    assert _lake_files(tmp_path) == {}
    if damage != "zero_padding":  # the byte count (for the checks) reads it with Python
        with pytest.raises(reader.RawFileError, match=r"^2019-Oct\.csv\.gz: cannot be read"):
            reader.count_raw_rows(raw)


@pytest.mark.parametrize("damage", ["empty_events", "cut_events", "empty_quarantine"])
def test_a_damaged_lake_part_makes_the_next_ingest_read_the_whole_file(
    tmp_path: Path, damage: str
) -> None:
    """A part a crash left short cannot be appended to: the month is read whole again."""
    raw = _write(tmp_path / "m.csv", [GOOD, "cut,off"])
    first, _, _ = _ingest(raw, tmp_path)
    kind, how = damage.split("_")[1], damage.split("_")[0]
    (part,) = _parts(tmp_path / kind)
    part.write_bytes(b"" if how == "empty" else part.read_bytes()[:-10])
    with raw.open("a") as f:
        f.write(GOOD.replace("00:00:04", "00:00:05") + "\n")
    result, events, quarantine = _ingest(raw, tmp_path, first.state)
    assert result.mode == "full"
    assert result.why.startswith(f"lake part {part.name} is unreadable")
    assert events["event_time"].dt.second().to_list() == [4, 5]
    assert quarantine["raw_line"].to_list() == ["cut,off"]


def test_a_part_is_on_disk_before_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed unsynced, a part may be empty after a power cut while the state names it."""
    calls: list[tuple[str, str]] = []
    fsync, rename = reader._fsync, reader.os.replace

    def synced(path: Path) -> None:
        calls.append(("fsync", path.name))
        fsync(path)

    def renamed(src: Path, dst: Path) -> None:
        calls.append(("replace", Path(src).name))
        rename(src, dst)

    monkeypatch.setattr(reader, "_fsync", synced)
    monkeypatch.setattr(reader.os, "replace", renamed)
    result, _, _ = _ingest(_write(tmp_path / "m.csv", [GOOD]), tmp_path)
    tmp = f"{result.parts[0].name}.tmp"
    renames = [i for i, call in enumerate(calls) if call == ("replace", tmp)]
    assert len(renames) == 2  # the events part and its quarantine
    assert all(calls[i - 1] == ("fsync", tmp) for i in renames)
    assert calls[-2:] == [("fsync", "events"), ("fsync", "quarantine")]  # the renames


def test_duplicates_compare_typed_values_and_rebuild_the_line(tmp_path: Path) -> None:
    """What the quarantine says of a duplicate (sql/ingest.sql, later_copies): a row whose
    typed values equal an earlier row's, its line rebuilt from them and its number unknown."""
    first = GOOD.replace(",1081.98,", ",7.00,")
    lines = [first, first.replace(",7.00,", ",7,")]
    _, events, quarantine = _ingest(_write(tmp_path / "m.csv", lines), tmp_path)
    (dup,) = quarantine.iter_rows(named=True)
    assert (dup["line"], dup["parquet_row"], dup["reason"]) == (None, 1, "duplicate")
    assert dup["raw_line"] == first != lines[1]
    assert events.height == 2


@pytest.mark.parametrize(
    ("name", "tail"),
    [("2019-Oct.csv.gz", ""), ("2019-Oct.csv.gz", CUTS[1]), ("2019-Oct.csv", CUTS[1])],
)
def test_the_asset_reports_the_bytes_it_read(tmp_path: Path, name: str, tail: str) -> None:
    """raw_bytes and size_reduction are of the bytes read: a gzip file's uncompressed ones
    (its own size apart), up to the last newline (the rest pending)."""
    import dagster as dg

    from cip_pipeline.assets.ingest import events_parquet
    from cip_pipeline.resources import LakeResource

    lines = [GOOD.replace("1004237", str(i)) for i in range(2000)]
    text = ("\n".join([HEADER, *lines]) + "\n").encode()
    raw = tmp_path / "raw" / name
    raw.parent.mkdir()
    data = text + tail.encode()
    raw.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    resources = {
        "lake": LakeResource(raw_dir=str(raw.parent), lake_dir=str(tmp_path / "lake")),
        "warehouse": WarehouseResource(path=str(tmp_path / "w" / "cip.duckdb")),
    }
    result = dg.materialize(
        [events_parquet],
        partition_key="2019-10-01",
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    (event,) = result.asset_materializations_for_node("events_parquet")
    meta = {k: v.value for k, v in event.metadata.items()}
    parquet_bytes = sum(p.stat().st_size for p in (tmp_path / "lake" / "events").rglob("*.parquet"))
    assert meta["raw_bytes"] == len(text) == meta["lake_state"]["raw_bytes"]
    assert meta["parquet_bytes"] == parquet_bytes
    assert meta["size_reduction"] == round(1 - parquet_bytes / len(text), 4) > 0
    assert meta.get("raw_gzip_bytes") == (raw.stat().st_size if name.endswith(".gz") else None)
    assert meta["raw_bytes_pending"] == len(tail)
    assert (meta["raw_rows"], meta["rows_loaded"]) == (2000, 2000)


def test_only_the_extra_field_error_is_read_as_a_0x1f_byte(tmp_path: Path) -> None:
    """The line reader's one schema error (a second field: a 0x1F byte) is said in words;
    any other schema error, a dtype mismatch in the code say, keeps its own."""
    raw = tmp_path / "2019-Oct.csv"
    extra = pl.exceptions.SchemaError(
        "CSV file contained column names not specified in schema (n_extra = 1)."
    )
    assert reader._unreadable(raw, extra) == (
        "2019-Oct.csv: cannot be read as lines of text (a line holds a 0x1F byte, which no "
        "REES46 row has)"
    )
    other = pl.exceptions.SchemaError("could not evaluate '<' comparison between series")
    assert reader._unreadable(raw, other) == (
        "2019-Oct.csv: cannot be read as lines of text (could not evaluate '<' comparison "
        "between series)"
    )
