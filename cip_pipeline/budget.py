"""The memory budget and the concurrency it allows.

One budget (`CIP_MEMORY_BUDGET`, default 4 GiB) is split into runs of `CIP_RUN_MEMORY`
(default 2 GiB) each: that fixes how many runs the queue lets through at once (never more
than there are cores), and each run gets the cores divided among them, so DuckDB, Polars and
LightGBM never oversubscribe the machine however many months are queued.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

GIB = 1 << 30
# Below this a run cannot hold DuckDB's buffers and a Python process; also what a number
# given without a unit (bytes) nearly always falls under.
MIN_RUN_BYTES = 256 << 20
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`4GiB`, `4G`, `1500MB` -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4GiB, 1500MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available_cores() -> int:
    """Cores this process may run on (a container or taskset may give fewer than the host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Set by `cip run` and `cip bench`, which execute their runs one after another in one process:
# that process is the only run, so it gets every core (the budget's run queue is unchanged).
SOLE_RUN_ENV = "CIP_SOLE_RUN"


@dataclass(frozen=True)
class Budget:
    total_bytes: int
    run_bytes: int
    cores: int
    sole_run: bool = False

    def __post_init__(self) -> None:
        for name, value in (
            ("CIP_MEMORY_BUDGET", self.total_bytes),
            ("CIP_RUN_MEMORY", self.run_bytes),
        ):
            if value < MIN_RUN_BYTES:
                raise ValueError(
                    f"{name} is {value:,} bytes: at least {MIN_RUN_BYTES >> 20} MiB is needed "
                    "(give a unit: 4GiB, 1500MB)"
                )

    @classmethod
    def from_env(cls) -> Budget:
        return cls(
            parse_size(os.environ.get("CIP_MEMORY_BUDGET", "4GiB")),
            parse_size(os.environ.get("CIP_RUN_MEMORY", "2GiB")),
            available_cores(),
            os.environ.get(SOLE_RUN_ENV) == "1",
        )

    @property
    def concurrent_runs(self) -> int:
        """How many runs the queue lets through at once (the instance's dagster.yaml): as many
        as the budget holds, and no more than the cores, so that each has a core of its own."""
        return max(1, min(self.total_bytes // self.run_bytes, self.cores))

    @property
    def threads_per_run(self) -> int:
        return self.cores if self.sole_run else max(1, self.cores // self.concurrent_runs)

    @property
    def duckdb_memory_limit(self) -> str:
        # DuckDB's share of a run (a run never gets more than the whole budget): the rest is
        # Python, Polars and Arrow buffers. MiB, not MB: DuckDB reads MB as 10^6 bytes.
        return f"{int(min(self.run_bytes, self.total_bytes) * 0.68) >> 20}MiB"


def day_chunks(
    day_events: list[tuple[datetime, int]], max_events: int, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Whole days packed, in order, into [since, until) chunks of at most `max_events` events
    (a day above it is a chunk of its own); the last chunk ends at `end`."""
    starts: list[datetime] = []
    in_chunk = 0
    for day, events in day_events:
        if not starts or in_chunk + events > max_events:
            starts.append(day)
            in_chunk = 0
        in_chunk += events
    return list(zip(starts, [*starts[1:], end], strict=False))  # no days: no chunks
