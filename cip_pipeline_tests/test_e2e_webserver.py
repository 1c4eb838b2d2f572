"""End to end, as a data engineer uses it: the real dagster-webserver and dagster-daemon on
127.0.0.1 with a temporary Dagster home and warehouse, runs launched through GraphQL (the
call the UI's Materialize button makes), and the UI rendered in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from cip_pipeline.budget import Budget
from cip_pipeline.generator import generate
from cip_pipeline.runner import write_instance_config
from cip_pipeline_tests.browser import ARTIFACTS, browser_page, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
INGEST = [["events_parquet"], ["core", "events"], ["core", "ingest_audit"]]
DERIVED = [
    ["core", "fact_user_days"],
    ["core", "fact_sessions"],
    ["core", "fact_daily_kpis"],
    ["analytics", "data_profile"],
]


class Dagster:
    def __init__(self, url: str, home: Path, data: Path) -> None:
        self.url, self.home, self.data = url, home, data

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
        assert "errors" not in payload, payload
        return payload["data"]

    def materialize_month(self, partition: str, assets: list[list[str]]) -> str:
        """What the UI's Materialize button sends for a partition of the selected assets."""
        data = self.graphql(
            LAUNCH,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": "cip_pipeline",
                        "repositoryName": "__repository__",
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": p} for p in assets],
                    },
                    "executionMetadata": {
                        "tags": [{"key": "dagster/partition", "value": partition}]
                    },
                    "runConfigData": "{}",
                }
            },
        )["launchRun"]
        assert data["__typename"] == "LaunchRunSuccess", data
        return data["run"]["runId"]

    def wait(self, run_id: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.graphql(STATUS, {"id": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        raise TimeoutError(f"run {run_id} still running after {timeout} s")


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename } } } } }"""


@pytest.fixture(scope="module")
def dagster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dagster]:
    root = tmp_path_factory.mktemp("e2e")
    data, home = root / "data", root / "data" / "dagster_home"
    home.mkdir(parents=True)
    generate(30_000, seed=4, out=data / "raw")
    write_instance_config(home, Budget.from_env())
    # Create the instance's SQLite storage first, as `cip ui` does: a webserver and a daemon
    # that both create it at once can stamp its schema twice ("more than one head present").
    with dg.DagsterInstance.from_config(str(home)):
        pass
    port = free_port()
    env = {
        **os.environ,
        "CIP_DATA_DIR": str(data),
        "DAGSTER_HOME": str(home),
        "CIP_AUTOMATION": "off",
    }
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    logs = [open(root / f"{n}.log", "w") for n in ("webserver", "daemon")]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dagster-webserver"),
                "-w",
                str(workspace),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
            cwd=workspace.parent,
        ),
        subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            stdout=logs[1],
            stderr=subprocess.STDOUT,
            cwd=workspace.parent,
        ),
    ]
    server = Dagster(f"http://127.0.0.1:{port}", home, data)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                entries = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError((root / "webserver.log").read_text()[-3000:])
            time.sleep(1)
        yield server
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_two_months_launched_at_once_both_succeed(dagster: Dagster) -> None:
    """Two runs started together: the warehouse pool (limit 1) makes one wait for the
    other's writes, and neither hits DuckDB's file lock."""
    runs = [dagster.materialize_month(p, INGEST) for p in ("2019-10-01", "2019-11-01")]
    assert [dagster.wait(r) for r in runs] == ["SUCCESS", "SUCCESS"]

    con = duckdb.connect(str(dagster.data / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        months = dict(
            con.execute(
                "SELECT strftime(event_time, '%Y-%m'), count(*) FROM core.events GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.close()
    # Each month holds the lake's rows less the duplicates the quarantine lists.
    lake = dagster.data / "lake"
    expected = {}
    for month in ("2019-10", "2019-11"):
        rows = pl.scan_parquet(lake / "events" / f"month={month}" / "*.parquet").select(pl.len())
        quarantine = pl.read_parquet(lake / "quarantine" / f"month={month}" / "*.parquet")
        duplicates = quarantine.filter(pl.col("reason") == "duplicate").height
        expected[month] = rows.collect().item() - duplicates
    assert months == expected and min(months.values()) > 5_000

    os.environ["DAGSTER_HOME"] = str(dagster.home)
    instance = dg.DagsterInstance.get()
    for run_id in runs:
        checks = _check_results(instance, run_id)
        assert len(checks) == 13  # events_parquet 7, core/events 6
        assert all(c.passed for c in checks)
        logs = "\n".join(
            str(r.event_log_entry.message) for r in instance.get_records_for_run(run_id).records
        )
        assert "Database is locked" not in logs and "Could not set lock" not in logs
    pool = instance.event_log_storage.get_concurrency_info("duckdb_warehouse")
    assert pool.slot_count == 1
    # The pool's steps (those writing or checking the warehouse) of the two runs never ran at
    # the same time: one run waited for the other's slot.
    spans = [_warehouse_step_spans(instance, run_id) for run_id in runs]
    assert spans[0] and spans[1]
    for a_start, a_end in spans[0]:
        for b_start, b_end in spans[1]:
            assert a_end <= b_start or b_end <= a_start, (spans[0], spans[1])


def test_a_month_derived_through_graphql(dagster: Dagster) -> None:
    """Once both months are loaded (the test above), October's user-days, sessions, daily
    KPIs and profile launched the same way: the run succeeds, its checks pass, and the tables
    agree with core.events."""
    if not (dagster.data / "lake" / "events" / "month=2019-11").exists():
        runs = [dagster.materialize_month(p, INGEST) for p in ("2019-10-01", "2019-11-01")]
        assert [dagster.wait(r) for r in runs] == ["SUCCESS", "SUCCESS"]
    run_id = dagster.materialize_month("2019-10-01", DERIVED)
    assert dagster.wait(run_id) == "SUCCESS"

    os.environ["DAGSTER_HOME"] = str(dagster.home)
    checks = _check_results(dg.DagsterInstance.get(), run_id)
    assert len(checks) == 10 and all(c.passed for c in checks)
    con = duckdb.connect(str(dagster.data / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        kpis = con.execute(
            "SELECT sum(events), sum(purchases), count(*) FROM core.fact_daily_kpis"
        ).fetchall()[0]
        events = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE event_type = 'purchase'), "
            "count(DISTINCT event_time::DATE) FROM core.events WHERE event_time < '2019-11-01'"
        ).fetchall()[0]
        sessions = con.execute(
            "SELECT count(*), min(start_time) >= '2019-10-01', max(start_time) < '2019-11-01' "
            "FROM core.fact_sessions"
        ).fetchall()[0]
        profiled = con.execute("SELECT DISTINCT month FROM analytics.data_profile").fetchall()
    finally:
        con.close()
    assert kpis == events
    assert sessions[0] > 1_000 and sessions[1:] == (True, True)
    assert [f"{m:%Y-%m-%d}" for (m,) in profiled] == ["2019-10-01"]


def _check_results(instance: dg.DagsterInstance, run_id: str) -> list:
    """The asset-check evaluations recorded for a run."""
    return [
        r.event_log_entry.dagster_event.event_specific_data
        for r in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
    ]


def _warehouse_step_spans(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    """(start, end) of each step of the run that holds the warehouse pool: all but the
    Parquet step and its checks."""
    started: dict[str, float] = {}
    spans = []
    for record in instance.get_records_for_run(run_id).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or entry.step_key is None or entry.step_key.startswith("events_parquet"):
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            spans.append((started[entry.step_key], entry.timestamp))
    return spans


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    with browser_page() as p:
        yield p


def _open(page: object, url: str, wait_for: str) -> None:
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
    with contextlib.suppress(PlaywrightTimeout):  # it only shows on a first visit
        skip.click(timeout=5_000)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)


def test_ui_renders_assets_and_a_run(dagster: Dagster, page: object) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    run_id = dagster.materialize_month("2019-10-01", INGEST)
    assert dagster.wait(run_id) == "SUCCESS"

    _open(page, f"{dagster.url}/assets/core/events?view=lineage", "events_parquet")
    graph = page.content()
    for name in ("events_parquet", "ingest_audit"):
        assert name in graph
    page.screenshot(path=ARTIFACTS / "asset-lineage.png")

    _open(page, f"{dagster.url}/runs/{run_id}", "Success")
    assert run_id[:8] in page.content()
    page.screenshot(path=ARTIFACTS / "run.png")
    assert (ARTIFACTS / "run.png").stat().st_size > 10_000
