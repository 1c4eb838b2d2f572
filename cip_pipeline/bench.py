"""`cip bench`: the whole pipeline through Dagster into a fresh warehouse, timed per asset.

Sample data is generated once per (events, seed) and cached, and generated again when the
generator changed. Each repetition starts from an empty lake, warehouse and Dagster home, runs
the month jobs and the all-months job in this process (so each step's peak RSS is this
process's high-water mark for that step), and optionally times the nightly case: the newest
month again, after its late rows (held back from the full run) were appended to its file, and
what depends on it. Checks that fail are reported; one of ERROR severity fails the benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import dagster as dg

from cip_pipeline import definitions, paths
from cip_pipeline.automation import ALL_MONTHS_JOB
from cip_pipeline.months import month_of_raw_file
from cip_pipeline.runner import RunSummary, checked_assets, ensure_instance, execute, run_months


@dataclass
class AssetFigures:
    """One asset's figures, a value per run: both months summed, its checks' steps apart."""

    asset: str
    rows: int | None
    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    check_seconds: list[float] = field(default_factory=list)
    refresh_seconds: list[float] = field(default_factory=list)
    refresh_check_seconds: list[float] = field(default_factory=list)
    refresh_peak_rss: list[int] = field(default_factory=list)

    def median_seconds(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    def rows_per_second(self) -> float | None:
        """Rows over the median wall time; None without rows or time."""
        med = self.median_seconds()
        return (self.rows or 0) / med if med > 0 and self.rows else None


@dataclass
class BenchReport:
    events: int
    seed: int
    repeat: int
    started: str
    raw_bytes: int  # of the raw files read when the sizes below were measured
    totals: list[float] = field(default_factory=list)
    refresh_totals: list[float] = field(default_factory=list)
    # the part of each total spent in check steps (the rest: assets, and Dagster between steps)
    check_totals: list[float] = field(default_factory=list)
    refresh_check_totals: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    refresh_peak_rss: list[int] = field(default_factory=list)
    parquet_bytes: int = 0
    warehouse_bytes: int = 0
    sizes_after: str = "the full run"  # the state the three sizes are of (of the last run)
    assets: dict[str, AssetFigures] = field(default_factory=dict)
    # What did not complete, and why, and the checks of ERROR severity that failed: any of
    # them fails the benchmark.
    failures: list[str] = field(default_factory=list)
    check_errors: list[str] = field(default_factory=list)  # "<where>: <asset>:<check>"
    check_warnings: list[str] = field(default_factory=list)  # failed checks of WARN severity


def cached_raw(events: int, seed: int, out: TextIO) -> Path:
    """The sample's folder; generated unless its marker names the current generator (files of
    another version would be timed as if they were these)."""
    from cip_pipeline.generator import generator_version

    folder = paths.data_dir() / "bench" / "raw" / f"{events}-seed{seed}"
    done = folder / ".complete"
    version = generator_version()
    if not done.exists() or done.read_text().strip() != version:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {events:,} events (seed {seed}) into {folder}", file=out)
        # In a process of its own: the memory the generator leaves with the allocator would
        # count in the first step's peak RSS (the October load's read 2,129 MiB, not 1,368).
        command = ["generate", "--events", str(events), "--seed", str(seed), "--out", str(folder)]
        subprocess.run([sys.executable, "-m", "cip_pipeline.cli", *command], check=True)
        done.write_text(version + "\n")
    return folder


# The refresh's late rows: the last thirtieth of the newest month's file, about its last day.
LATE_SHARE = 30


def _fresh_run_dir(raw: Path, late_month: str | None = None) -> Path:
    """An empty run folder whose raw files link to the cached ones; the file of `late_month`
    is a copy without its late rows (from `_late_rows_offset` on)."""
    run = paths.data_dir() / "bench" / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "raw").mkdir(parents=True)
    for f in raw.iterdir():
        if month := month_of_raw_file(f.name):
            if month == late_month:
                _copy_bytes(f, run / "raw" / f.name, _late_rows_offset(f))
            else:
                (run / "raw" / f.name).symlink_to(f.resolve())
    return run


def _late_rows_offset(raw_file: Path) -> int:
    """Where the file's late rows start: its last thirtieth, from the next line on."""
    size = raw_file.stat().st_size
    with raw_file.open("rb") as f:
        f.seek(size - size // LATE_SHARE)
        f.readline()
        return f.tell()


def _copy_bytes(source: Path, target: Path, end: int, start: int = 0) -> None:
    """Append bytes [start, end) of `source` to `target`."""
    with source.open("rb") as src, target.open("ab") as dst:
        src.seek(start)
        left = end - start
        while left > 0:
            block = src.read(min(1 << 24, left))
            if not block:
                break
            dst.write(block)
            left -= len(block)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _measure_sizes(report: BenchReport, run: Path, state: str) -> None:
    """The raw files as read so far, and the lake and warehouse built from them."""
    report.raw_bytes = _dir_bytes(run / "raw")
    report.parquet_bytes = _dir_bytes(run / "lake" / "events")
    report.warehouse_bytes = _dir_bytes(run / "warehouse")
    report.sizes_after = state


def _record_checks(report: BenchReport, summaries: list[RunSummary], where: str) -> list[str]:
    """Adds the failed checks of `summaries` to the report: those of ERROR severity to its
    failures too. Returns the lines to print."""
    lines = []
    for summary in summaries:
        errors = [f"{where}, {summary.label}: {name}" for name in summary.check_errors]
        warnings = [f"{where}, {summary.label}: {name}" for name in summary.check_warnings]
        report.check_errors += errors
        report.check_warnings += warnings
        report.failures += [f"check of ERROR severity failed, {e}" for e in errors]
        lines += [f"  check failed (ERROR): {e}" for e in errors]
        lines += [f"  check failed (warning): {w}" for w in warnings]
    return lines


def run_bench(
    events: int, seed: int = 42, repeat: int = 1, refresh: bool = False, out: TextIO = sys.stdout
) -> BenchReport:
    raw = cached_raw(events, seed, out)
    months = sorted(m for f in raw.iterdir() if (m := month_of_raw_file(f.name)))
    report = BenchReport(
        events, seed, repeat, datetime.now(UTC).isoformat(timespec="seconds"), _dir_bytes(raw)
    )
    home_env = {k: os.environ.get(k) for k in ("CIP_DATA_DIR", "DAGSTER_HOME")}
    bench_root = paths.data_dir()
    try:
        for i in range(repeat):
            os.environ["CIP_DATA_DIR"] = str(bench_root)
            # For the refresh, the newest month's late rows arrive after the full run.
            late_month = months[-1] if refresh else None
            run = _fresh_run_dir(raw, late_month)
            os.environ["CIP_DATA_DIR"] = str(run)
            instance = ensure_instance()
            defs = definitions.build_definitions()
            steps = _StepAssets.of(defs)
            t0 = time.perf_counter()
            summaries = run_months(defs, instance, months)
            # as `cip run`: the tables over all months wait for every month to succeed
            if definitions.UNPARTITIONED_ASSETS and all(s.success for s in summaries):
                summaries.append(execute(defs, ALL_MONTHS_JOB, instance, "all months"))
            total = time.perf_counter() - t0
            # The steps that ran are measured either way.
            per_run = _per_asset(summaries, steps)
            for name, fig in per_run.items():
                agg = report.assets.setdefault(name, AssetFigures(name, fig.rows))
                agg.seconds.append(fig.seconds)
                agg.check_seconds.append(fig.check_seconds)
                agg.peak_rss.append(fig.peak_rss)
            report.peak_rss.append(_peak(per_run))
            failed = [s for s in summaries if not s.success]
            # Like for like: the raw bytes this run read (with --refresh, the newest month
            # without its late rows) against what it built from them.
            _measure_sizes(report, run, "the full run" + (" (failed)" if failed else ""))
            for line in _record_checks(report, summaries, f"run {i + 1}"):
                print(line, file=out)
            if failed:  # no time of the pipeline, nor a base for a refresh
                report.failures += [
                    f"run {i + 1}, {s.label}: {'; '.join(s.failures)}" for s in failed
                ]
                print(f"run {i + 1}/{repeat} failed: {report.failures[-1]}", file=out)
                continue
            report.totals.append(total)
            report.check_totals.append(sum(f.check_seconds for f in per_run.values()))
            print(f"run {i + 1}/{repeat}: {total:.1f} s", file=out)
            if refresh:
                newest = months[-1]
                late = next(f for f in raw.iterdir() if month_of_raw_file(f.name) == newest)
                _copy_bytes(
                    late, run / "raw" / late.name, late.stat().st_size, _late_rows_offset(late)
                )
                t1 = time.perf_counter()
                # The newest month again, with its late rows: loaded, then derived with the month
                # before it.
                refreshed = run_months(defs, instance, [newest])
                if definitions.UNPARTITIONED_ASSETS:
                    refreshed.append(execute(defs, ALL_MONTHS_JOB, instance, "all months"))
                where = f"one-month refresh of run {i + 1}"
                for line in _record_checks(report, refreshed, where):
                    print(line, file=out)
                failed = [s for s in refreshed if not s.success]
                if failed:  # the full run's figures still stand: report them with the failure
                    report.failures += [
                        f"{where}, {s.label}: {'; '.join(s.failures)}" for s in failed
                    ]
                    print(f"  one-month refresh failed: {report.failures[-1]}", file=out)
                    continue
                report.refresh_totals.append(time.perf_counter() - t1)
                per_refresh = _per_asset(refreshed, steps)
                for name, fig in per_refresh.items():
                    agg = report.assets.setdefault(name, AssetFigures(name, None))
                    agg.refresh_seconds.append(fig.seconds)
                    agg.refresh_check_seconds.append(fig.check_seconds)
                    agg.refresh_peak_rss.append(fig.peak_rss)
                report.refresh_check_totals.append(
                    sum(f.check_seconds for f in per_refresh.values())
                )
                report.refresh_peak_rss.append(_peak(per_refresh))
                # Every raw byte has now been read.
                _measure_sizes(report, run, "the one-month refresh")
                print(f"  one-month refresh: {report.refresh_totals[-1]:.1f} s", file=out)
    finally:
        for k, v in home_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return report


@dataclass
class _RunFigures:
    rows: int | None = None  # None: no materialization (a step that ran and skipped)
    seconds: float = 0.0
    check_seconds: float = 0.0
    peak_rss: int = 0
    check_peak_rss: int = 0


@dataclass
class _StepAssets:
    """The asset (or assets, joined) of each step: of an asset's own step, or of the step of a
    definition of checks on it."""

    assets: dict[str, str]
    checks: dict[str, str]

    @classmethod
    def of(cls, defs: dg.Definitions) -> _StepAssets:
        assets = {
            a.node_def.name: ", ".join(sorted(k.to_user_string() for k in a.keys))
            for a in defs.assets or []
            if isinstance(a, dg.AssetsDefinition)
        }
        return cls(assets, checked_assets(defs))


def _per_asset(summaries: list[RunSummary], steps: _StepAssets) -> dict[str, _RunFigures]:
    """Per asset over a run's summaries (the months' and the all-months'): rows of its
    materializations, and seconds and peak RSS of every step of it that ran (materialized or
    not), its check steps apart."""
    figures: dict[str, _RunFigures] = {}
    for summary in summaries:
        for step in summary.steps:
            fig = figures.setdefault(step.asset, _RunFigures())
            fig.rows = (fig.rows or 0) + (step.rows or 0)
        for step_key, seconds in summary.step_seconds.items():
            peak = summary.step_peaks.get(step_key, 0)
            if step_key in steps.checks:
                fig = figures.setdefault(steps.checks[step_key], _RunFigures())
                fig.check_seconds += seconds
                fig.check_peak_rss = max(fig.check_peak_rss, peak)
            else:
                asset = steps.assets.get(step_key, step_key)
                fig = figures.setdefault(asset, _RunFigures())
                fig.seconds += seconds
                fig.peak_rss = max(fig.peak_rss, peak)
    return figures


def _peak(figures: dict[str, _RunFigures]) -> int:
    return max((max(f.peak_rss, f.check_peak_rss) for f in figures.values()), default=0)


def _median_range(values: list[float], blank_zero: bool = False) -> str:
    """Median (range) to two decimals; "-" with no values (or only zeros, if `blank_zero`)."""
    if not values or (blank_zero and not any(values)):
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def to_markdown(report: BenchReport) -> str:
    mib = 2**20
    refresh = bool(report.refresh_totals)
    header = (
        "| asset | rows | seconds, median (range) | its checks, s | rows/s | peak RSS MiB (max) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|"
    if refresh:
        header += " refresh, s | refresh checks, s | refresh peak RSS MiB (max) |"
        rule += "---:|---:|---:|"
    lines = [
        f"# cip bench: {report.events:,} events, seed {report.seed}, "
        f"{report.repeat} run(s), {report.started}",
        "",
        "Seconds per asset: its steps in the full run (both months), and apart the steps of its",
        "checks (a check declared on the asset itself runs in the asset's step and counts there);",
        "the totals also hold Dagster's work between steps.",
        "",
        header,
        rule,
    ]
    for fig in report.assets.values():
        rows_per_second = fig.rows_per_second()
        rate = "-" if rows_per_second is None else f"{rows_per_second:,.0f}"
        peak = f"{max(fig.peak_rss) / mib:,.0f}" if fig.peak_rss else "-"
        line = (
            f"| {fig.asset} | {'-' if fig.rows is None else f'{fig.rows:,}'} | "
            f"{_median_range(fig.seconds)} | "
            f"{_median_range(fig.check_seconds, blank_zero=True)} | {rate} | {peak} |"
        )
        if refresh:
            refresh_peak = (
                f"{max(fig.refresh_peak_rss) / mib:,.0f}" if any(fig.refresh_peak_rss) else "-"
            )
            line += (
                f" {_median_range(fig.refresh_seconds)} | "
                f"{_median_range(fig.refresh_check_seconds, blank_zero=True)} | {refresh_peak} |"
            )
        lines.append(line)
    lines += [
        "",
        f"- full run: {_median_range(report.totals)} s, of which check steps "
        f"{_median_range(report.check_totals)} s",
        f"- overall peak RSS: {max(report.peak_rss, default=0) / mib:,.0f} MiB",
        f"- sizes after {report.sizes_after}: raw CSV read {report.raw_bytes / mib:,.0f} MiB; "
        f"Parquet {report.parquet_bytes / mib:,.0f} MiB "
        f"({100 * (1 - report.parquet_bytes / max(report.raw_bytes, 1)):.1f}% smaller); "
        f"warehouse {report.warehouse_bytes / mib:,.0f} MiB",
    ]
    if report.refresh_totals:
        ratio = statistics.median(report.refresh_totals) / statistics.median(report.totals)
        lines.append(
            f"- one-month refresh: {_median_range(report.refresh_totals)} s "
            f"({ratio:.2f} x the full run), of which check steps "
            f"{_median_range(report.refresh_check_totals)} s; peak RSS "
            f"{max(report.refresh_peak_rss, default=0) / mib:,.0f} MiB"
        )
    lines += [f"- FAILED: {failure}" for failure in report.failures]
    lines += [f"- check failed (warning): {warning}" for warning in report.check_warnings]
    return "\n".join(lines) + "\n"


def write_report(report: BenchReport) -> tuple[Path, Path]:
    folder = paths.data_dir() / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{report.events}-{report.started.replace(':', '')}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    figures = asdict(report)
    for name, fig in report.assets.items():
        figures["assets"][name]["median_seconds"] = fig.median_seconds()
        figures["assets"][name]["rows_per_second"] = fig.rows_per_second()
    json_path.write_text(json.dumps(figures, indent=2))
    md_path.write_text(to_markdown(report))
    return json_path, md_path
