"""The project's SQL, one file per domain. Each file holds named statements:

    -- name: load_events
    SELECT ...

Placeholders in braces (`{events_parquet}`) are identifiers or file paths that DuckDB cannot
bind as parameters; they are filled by the project, never from user text. Values use `$name`
parameters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _body(text: str) -> str:
    """A statement without trailing blank and comment lines (a comment that heads the next
    section would otherwise swallow whatever follows the statement when it is embedded, as in
    `SELECT * FROM (<statement>)`) and without its final semicolon."""
    lines = text.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines).rstrip().rstrip(";")


@cache
def _statements(domain: str) -> dict[str, str]:
    text = files(__package__).joinpath(f"{domain}.sql").read_text()
    parts = _NAME.split(text)
    return {parts[i]: _body(parts[i + 1]) for i in range(1, len(parts), 2)}


def statement(domain: str, name: str, **identifiers: str) -> str:
    """The named statement of a domain's SQL file, with its identifiers filled in."""
    sql = _statements(domain)[name]
    return sql.format(**identifiers) if identifiers else sql


def digest(*texts: str) -> str:
    """A short hash of SQL text: part of a fingerprint of results, so that it changes with the
    code that makes them."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def quote_path(path: object) -> str:
    """A file path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def quote_paths(paths: Iterable[object]) -> str:
    """File paths as a SQL list of string literals."""
    return "[" + ", ".join(quote_path(p) for p in paths) + "]"


def timestamp(value: datetime) -> str:
    """A naive datetime (a partition bound) as a SQL TIMESTAMP literal."""
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S.%f}'"
