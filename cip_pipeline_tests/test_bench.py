"""`cip bench` on a small sample: every asset gets its figures, and the report is written."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from cip_pipeline import bench, definitions, generator
from cip_pipeline.bench import run_bench, to_markdown, write_report
from cip_pipeline.cli import cmd_bench
from cip_pipeline.runner import RunSummary, checked_assets

pytestmark = pytest.mark.slow


def test_bench_reports_every_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    report = run_bench(60_000, seed=3, repeat=1, refresh=True)
    expected = {a.key.to_user_string() for a in definitions.PARTITIONED_ASSETS} | {
        a.key.to_user_string() for a in definitions.UNPARTITIONED_ASSETS
    }
    # The scores need a model, which needs 42 days of history (14-day horizon): a tiny sample may
    # skip them.
    assert expected - {"ml/propensity_scores"} <= set(report.assets)
    events = report.assets["events_parquet"]
    assert events.rows and events.rows > 50_000 and events.seconds[0] > 0
    assert len(report.totals) == 1 and len(report.refresh_totals) == 1
    assert 0 < report.parquet_bytes < report.raw_bytes
    json_path, md_path = write_report(report)
    written = json.loads(json_path.read_text())
    assert written["events"] == 60_000
    parquet = written["assets"]["events_parquet"]
    assert parquet["median_seconds"] == events.seconds[0]  # one run: the median is that run
    assert parquet["rows_per_second"] == pytest.approx(events.rows / events.seconds[0])
    assert (
        md_path.read_text() == to_markdown(report) and "| events_parquet |" in md_path.read_text()
    )
    assert (tmp_path / "bench" / "raw" / "60000-seed3" / ".complete").exists()
    run = tmp_path / "bench" / "run"
    _assert_figures_match_the_instance(report, run / "dagster_home")
    _assert_sizes_are_of(report, run, "the one-month refresh")
    raw = tmp_path / "bench" / "raw" / "60000-seed3"
    assert report.raw_bytes == sum(f.stat().st_size for f in raw.glob("*.csv"))


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _assert_sizes_are_of(report: bench.BenchReport, run: Path, state: str) -> None:
    """The sizes are of the lake and warehouse as they are at the end, and the state named."""
    assert report.sizes_after == state
    assert report.parquet_bytes == _dir_bytes(run / "lake" / "events") > 0
    assert report.warehouse_bytes == _dir_bytes(run / "warehouse") > 0
    assert f"- sizes after {state}: raw CSV read" in to_markdown(report)


_PEAK = re.compile(r"peak RSS of step (\S+): ([\d,]+) MiB")


def _assert_figures_match_the_instance(
    report: bench.BenchReport, home: Path, timed: set[str] | None = None
) -> None:
    """Each asset's seconds (full run plus refresh) are the durations Dagster recorded for
    every step of it that ran, materialized or not, summed over every run of the benchmark
    (or the `timed` ones: those of the full run when the refresh failed), and so are its check
    steps'; every such asset has a peak RSS in every run it ran in, and the overall peaks are
    the largest the steps logged. The failed checks are those of every run."""
    refreshed = timed is None
    defs = definitions.build_definitions()
    checked_by = checked_assets(defs)
    asset_of = {a.node_def.name: a.key.to_user_string() for a in defs.assets or []}
    steps: dict[str, float] = {}
    checks: dict[str, float] = {}
    peaks: list[int] = []
    failed: Counter[tuple[str, str]] = Counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        for run in runs:
            if timed is None or run.run_id in timed:
                for stats in instance.get_run_step_stats(run.run_id):
                    if stats.start_time is None or stats.end_time is None:
                        continue  # skipped by Dagster: it did not run
                    duration = stats.end_time - stats.start_time
                    if stats.step_key in checked_by:
                        asset = checked_by[stats.step_key]
                        checks[asset] = checks.get(asset, 0.0) + duration
                    else:
                        asset = asset_of[stats.step_key]
                        steps[asset] = steps.get(asset, 0.0) + duration
                for entry in instance.all_logs(run.run_id):
                    if match := _PEAK.fullmatch(entry.user_message):
                        peaks.append(int(match[2].replace(",", "")) * 2**20)
            for entry in instance.all_logs(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ):
                evaluation = entry.dagster_event.event_specific_data
                if not evaluation.passed:
                    name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                    failed[(name, evaluation.severity.value)] += 1
    assert len(runs) > 4 and len(checks) >= 10  # month loads and derivations, all months
    assert set(report.assets) == set(steps)
    for name, seconds in steps.items():
        fig = report.assets[name]
        assert sum(fig.seconds) + sum(fig.refresh_seconds) == pytest.approx(seconds), name
        assert len(fig.peak_rss) == 1 and fig.peak_rss[0] > 0, name
        assert len(fig.refresh_peak_rss) == len(fig.refresh_seconds), name
        assert all(p > 0 for p in fig.refresh_peak_rss), name
    reported = {
        name: sum(fig.check_seconds) + sum(fig.refresh_check_seconds)
        for name, fig in report.assets.items()
        if any(fig.check_seconds) or any(fig.refresh_check_seconds)
    }
    assert reported.keys() == checks.keys()
    for name, seconds in checks.items():
        assert reported[name] == pytest.approx(seconds), name
    refresh_checks = report.refresh_check_totals[0] if refreshed else 0.0
    assert report.check_totals[0] + refresh_checks == pytest.approx(sum(checks.values()))
    assert 0 < report.check_totals[0] < report.totals[0]
    # the log rounds to the MiB
    overall = max(report.peak_rss + report.refresh_peak_rss)
    assert abs(overall - max(peaks)) <= 2**19
    if refreshed:
        fact_sessions = report.assets["core/fact_sessions"]
        assert fact_sessions.refresh_seconds[0] > 0 and fact_sessions.refresh_check_seconds[0] > 0
        assert report.refresh_peak_rss[0] > 0
    names = Counter(
        [(e.rsplit(": ", 1)[1], "ERROR") for e in report.check_errors]
        + [(w.rsplit(": ", 1)[1], "WARN") for w in report.check_warnings]
    )
    assert names == failed
    assert [f for f in report.failures if f.startswith("check")] == [
        f"check of ERROR severity failed, {e}" for e in report.check_errors
    ]


def test_a_failed_refresh_is_reported_with_the_full_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full run's figures are kept and written; the refresh's failure is in the report, and
    so is the check of ERROR severity that failed in the full run (November's file carries
    malformed lines), which fails `cip bench` on its own; warnings are listed apart."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    run = tmp_path / "bench" / "run"
    real_copy_bytes = bench._copy_bytes

    def copy_bytes(source: Path, target: Path, end: int, start: int = 0) -> None:
        real_copy_bytes(source, target, end, start)
        if start == 0:  # the full run's copy of November, without its late rows
            with target.open("ab") as f:
                f.write(b"garbage,line\n" * 1000)

    real_run_months = bench.run_months
    calls: list[list[str]] = []
    raw_read: list[int] = []
    full_run: set[str] = set()
    built: list[tuple[int, int]] = []  # Parquet and warehouse bytes after the full run

    def run_months(
        defs: dg.Definitions, instance: dg.DagsterInstance, months: Sequence[str]
    ) -> list[RunSummary]:
        calls.append(list(months))
        if len(calls) == 1:
            raw_read.append(_dir_bytes(run / "raw"))
            return real_run_months(defs, instance, months)
        full_run.update(r.run_id for r in instance.get_runs())
        built.append((_dir_bytes(run / "lake" / "events"), _dir_bytes(run / "warehouse")))
        return [RunSummary("2019-11", "r1", False, 0.0, failures=["core/events: out of memory"])]

    monkeypatch.setattr(bench, "_copy_bytes", copy_bytes)
    monkeypatch.setattr(bench, "run_months", run_months)
    report = run_bench(20_000, seed=5, repeat=1, refresh=True)
    assert calls == [["2019-10", "2019-11"], ["2019-11"]]
    assert len(report.totals) == 1 and report.refresh_totals == []
    assert "run 1, 2019-11: events_parquet:quarantine_rate" in report.check_errors
    assert report.failures[-1] == "one-month refresh of run 1, 2019-11: core/events: out of memory"
    assert report.assets["events_parquet"].rows
    # The all-months job of the refresh ran, but a failed refresh is not timed.
    _assert_figures_match_the_instance(report, run / "dagster_home", timed=full_run)
    # The sizes are of the full run, against the raw bytes it read (the late rows, appended
    # for the refresh that failed, were never read).
    assert report.sizes_after == "the full run"
    assert (report.parquet_bytes, report.warehouse_bytes) == built[0]
    assert report.raw_bytes == raw_read[0] < _dir_bytes(run / "raw")
    _, md_path = write_report(report)
    markdown = md_path.read_text()
    assert "- FAILED: one-month refresh of run 1, 2019-11" in markdown
    assert (
        "- FAILED: check of ERROR severity failed, run 1, 2019-11: "
        "events_parquet:quarantine_rate" in markdown
    )
    for warning in report.check_warnings:
        assert f"- check failed (warning): {warning}" in markdown
    written = json.loads(md_path.with_suffix(".json").read_text())
    assert written["check_errors"] == report.check_errors
    assert written["check_warnings"] == report.check_warnings

    # `cip bench` exits 1 on a failed check of ERROR severity alone, not on warnings.
    args = argparse.Namespace(events=20_000, seed=5, repeat=1, refresh=True)
    checks_only = dataclasses.replace(
        report, failures=[f for f in report.failures if f.startswith("check")]
    )
    warnings_only = dataclasses.replace(
        report, failures=[], check_errors=[], check_warnings=["run 1, all months: a:b"]
    )
    for case, code in ((checks_only, 1), (warnings_only, 0)):
        monkeypatch.setattr(bench, "run_bench", lambda *a, case=case, **k: case)
        assert cmd_bench(args) == code


def test_a_failed_full_run_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run with a failed step is no time of the pipeline and no base for a refresh: the
    report names the failure (no traceback), is written, and `cip bench` exits 1."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    calls: list[list[str]] = []

    def run_months(
        defs: dg.Definitions, instance: dg.DagsterInstance, months: Sequence[str]
    ) -> list[RunSummary]:
        calls.append(list(months))
        return [RunSummary("2019-11", "r1", False, 0.0, failures=["core/events: out of memory"])]

    monkeypatch.setattr(bench, "run_months", run_months)
    report = run_bench(20_000, seed=5, repeat=2, refresh=True)
    assert calls == [["2019-10", "2019-11"], ["2019-10", "2019-11"]]  # no refresh after either
    assert report.totals == [] and report.refresh_totals == []
    assert report.sizes_after == "the full run (failed)"
    assert report.failures == [f"run {i}, 2019-11: core/events: out of memory" for i in (1, 2)]
    _, md_path = write_report(report)
    assert "- FAILED: run 2, 2019-11: core/events: out of memory" in md_path.read_text()
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: report)
    assert cmd_bench(argparse.Namespace(events=20_000, seed=5, repeat=2, refresh=True)) == 1


def test_the_refresh_receives_the_newest_month_late_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full run reads the newest month without its last thirtieth; the refresh finds it
    appended to the file (the nightly case) and the ingest reads only those bytes."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    run_raw = tmp_path / "bench" / "run" / "raw" / "2019-Nov.csv"
    real_run_months = bench.run_months
    sizes: list[int] = []

    def run_months(
        defs: dg.Definitions, instance: dg.DagsterInstance, months: Sequence[str]
    ) -> list[RunSummary]:
        sizes.append(run_raw.stat().st_size)
        return real_run_months(defs, instance, months)

    monkeypatch.setattr(bench, "run_months", run_months)
    report = run_bench(20_000, seed=5, repeat=1, refresh=True)
    assert not report.failures and len(report.refresh_totals) == 1
    cached = (tmp_path / "bench" / "raw" / "20000-seed5" / "2019-Nov.csv").read_bytes()
    held_back = cached[sizes[0] :]
    assert sizes == [sizes[0], len(cached)]
    assert cached[sizes[0] - 1 : sizes[0]] == b"\n"  # cut at a line
    assert len(cached) // 30 - 200 < len(held_back) <= len(cached) // 30  # from the next line
    assert run_raw.read_bytes() == cached
    run = tmp_path / "bench" / "run"
    parts = sorted((run / "lake" / "events" / "month=2019-11").glob("part-*.parquet"))
    assert len(parts) == 2  # the whole file as it was, then the late rows
    # The sizes are measured once every raw byte was read, against all of them.
    _assert_sizes_are_of(report, run, "the one-month refresh")
    october = tmp_path / "bench" / "raw" / "20000-seed5" / "2019-Oct.csv"
    assert report.raw_bytes == october.stat().st_size + len(cached)
    _assert_figures_match_the_instance(report, run / "dagster_home")


def test_a_cached_sample_of_another_generator_is_generated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    calls: list[list[str]] = []

    def generate(command: list[str], check: bool) -> None:  # `cip generate`, in a process
        calls.append(command)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "2019-Oct.csv").write_text("new\n")

    monkeypatch.setattr(bench.subprocess, "run", generate)
    folder = tmp_path / "bench" / "raw" / "500-seed1"
    cli = [sys.executable, "-m", "cip_pipeline.cli", "generate", "--events", "500", "--seed", "1"]
    folder.mkdir(parents=True)
    (folder / "2019-Oct.csv").write_text("old\n")
    (folder / ".complete").write_text("ok\n")  # complete, by a generator of unknown version
    log = io.StringIO()
    assert bench.cached_raw(500, 1, log) == folder
    assert calls == [[*cli, "--out", str(folder)]]
    assert (folder / "2019-Oct.csv").read_text() == "new\n"
    assert (folder / ".complete").read_text() == generator.generator_version() + "\n"
    bench.cached_raw(500, 1, log)
    assert len(calls) == 1  # the current version's sample is reused
    # Any change to a source file of the generator changes its version.
    package = tmp_path / "generator"
    shutil.copytree(
        Path(generator.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    assert generator.generator_version(package) == generator.generator_version()
    with (package / "events.py").open("a") as f:
        f.write("# changed\n")
    assert generator.generator_version(package) != generator.generator_version()
