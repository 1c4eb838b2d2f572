"""Months as the project names them: partition keys (`2019-10-01`), CLI arguments
(`2019-10`) and the Kaggle raw file names (`2019-Oct.csv`)."""

from __future__ import annotations

import calendar
import re
from datetime import date

_ABBR = {name: i for i, name in enumerate(calendar.month_abbr) if name}
RAW_FILE = re.compile(r"^(?P<year>\d{4})-(?P<mon>[A-Z][a-z]{2})\.csv(?:\.gz)?$")


def parse_month(text: str) -> str:
    """Normalise `2019-10`, `2019-10-01` or `2019-Oct` to `2019-10`."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4})-(\d{1,2})(?:-01)?", text)
    if m and 1 <= int(m.group(2)) <= 12:
        return f"{int(m.group(1)):04d}-{int(m.group(2)):02d}"
    m = re.fullmatch(r"(\d{4})-([A-Z][a-z]{2})", text)
    if m and m.group(2) in _ABBR:
        return f"{m.group(1)}-{_ABBR[m.group(2)]:02d}"
    raise ValueError(f"not a month: {text!r} (expected YYYY-MM, e.g. 2019-10)")


def raw_file_name(month: str) -> str:
    """`2019-10` -> `2019-Oct` (without the .csv / .csv.gz suffix)."""
    y, m = parse_month(month).split("-")
    return f"{y}-{calendar.month_abbr[int(m)]}"


def month_of_raw_file(name: str) -> str | None:
    """`2019-Oct.csv.gz` -> `2019-10`; None for names that are not raw month files."""
    m = RAW_FILE.match(name)
    if not m or m.group("mon") not in _ABBR:
        return None
    return f"{m.group('year')}-{_ABBR[m.group('mon')]:02d}"


def partition_key(month: str) -> str:
    """`2019-10` -> `2019-10-01`, the key of Dagster's monthly partitions."""
    return parse_month(month) + "-01"


def month_bounds(month: str) -> tuple[date, date]:
    """First day of the month and first day of the next."""
    y, m = (int(x) for x in parse_month(month).split("-"))
    nxt = date(y + (m == 12), m % 12 + 1, 1)
    return date(y, m, 1), nxt


def next_month(month: str) -> str:
    """`2019-12` -> `2020-01`."""
    _, following = month_bounds(month)
    return f"{following.year:04d}-{following.month:02d}"


def previous_month(month: str) -> str:
    """`2020-01` -> `2019-12`."""
    y, m = (int(x) for x in parse_month(month).split("-"))
    return f"{y - (m == 1):04d}-{(m - 2) % 12 + 1:02d}"
