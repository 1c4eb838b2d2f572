"""Raw REES46 month file -> validated, typed Parquet plus a quarantine, in one streaming pass.

Only lines ended by a newline are read. A last line without one may be one a writer is still
appending (cut right after its eighth comma, it would pass for a row with an empty session):
it is left for the next ingest, which reads it once a newline ends it, and is reported as
pending bytes meanwhile. Each line read is split on commas, so that a row with too many or too
few fields is caught exactly (a CSV parser pads a short row with nulls) and the quarantine
keeps the raw line of every invalid row.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from polars.io.plugins import register_io_source

from cip_pipeline import sql

RAW_COLUMNS = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
HEADER = ",".join(RAW_COLUMNS)
EVENT_TYPES = ("view", "cart", "purchase", "remove_from_cart")
EVENT_TYPE = pl.Enum(EVENT_TYPES)
PRICE = pl.Decimal(9, 2)  # two decimals, exact sums; up to 9,999,999.99
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
# The one way REES46 writes a time. Polars' parser also takes other spacing and unpadded
# fields, and second 60 (a leap second), which it rolls over into the next minute.
TIME_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-5][0-9] UTC$"
PRICE_TEXT = r"^-?[0-9]+(\.[0-9]{1,2})?$"
UUID_DASHES = (8, 13, 18, 23)  # byte offsets of the dashes in a UUID's 36 characters

# Why a row is quarantined, checked in this order (the first that applies is recorded).
REASONS = (
    # bytes that are not UTF-8 (the raw line has U+FFFD in their place; in such a file, a line
    # holding a real U+FFFD is taken for one too)
    "invalid_encoding",
    # a double quote: REES46 files never quote, and a quoted field would keep its quotes as
    # part of the value, or split at a comma inside it (a misleading wrong_column_count)
    "quoted_field",
    "wrong_column_count",  # a cut-off row, or a row with too many or too few fields
    # not `YYYY-MM-DD HH:MM:SS UTC` exactly (Polars would read other spellings), or not a
    # time: a leap second (second 60) too, which Polars would roll over
    "unparsable_timestamp",
    "timestamp_outside_month",
    "unknown_event_type",
    "missing_user_or_product",
    # product, category or user id not ASCII digits (no sign, "-0" neither) or out of range;
    # leading zeros are read (the number is unambiguous)
    "non_numeric_id",
    "invalid_price",  # not a number with at most two decimals, without a "+"
    "negative_price",  # a minus sign, on a zero too ("-0.00")
    "malformed_session",  # a non-empty user_session that is not a UUID
)
DUPLICATE = "duplicate"  # counted apart: a row whose nine typed values equal an earlier row's

EVENTS_SCHEMA = pl.Schema(
    {
        "event_time": pl.Datetime("us"),
        "event_type": EVENT_TYPE,
        "product_id": pl.Int32,
        "category_id": pl.Int64,
        "category_code": pl.String,
        "brand": pl.String,
        "price": PRICE,
        "user_id": pl.Int32,
        "user_session": pl.Binary,  # 16 bytes
    }
)
QUARANTINE_SCHEMA = pl.Schema(
    {
        "line": pl.Int64,  # 1-based line in the raw file (header: 1); null for a duplicate
        "parquet_row": pl.Int64,  # for duplicates: the copy's row in the events Parquet
        "reason": pl.String,
        "raw_line": pl.String,  # as read; for a duplicate, rebuilt from its typed values
    }
)


EVENT_COLUMNS = list(EVENTS_SCHEMA)
QUARANTINE_COLUMNS = [
    "line",
    pl.lit(None, pl.Int64).alias("parquet_row"),
    "reason",
    pl.col("raw_line").str.strip_suffix("\r"),
]
# The lake's row order. Row groups follow the file, so they stay in time order and month or
# day filters skip them; within one (about a day of events) rows are ordered by product, so
# its category, brand and price repeat row after row (a quarter smaller than time order), and
# exact copies lie side by side (see _CopyFinder).
ROW_GROUP_ROWS = 1 << 20


class RawFileError(ValueError):
    """The file cannot be read as a REES46 month at all (not a row-level problem)."""


@dataclass
class PartResult:
    """One Parquet part of a month and its quarantine file (both named `name`), read from a
    stretch of the raw file: the whole file, or bytes appended to it since the last ingest."""

    name: str
    raw_rows: int  # rows of the stretch, counted from its bytes (count_raw_rows)
    rows_valid: int  # rows in the events part (duplicates included)
    quarantined: dict[str, int] = field(default_factory=dict)  # invalid rows by reason
    duplicates: int = 0  # extra copies of an exact duplicate of this part's or an earlier row


@dataclass
class LakeState:
    """What the last ingest of a month recorded: its parts, and the size and digest (see
    `_new_digest`) of the raw bytes they were read from. An ingest appends a part when the
    file only grew since."""

    parts: list[PartResult]
    raw_bytes: int
    raw_digest: str
    reader_version: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> LakeState | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{**value, "parts": [PartResult(**p) for p in value["parts"]]})
        except (KeyError, TypeError):
            return None


@dataclass
class IngestResult:
    state: LakeState
    mode: str  # "full", "appended" (a part for new bytes) or "unchanged"
    why: str  # why a full read, when it was one
    seconds: float = 0.0
    pending_bytes: int = 0  # after the file's last newline: not read, left for the next ingest

    @property
    def parts(self) -> list[PartResult]:
        return self.state.parts

    @property
    def rows_read(self) -> int:  # raw rows read this time
        return 0 if self.mode == "unchanged" else self.parts[-1].raw_rows

    def describe(self) -> str:
        return {
            "full": f"the whole file read ({self.why})",
            "appended": "the bytes appended since the last ingest read",
            "unchanged": "no line added to the file since the last ingest: nothing read",
        }[self.mode]

    @property
    def raw_rows(self) -> int:  # whole lines after the header, counted from the file's bytes
        return sum(p.raw_rows for p in self.parts)

    @property
    def rows_valid(self) -> int:  # rows in the events Parquet (duplicates included)
        return sum(p.rows_valid for p in self.parts)

    @property
    def quarantined(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for part in self.parts:
            total.update(part.quarantined)
        return dict(total)

    @property
    def duplicates(self) -> int:
        return sum(p.duplicates for p in self.parts)

    @property
    def rows_in(self) -> int:  # rows after the header, as parsed
        return self.rows_valid + sum(self.quarantined.values())

    @property
    def rows_loaded(self) -> int:
        return self.rows_valid - self.duplicates


def read_header(path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            first = f.readline(4096)
    except (OSError, EOFError, zlib.error) as exc:
        raise RawFileError(f"{path.name}: cannot be read ({exc})") from exc
    return first.decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff")


def _lines(path: Path, first_line: int = 2, lossy: bool = False) -> pl.LazyFrame:
    """The lines after the header, numbered from `first_line` (the header is line 1); `lossy`
    reads bytes that are not UTF-8 as U+FFFD instead of failing."""
    # A separator and quote that never occur, so each physical line is one field.
    return pl.scan_csv(
        path,
        has_header=False,
        skip_rows=1,
        separator="\x1f",
        quote_char=None,
        schema={"raw_line": pl.String},
        empty_string_is_null=False,  # an empty line is quarantined as "", not as null
        encoding="utf8-lossy" if lossy else "utf8",
        row_index_name="line",
        row_index_offset=first_line,
    ).with_columns(pl.col("line").cast(pl.Int64))


def classify(
    lines: pl.LazyFrame, month_start: datetime, month_end: datetime, lossy: bool = False
) -> pl.LazyFrame:
    """Typed fields plus a `reason` column (null for a row that is good). A CRLF line keeps
    its carriage return on `raw_line`: only the quarantined lines are stripped of it. `lossy`
    lines (see `_lines`) are looked at for U+FFFD (invalid_encoding)."""
    # Split into one field more than a row has: a row with the right count leaves the last
    # one null, a cut-off row leaves user_session null. Cheaper than counting commas apart.
    fields = lines.with_columns(
        pl.col("raw_line")
        .str.split_exact(",", len(RAW_COLUMNS))
        .struct.rename_fields([f"{c}_raw" for c in RAW_COLUMNS] + ["extra_field"])
        .alias("f")
    ).unnest("f")
    raw = {c: pl.col(f"{c}_raw") for c in RAW_COLUMNS}
    raw["user_session"] = raw["user_session"].str.strip_suffix("\r")
    session_hex = raw["user_session"].str.replace_all("-", "", literal=True)
    session_bytes = raw["user_session"].cast(pl.Binary)  # a view of the same bytes
    # 36 characters: 32 hex digits, and dashes where a UUID has them, one byte compared at
    # each (cheaper than slicing the text there, or a regex of the 8-4-4-4-12 form, which
    # cost 15% of the parse).
    uuid_text = (
        (raw["user_session"].str.len_bytes() == 36)
        & (session_hex.str.len_bytes() == 32)
        & pl.all_horizontal(
            session_bytes.bin.get(i, null_on_oob=True) == ord("-") for i in UUID_DASHES
        )
    )
    # One regex pass, as the leap-second check it replaces was: comparing its 19 bytes one
    # by one cost about twice as much, slicing the text more.
    canonical_time = raw["event_time"].str.contains(TIME_TEXT)
    typed = fields.with_columns(
        pl.when(canonical_time)
        .then(raw["event_time"].str.strptime(pl.Datetime("us"), TIME_FORMAT, strict=False))
        .alias("event_time"),
        raw["event_type"].cast(EVENT_TYPE, strict=False).alias("event_type"),
        raw["product_id"].cast(pl.Int32, strict=False).alias("product_id"),
        raw["category_id"].cast(pl.Int64, strict=False).alias("category_id"),
        pl.when(raw["category_code"] != "").then(raw["category_code"]).alias("category_code"),
        pl.when(raw["brand"] != "").then(raw["brand"]).alias("brand"),
        raw["price"].cast(PRICE, strict=False).alias("price"),
        raw["user_id"].cast(pl.Int32, strict=False).alias("user_id"),
        pl.when(uuid_text)  # a UUID, kept as its 16 bytes
        .then(session_hex.str.decode("hex", strict=False))
        .alias("user_session"),
    )
    col = pl.col
    encoding = pl.col("raw_line").str.contains("\ufffd", literal=True) if lossy else pl.lit(False)
    reason = (
        pl.when(encoding)
        .then(pl.lit("invalid_encoding"))
        .when(col("raw_line").str.contains('"', literal=True))
        .then(pl.lit("quoted_field"))
        .when(col("user_session_raw").is_null() | col("extra_field").is_not_null())
        .then(pl.lit("wrong_column_count"))
        .when(col("event_time").is_null())
        .then(pl.lit("unparsable_timestamp"))
        .when((col("event_time") < month_start) | (col("event_time") >= month_end))
        .then(pl.lit("timestamp_outside_month"))
        .when(col("event_type").is_null())
        .then(pl.lit("unknown_event_type"))
        .when((raw["product_id"] == "") | (raw["user_id"] == ""))
        .then(pl.lit("missing_user_or_product"))
        .when(
            pl.any_horizontal(
                col(c).is_null() | _signed(raw[c]) for c in ("product_id", "category_id", "user_id")
            )
        )
        .then(pl.lit("non_numeric_id"))
        # The cast would round a third decimal away, and take 1e2 for 100.
        .when(col("price").is_null() | ~raw["price"].str.contains(PRICE_TEXT))
        .then(pl.lit("invalid_price"))
        .when(_signed(raw["price"]))  # "-0.00" too, which the cast reads as 0
        .then(pl.lit("negative_price"))
        .when((raw["user_session"] != "") & col("user_session").is_null())
        .then(pl.lit("malformed_session"))
    )
    return typed.with_columns(reason.alias("reason"))


def _signed(text: pl.Expr) -> pl.Expr:
    """Text the integer and decimal casts read with a sign ("+5", "-0"): "+" and "-" sort
    before the digits. Comparing a string view to one byte reads its inline prefix alone."""
    return text < "0"


class _CopyFinder:
    """The rows of a part that may be exact copies of one another (all nine typed values
    equal), found as its row groups pass, so that no second pass over the part has to hash
    every row.

    Exact copies share their product and event time, and the REES46 files are in time order: a
    row's copies lie in its row group, next to it (a row group is ordered by product, stably),
    or in the last moments of the row groups before it. So each row group's candidates are its
    rows whose product and time equal a neighbour's (whose (product, time) repeats, in a group
    not in time order), plus its rows no later than the newest time already seen, compared
    with the rows kept from the last `CARRY` before that time. That is exact as long as no row
    group starts more than `CARRY` before the newest time seen: a file out of order beyond that
    is left to the query over the whole part (`in_order` turns False)."""

    CARRY = timedelta(hours=1)

    def __init__(self) -> None:
        self.in_order = True
        self._newest: datetime | None = None
        self._carry = pl.DataFrame(schema={"file_row_number": pl.Int64, **EVENTS_SCHEMA})
        self._found: list[pl.Series] = []

    def scan(self, group: pl.DataFrame, first_row: int) -> None:
        """Look at one row group as written, whose first row is Parquet row `first_row`."""
        if not self.in_order or not group.height:
            return
        first, last = group["event_time"].min(), group["event_time"].max()
        if self._newest is not None and first < self._newest - self.CARRY:
            self.in_order, self._found, self._carry = False, [], self._carry.clear()
            return
        rows = group.with_row_index("file_row_number", offset=first_row).with_columns(
            pl.col("file_row_number").cast(pl.Int64)
        )
        # Rows of one product are in file order: in time order, their copies are neighbours.
        # Comparing neighbours costs a twentieth of hashing (product, time) over the group.
        time, previous_time = pl.col("event_time"), pl.col("event_time").shift(1)
        same_product = pl.col("product_id") == pl.col("product_id").shift(1)
        same = same_product & (time == previous_time)
        paired = (same | same.shift(-1)).fill_null(False)
        if group.select((same_product & (time < previous_time)).any()).item():
            paired = pl.struct("product_id", "event_time").is_duplicated()
        seen = pl.lit(False) if self._newest is None else time <= self._newest
        pool = pl.concat([self._carry.filter(time >= first), rows.filter(paired | seen)])
        # Only row numbers are kept: a frame of string views would keep its group's buffers.
        copied = pool.filter(pl.struct(*EVENT_COLUMNS).is_duplicated())
        self._found.append(copied["file_row_number"])
        self._newest = last if self._newest is None else max(self._newest, last)
        kept_from = time >= self._newest - self.CARRY
        self._carry = pl.concat([self._carry.filter(kept_from), rows.filter(kept_from)])

    def candidates(self) -> pl.DataFrame | None:
        """The Parquet rows (`file_row_number`) of every row with an exact copy in the part;
        None when the part was out of order (see the class)."""
        if not self.in_order:
            return None
        found = pl.concat([pl.Series("file_row_number", [], pl.Int64), *self._found])
        return found.unique().to_frame()


class _Unreadable(Exception):
    """Polars could not read a source as lines of text; its error is the cause."""


def _batches(lines: pl.LazyFrame) -> Iterator[pl.DataFrame]:
    """The non-empty batches of `lines` from the streaming engine; an error of the read (a
    0x1F byte, bytes that are not UTF-8, a damaged gzip file) raises _Unreadable."""
    try:
        for batch in lines.collect_batches(engine="streaming"):
            if batch.height:
                yield batch
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _Unreadable(str(exc)) from exc


def _ordered_row_groups(
    rows: pl.LazyFrame,
    quarantine_tmp: Path,
    copies: _CopyFinder | None,
    last_line: Callable[[], int | None],
) -> Callable[..., Iterator[pl.DataFrame]]:
    """A Polars IO source: the good rows in row groups of ROW_GROUP_ROWS, each ordered by
    product (stably, so by time within a product). Bad rows go to `quarantine_tmp` as the
    stream passes them, and each row group goes past `copies` (if given); one pass over the
    file feeds all three. Lines after `last_line()` (asked at the end; None: none) are left
    out: a last line that no newline ends."""

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, *_: object
    ) -> Iterator[pl.DataFrame]:
        writer: pq.ParquetWriter | None = None
        pending: list[pl.DataFrame] = []
        held = written = 0

        def row_group(block: pl.DataFrame) -> pl.DataFrame:
            nonlocal written
            block = _row_group(block, predicate)
            if copies is not None:
                copies.scan(block, written)
            written += block.height
            return block if with_columns is None else block.select(with_columns)

        def sort_out(batch: pl.DataFrame) -> Iterator[pl.DataFrame]:
            nonlocal writer, pending, held
            bad = batch.filter(pl.col("reason").is_not_null()).select(QUARANTINE_COLUMNS)
            if bad.height:
                table = bad.to_arrow()
                writer = writer or pq.ParquetWriter(
                    quarantine_tmp, table.schema, compression="zstd"
                )
                writer.write_table(table)
            pending.append(batch.filter(pl.col("reason").is_null()).select(EVENT_COLUMNS))
            held += pending[-1].height
            while held >= ROW_GROUP_ROWS:
                block = pl.concat(pending)
                pending, held = [block.slice(ROW_GROUP_ROWS)], block.height - ROW_GROUP_ROWS
                yield row_group(block.slice(0, ROW_GROUP_ROWS))

        try:
            # Each batch waits for the next, so that the last one can lose a last line.
            batch: pl.DataFrame | None = None
            for following in _batches(rows.select(*EVENT_COLUMNS, "reason", "line", "raw_line")):
                if batch is not None:
                    yield from sort_out(batch)
                batch = following
            if batch is not None:
                last = last_line()
                yield from sort_out(batch if last is None else batch.filter(pl.col("line") <= last))
            if held:
                yield row_group(pl.concat(pending))
        finally:
            if writer is not None:
                writer.close()
            else:
                pl.DataFrame(schema=QUARANTINE_SCHEMA).write_parquet(quarantine_tmp)

    return source


def _row_group(block: pl.DataFrame, predicate: pl.Expr | None) -> pl.DataFrame:
    """One row group's rows: ordered by product (stably), then the sink's filter."""
    block = block.sort("product_id", maintain_order=True)
    return block if predicate is None else block.filter(predicate)


def _write_lake_files(
    rows: pl.LazyFrame,
    events_tmp: Path,
    quarantine_tmp: Path,
    copies: _CopyFinder | None,
    last_line: Callable[[], int | None],
) -> None:
    # Polars' own writer (pyarrow's made the same rows 26% larger), fed by an IO source:
    # frames pass by reference, no row is touched in Python. The IO-plugin API is marked
    # unstable; pyproject pins the Polars minor version it was tested with.
    register_io_source(
        _ordered_row_groups(rows, quarantine_tmp, copies, last_line), schema=EVENTS_SCHEMA
    ).sink_parquet(
        events_tmp,
        compression="zstd",
        compression_level=1,
        statistics=True,
        row_group_size=ROW_GROUP_ROWS,
        engine="streaming",
    )


def ingest_month(
    raw: Path,
    month_start: datetime,
    month_end: datetime,
    events_dir: Path,
    quarantine_dir: Path,
    scratch: Callable[[], duckdb.DuckDBPyConnection],
    previous: LakeState | None = None,
) -> IngestResult:
    """Bring the month's lake up to date with its raw file: good rows in Parquet parts in
    `events_dir`, and per part a file of the same name in `quarantine_dir` with the invalid
    rows and every extra copy of an exact duplicate row (as `duplicate`).

    When the file only grew since the ingest recorded in `previous` (its first bytes hash the
    same, and they ended on a line), only the new bytes are read, into a new part; otherwise
    the whole file is read into one part that replaces the month's. Either way the bytes after
    the last newline are left for the next ingest (see the module's docstring). Files are
    written under temporary names and renamed only when complete, so a failure leaves the
    previous version of the month intact. `scratch` opens an in-memory DuckDB under the step's
    memory budget.
    """
    header = read_header(raw)
    if header != HEADER:
        raise RawFileError(f"{raw.name}: unexpected header {header[:200]!r}; expected {HEADER!r}")
    t0 = time.perf_counter()
    for folder in (events_dir, quarantine_dir):
        folder.mkdir(parents=True, exist_ok=True)
    lake = _MonthLake(events_dir, quarantine_dir, month_start, month_end, scratch)
    with _month_lock(events_dir):
        stamp = _stamp(raw)
        why = _why_read_whole(raw, previous, events_dir, quarantine_dir)
        if why is None and previous is not None:
            try:
                result = lake.append(raw, previous)
            except _NotAppended as exc:
                why = str(exc)
            except _Unreadable as exc:
                # Read from a copy of the appended lines: a writer still appending changed
                # nothing that was read, and would turn the error into "changed" every retry.
                raise RawFileError(_unreadable(raw, exc.__cause__)) from exc
            else:
                result.seconds = time.perf_counter() - t0
                return result
        try:
            result = lake.read_whole(raw, why or "", stamp)
        except _Unreadable as exc:
            if _stamp(raw) != stamp:  # the error may be a half-written line's
                raise RawFileError(_changed_while_read(raw, stamp)) from exc
            raise RawFileError(_unreadable(raw, exc.__cause__)) from exc
    result.seconds = time.perf_counter() - t0
    return result


def _unreadable(raw: Path, error: BaseException | None) -> str:
    """Why Polars could not read `raw` (its `error`), in words for the person with the file."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, OSError):
        if raw.name.endswith(".gz"):  # Polars' gzip decoder; `gzip -d` skips zero padding
            return (
                f"{raw.name}: cannot be read as gzip ({reason}): the file is cut off or "
                "damaged, or has bytes after its end such as zero padding (`gzip -t` tells)"
            )
        return f"{raw.name}: cannot be read ({reason})"
    # The line reader splits at 0x1F (see `_lines`): only a line holding one has two fields.
    # (Other schema errors, a dtype mismatch say, are the code's and keep their own words.)
    extra_field = isinstance(error, pl.exceptions.SchemaError) and "not specified in" in reason
    if extra_field or "more fields" in reason:
        reason = "a line holds a 0x1F byte, which no REES46 row has"
    return f"{raw.name}: cannot be read as lines of text ({reason})"


def _changed_while_read(raw: Path, before: tuple[int, ...]) -> str:
    return (
        f"{raw.name} changed while it was read (size, mtime, inode, ctime {before} -> "
        f"{_stamp(raw)}): nothing was stored; materialize the month again once the file is "
        "complete"
    )


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """What tells that a file changed or was replaced (a copy may keep size and mtime)."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns


@contextmanager
def _month_lock(events_dir: Path) -> Iterator[None]:
    """One ingest of a month at a time (the sensor and the schedule can start two runs of it):
    a run's commit removes the files of parts not in its state, another's included."""
    with (events_dir / ".ingest.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _NotAppended(Exception):
    """The raw file is not the recorded one with bytes appended: it is read whole."""


def _why_read_whole(
    raw: Path, previous: LakeState | None, events_dir: Path, quarantine_dir: Path
) -> str | None:
    """Why the file cannot be taken as the recorded one plus appended bytes, if it cannot."""
    if previous is None:
        return "no earlier ingest recorded"
    if previous.reader_version != READER_VERSION:
        return "the reader changed since the last ingest"
    if raw.name.endswith(".gz"):
        return "a gzip file is read whole"
    if raw.stat().st_size < previous.raw_bytes:
        return "the file is smaller than at the last ingest"
    for part in previous.parts:
        events, quarantine = events_dir / part.name, quarantine_dir / part.name
        if not (events.exists() and quarantine.exists()):
            return f"lake part {part.name} is missing"
        try:  # footers only
            rows = [pq.ParquetFile(f).metadata.num_rows for f in (events, quarantine)]
        except (pa.ArrowException, OSError) as exc:  # cut short by a crash, say
            return f"lake part {part.name} is unreadable ({exc})"
        if rows != [part.rows_valid, sum(part.quarantined.values()) + part.duplicates]:
            return f"lake part {part.name} does not hold the rows recorded"
    return None


@dataclass
class _MonthLake:
    events_dir: Path
    quarantine_dir: Path
    month_start: datetime
    month_end: datetime
    scratch: Callable[[], duckdb.DuckDBPyConnection]

    def read_whole(self, raw: Path, why: str, stamp: tuple[int, ...]) -> IngestResult:
        """Read the whole file into one part; `stamp` is the file's (`_stamp`) when the ingest
        began."""
        # The independent row count (and the hash that tells a later ingest whether the file
        # only grew) reads the file beside Polars, not after it: it runs ahead at disk speed
        # and Polars then reads from the page cache (October at 110 M, cold cache: 60.6 s read
        # then counted, 51.3 s together).
        counter = ThreadPoolExecutor(max_workers=1)
        scanned = counter.submit(scan_raw, raw)
        # Whether the last line may lack its newline: a plain file tells from its last byte
        # without waiting for the count (which then gives the last whole line's number).
        open_end = raw.name.endswith(".gz") or not _ends_with_newline(raw)

        def last_line() -> int | None:
            return 1 + scanned.result().rows if open_end else None

        try:
            part = self._write_part(raw, 0, 2, [], last_line)
            try:
                scan = scanned.result()
            except BaseException:
                self._discard(part.name)
                raise
        finally:
            counter.shutdown(wait=False, cancel_futures=True)
        if _stamp(raw) != stamp:
            # The two readers may have seen different files: the state would record bytes the
            # part does not hold, and a later append would skip or repeat rows. (A parser that
            # loses rows of a still file is the row-accounting check's to catch.)
            self._discard(part.name)
            raise RawFileError(_changed_while_read(raw, stamp))
        state = LakeState(
            [replace(part, raw_rows=scan.rows)], scan.size, scan.digest, READER_VERSION
        )
        self._commit(state)
        return IngestResult(state, "full", why, pending_bytes=scan.pending)

    def append(self, raw: Path, previous: LakeState) -> IngestResult:
        tail = self.events_dir / "appended.csv.tmp"
        try:
            copied = _copy_appended(raw, previous, tail)
            if copied.size == previous.raw_bytes:
                self._commit(previous)  # clears what a run stopped mid-commit left behind
                return IngestResult(previous, "unchanged", "", pending_bytes=copied.pending)
            first_line = 2 + sum(p.raw_rows for p in previous.parts)
            earlier = [self.events_dir / p.name for p in previous.parts]
            # `tail` holds whole lines only: none is left out
            part = self._write_part(tail, len(previous.parts), first_line, earlier, lambda: None)
            part = replace(part, raw_rows=copied.rows)
        finally:
            tail.unlink(missing_ok=True)
        state = LakeState([*previous.parts, part], copied.size, copied.digest, READER_VERSION)
        self._commit(state)
        return IngestResult(state, "appended", "", pending_bytes=copied.pending)

    def _write_part(
        self,
        source: Path,
        index: int,
        first_line: int,
        earlier: list[Path],
        last_line: Callable[[], int | None],
    ) -> PartResult:
        """Read `source` (a raw file, or the appended lines under a header) up to `last_line`
        (see `_ordered_row_groups`) into a new part under temporary names; exact duplicates
        are looked for in it and in `earlier` parts."""
        name = f"part-{index:04d}-{uuid.uuid4().hex[:8]}.parquet"
        events_tmp, quarantine_tmp = self._tmp(name)
        try:
            # An appended part's copies are looked for with the earlier parts' rows, by a query
            # over them all (`_duplicates`): what the write would find goes unused.
            # A file with bytes that are not UTF-8 is read again, each such line quarantined: a
            # clean file (every REES46 one) is not searched for them.
            for lossy in (False, True):
                copies = None if earlier else _CopyFinder()
                lines = _lines(source, first_line, lossy)
                rows = classify(lines, self.month_start, self.month_end, lossy)
                try:
                    _write_lake_files(rows, events_tmp, quarantine_tmp, copies, last_line)
                    break
                except _Unreadable as exc:
                    if lossy or "utf-8" not in str(exc):
                        raise
            rows_valid = pq.ParquetFile(events_tmp).metadata.num_rows
            in_part = None if copies is None else copies.candidates()
            with self.scratch() as con:
                duplicates = _duplicates(con, events_tmp, earlier, rows_valid, in_part)
            quarantine = pl.concat(
                [
                    pl.read_parquet(quarantine_tmp),
                    duplicates.select(
                        pl.lit(None, pl.Int64).alias("line"),
                        pl.col("parquet_row").cast(pl.Int64),
                        pl.lit(DUPLICATE).alias("reason"),
                        "raw_line",
                    ),
                ]
            ).cast(dict(QUARANTINE_SCHEMA))
            quarantine.write_parquet(quarantine_tmp, compression="zstd")
        except BaseException:
            events_tmp.unlink(missing_ok=True)
            quarantine_tmp.unlink(missing_ok=True)
            raise
        counts = dict(quarantine["reason"].value_counts().iter_rows())
        return PartResult(name, 0, rows_valid, counts, counts.pop(DUPLICATE, 0))

    def _tmp(self, name: str) -> tuple[Path, Path]:
        return self.events_dir / f"{name}.tmp", self.quarantine_dir / f"{name}.tmp"

    def _discard(self, name: str) -> None:
        for tmp in self._tmp(name):
            tmp.unlink(missing_ok=True)

    def _commit(self, state: LakeState) -> None:
        """Rename the new part into place, then remove files of parts no longer in the month
        (all of them after a whole read; none after an append), and the temporary files of
        runs stopped before their commit: the month's folders then hold its parts alone."""
        names = {p.name for p in state.parts}
        for name in names:
            for tmp, final in zip(
                self._tmp(name), (self.events_dir / name, self.quarantine_dir / name), strict=True
            ):
                if tmp.exists():
                    # On disk before it is named: a crash must not leave an empty part behind.
                    _fsync(tmp)
                    os.replace(tmp, final)
        for folder in (self.events_dir, self.quarantine_dir):
            for stale in [*folder.glob("*.parquet"), *folder.glob("*.parquet.tmp")]:
                if stale.name not in names:
                    stale.unlink()
            _fsync(folder)  # the renames


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _duplicates(
    con: duckdb.DuckDBPyConnection,
    part: Path,
    earlier: list[Path],
    rows: int,
    in_part: pl.DataFrame | None,
) -> pl.DataFrame:
    """Rows of `part` that copy an earlier row of the month exactly: earlier in the part, or
    in an `earlier` part, read only over the part's time range. `in_part` are the part's rows
    that have a copy in it, by row number, when the write found them (`_CopyFinder`)."""
    events = sql.quote_path(part)
    if earlier and rows:
        first, last = con.execute(
            sql.statement("ingest", "parquet_time_range", events_parquet=events)
        ).fetchall()[0]
        candidates = sql.statement(
            "ingest",
            "appended_duplicate_candidates",
            events_parquet=events,
            earlier_parquet=sql.quote_paths(earlier),
            first_time=sql.timestamp(first),
            last_time=sql.timestamp(last),
        )
    else:
        if in_part is None:
            copy_rows = f"({sql.statement('ingest', 'hashed_copy_rows', events_parquet=events)})"
        else:  # found by the write: no row of the part is hashed
            con.register("copies_in_part", in_part)
            copy_rows = "copies_in_part"
        candidates = sql.statement(
            "ingest", "duplicate_candidates", events_parquet=events, copy_rows=copy_rows
        )
    return con.sql(sql.statement("ingest", "later_copies", candidates=candidates)).pl()


RAW_BLOCK = 1 << 24


def _new_digest() -> xxhash.xxh3_128:
    """The hash that tells whether a raw file's bytes changed: XXH3-128, a non-cryptographic
    hash at memory speed (a file is not an adversary). SHA-1 and counting the newlines with
    `bytes.count` ran at 0.9 GB/s together, taking a core from the parser beside them; this
    hash and NumPy's count run at 4.3 GB/s (warm cache)."""
    return xxhash.xxh3_128()


def _newlines(block: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(block, np.uint8) == ord("\n")))


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True  # nothing to leave out
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class RawScan(NamedTuple):
    """Raw bytes as far as their last newline (a line after it may still be being written)."""

    rows: int  # lines counted: after the header (a whole file), or appended
    size: int  # bytes up to and with the last newline (of the whole file)
    digest: str  # of those bytes (see `_new_digest`)
    pending: int  # bytes after the last newline: left for a later ingest


class _WholeLines:
    """Bytes taken as far as their last newline, counted and hashed; what follows it is held
    back until a newline ends it."""

    def __init__(self, digest: xxhash.xxh3_128, size: int = 0) -> None:
        self.digest, self.size, self.newlines, self.held = digest, size, 0, bytearray()

    def take(self, block: bytes) -> list[bytes | memoryview]:
        """What of the bytes held back and `block` ends on a newline."""
        end = block.rfind(b"\n") + 1
        if not end:
            self.held += block
            return []
        taken = [bytes(self.held), memoryview(block)[:end]]
        self.held = bytearray(block[end:])
        self.newlines += _newlines(block)
        for piece in taken:
            self.digest.update(piece)
            self.size += len(piece)
        return taken

    def scan(self, rows: int) -> RawScan:
        return RawScan(rows, self.size, self.digest.hexdigest(), len(self.held))


def _copy_appended(raw: Path, previous: LakeState, tail: Path) -> RawScan:
    """Check that `raw` starts with the bytes `previous` recorded, ending on a line, and copy
    the whole lines that follow them under a header to `tail`; the rows appended are counted
    from the bytes as they are copied."""
    digest = _new_digest()
    last = b""  # none recorded: the header had no newline
    with raw.open("rb") as f:
        left = previous.raw_bytes
        while left:
            block = f.read(min(RAW_BLOCK, left))
            if not block:
                raise _NotAppended("the file is smaller than at the last ingest")
            digest.update(block)
            left -= len(block)
            last = block[-1:]
        if digest.hexdigest() != previous.raw_digest:
            raise _NotAppended(
                f"the first {previous.raw_bytes:,} bytes changed since the last ingest"
            )
        if last != b"\n":
            raise _NotAppended("the last ingest ended inside a line")
        lines = _WholeLines(digest, previous.raw_bytes)
        with tail.open("wb") as out:
            out.write(HEADER.encode() + b"\n")
            while block := f.read(RAW_BLOCK):
                for piece in lines.take(block):
                    out.write(piece)
    return lines.scan(lines.newlines)


def scan_raw(path: Path) -> RawScan:
    """Rows after the header, counted from the bytes alone (whole lines: a last line without
    a newline is not read), and the size and digest of the bytes read: an independent figure
    for the row accounting check, and what tells the next ingest whether the file only grew."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lines = _WholeLines(_new_digest())
    try:
        with opener(path, "rb") as f:
            while block := f.read(RAW_BLOCK):
                lines.take(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise RawFileError(f"{path.name}: cannot be read ({exc})") from exc
    return lines.scan(max(lines.newlines - 1, 0))


def count_raw_rows(path: Path) -> int:
    """Rows after the header, counted from the bytes alone (see scan_raw)."""
    return scan_raw(path).rows


# Lake files written by another version of the reader, or of its duplicate detection, are
# not appended to: the month is read whole again.
READER_VERSION = sql.digest(
    Path(__file__).read_text(),
    *(
        sql.statement("ingest", name)
        for name in (
            "hashed_copy_rows",
            "duplicate_candidates",
            "appended_duplicate_candidates",
            "later_copies",
        )
    ),
)
