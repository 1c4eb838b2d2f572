"""`cip bench` on a small sample: every asset gets its figures, and the report is written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from cip_pipeline import bench, definitions
from cip_pipeline.bench import run_bench, to_markdown, write_report
from cip_pipeline.runner import RunSummary, checked_assets

pytestmark = pytest.mark.slow


def test_bench_reports_every_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    report = run_bench(60_000, seed=3, repeat=1, refresh=True)
    expected = {a.key.to_user_string() for a in definitions.PARTITIONED_ASSETS} | {
        a.key.to_user_string() for a in definitions.UNPARTITIONED_ASSETS
    }
    # The model and its scores need five weeks of labelled history; a tiny sample may skip them.
    assert expected - {"ml/propensity_model", "ml/propensity_scores"} <= set(report.assets)
    events = report.assets["events_parquet"]
    assert events.rows and events.rows > 50_000 and events.seconds[0] > 0
    assert all(p > 0 for f in report.assets.values() for p in f.peak_rss)
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
    _assert_check_seconds_match_the_instance(report, tmp_path / "bench" / "run" / "dagster_home")


def _assert_check_seconds_match_the_instance(report: bench.BenchReport, home: Path) -> None:
    """Each asset's check seconds (full run plus refresh) are the durations Dagster recorded
    for the steps of the check definitions on it, summed over every run of the benchmark."""
    checked_by = checked_assets(definitions.build_definitions())
    expected: dict[str, float] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        for run in runs:
            for stats in instance.get_run_step_stats(run.run_id):
                if stats.step_key in checked_by:
                    asset = checked_by[stats.step_key]
                    duration = (stats.end_time or 0) - (stats.start_time or 0)
                    expected[asset] = expected.get(asset, 0.0) + duration
    assert len(runs) > 4 and len(expected) >= 10  # month loads and derivations, all months
    reported = {
        name: sum(fig.check_seconds) + sum(fig.refresh_check_seconds)
        for name, fig in report.assets.items()
        if any(fig.check_seconds) or any(fig.refresh_check_seconds)
    }
    assert reported.keys() == expected.keys()
    for name, seconds in expected.items():
        assert reported[name] == pytest.approx(seconds), name
    total = sum(expected.values())
    assert report.check_totals[0] + report.refresh_check_totals[0] == pytest.approx(total)
    assert 0 < report.check_totals[0] < report.totals[0]
    refreshed = report.assets["core/fact_sessions"]
    assert refreshed.refresh_seconds[0] > 0 and refreshed.refresh_check_seconds[0] > 0


def test_a_failed_refresh_is_reported_with_the_full_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full run's figures are kept and written; the refresh's failure is in the report."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    real_run_months = bench.run_months
    calls: list[list[str]] = []

    def run_months(
        defs: dg.Definitions, instance: dg.DagsterInstance, months: Sequence[str]
    ) -> list[RunSummary]:
        calls.append(list(months))
        if len(calls) == 1:
            return real_run_months(defs, instance, months)
        return [RunSummary("2019-11", "r1", False, 0.0, failures=["core/events: out of memory"])]

    monkeypatch.setattr(bench, "run_months", run_months)
    report = run_bench(20_000, seed=5, repeat=1, refresh=True)
    assert calls == [["2019-10", "2019-11"], ["2019-11"]]
    assert len(report.totals) == 1 and report.refresh_totals == []
    assert report.failures == ["one-month refresh of run 1, 2019-11: core/events: out of memory"]
    assert report.assets["events_parquet"].rows
    _, md_path = write_report(report)
    assert "- FAILED: one-month refresh of run 1, 2019-11" in md_path.read_text()


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
    parts = sorted(
        (tmp_path / "bench" / "run" / "lake" / "events" / "month=2019-11").glob("part-*.parquet")
    )
    assert len(parts) == 2  # the whole file as it was, then the late rows
