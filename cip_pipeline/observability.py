"""Peak memory of each step, measured in the process that runs it.

A hook after every step of the project's jobs (`cip run`, `cip bench`, the schedule's and the
raw-file sensor's runs; not the runs declarative automation launches, which Dagster builds
from the assets alone) reads the kernel's high-water mark of resident memory (VmHWM) and
then resets it (`/proc/self/clear_refs`), so the next step's peak is its own. With the
in-process executor (`cip run`, `cip bench`) the figures are per step; the step also logs it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import dagster as dg

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# step key -> peak RSS in bytes, for the process that ran the steps
step_peaks: dict[str, int] = {}


def peak_rss_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    # Not Linux, or not allowed: peaks then accumulate over the run.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def _record(context: dg.HookContext) -> None:
    peak = peak_rss_bytes()
    if peak is not None and context.step_key:
        step_peaks[context.step_key] = peak
        context.log.info(f"peak RSS of step {context.step_key}: {peak / 2**20:,.0f} MiB")
    reset_peak_rss()


@dg.success_hook(name="record_peak_rss_on_success")
def record_peak_rss_on_success(context: dg.HookContext) -> None:
    _record(context)


@dg.failure_hook(name="record_peak_rss_on_failure")
def record_peak_rss_on_failure(context: dg.HookContext) -> None:
    _record(context)


STEP_HOOKS = {record_peak_rss_on_success, record_peak_rss_on_failure}
