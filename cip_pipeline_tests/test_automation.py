"""Schedule, raw-file sensor, memory budget and the instance configuration they produce."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from cip_pipeline import automation
from cip_pipeline.budget import Budget, available_cores, parse_size
from cip_pipeline.resources import LakeResource, WarehouseResource
from cip_pipeline.runner import MANAGED, write_instance_config


def _tick(lake: LakeResource, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, resources={"lake": lake})
    return automation.raw_file_sensor(context)


def test_sensor_requests_exactly_the_changed_month_once_stable(tmp_path: Path) -> None:
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    (tmp_path / "2019-Oct.csv").write_text("header\n")
    (tmp_path / "notes.txt").write_text("not a month")
    first = _tick(lake, None)
    assert first.run_requests == []  # seen once: maybe still being copied
    second = _tick(lake, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["2019-10-01"]
    third = _tick(lake, second.cursor)
    assert third.run_requests == []  # nothing changed: no new run

    (tmp_path / "2019-Nov.csv.gz").write_bytes(b"x")
    oct_file = tmp_path / "2019-Oct.csv"
    oct_file.write_text("header\nmore rows\n")  # late data: new size and mtime
    os.utime(oct_file, ns=(oct_file.stat().st_atime_ns, oct_file.stat().st_mtime_ns + 10**9))
    fourth = _tick(lake, third.cursor)
    assert fourth.run_requests == []
    fifth = _tick(lake, fourth.cursor)
    assert sorted(r.partition_key for r in fifth.run_requests) == ["2019-10-01", "2019-11-01"]
    keys = {r.run_key for r in fifth.run_requests}
    assert len(keys) == 2 and all(k.count(":") == 4 for k in keys)
    assert json.loads(fifth.cursor)["requested"].keys() == {"2019-Oct.csv", "2019-Nov.csv.gz"}

    # Replaced by a file of the same size with the same mtime (a restore, `cp -p`): its inode
    # and ctime changed, and the run key with them (Dagster drops a run key it has seen).
    stat = oct_file.stat()
    replacement = tmp_path / "restored.tmp"
    replacement.write_text("header\nmore ROWS\n")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, oct_file)
    assert (oct_file.stat().st_size, oct_file.stat().st_mtime_ns) == (
        stat.st_size,
        stat.st_mtime_ns,
    )
    sixth = _tick(lake, fifth.cursor)
    seventh = _tick(lake, sixth.cursor)
    assert [r.partition_key for r in seventh.run_requests] == ["2019-10-01"]
    assert seventh.run_requests[0].run_key not in keys


def test_a_cursor_from_before_the_inode_and_ctime_requests_nothing_again(tmp_path: Path) -> None:
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    oct_file = tmp_path / "2019-Oct.csv"
    oct_file.write_text("header\n")
    stat = oct_file.stat()
    old = [stat.st_size, stat.st_mtime_ns]  # what the cursor held before
    cursor = json.dumps({"seen": {oct_file.name: old}, "requested": {oct_file.name: old}})
    first = _tick(lake, cursor)
    second = _tick(lake, first.cursor)
    assert first.run_requests == [] and second.run_requests == []
    oct_file.write_text("header\nrow\n")  # a real change is still one
    third = _tick(lake, second.cursor)
    assert third.run_requests == []  # seen once
    assert [r.partition_key for r in _tick(lake, third.cursor).run_requests] == ["2019-10-01"]


def test_a_raw_file_outside_the_partitions_is_left_alone(tmp_path: Path) -> None:
    """A file of a month before the first partition, or after the month in progress, would make
    Dagster reject the tick's every request: it is not looked at."""
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    for name in ("2019-Sep.csv", "2019-Oct.csv", "2099-Jan.csv"):
        (tmp_path / name).write_text("header\n")
    assert automation.raw_files(lake).keys() == {"2019-Oct.csv"}
    second = _tick(lake, _tick(lake, None).cursor)
    assert [r.partition_key for r in second.run_requests] == ["2019-10-01"]
    os.utime(tmp_path / "2099-Jan.csv", (10**10, 10**10))  # the most recently written
    context = dg.build_schedule_context(resources={"lake": lake})
    assert automation.nightly_refresh(context).partition_key == "2019-10-01"


def test_nightly_schedule_targets_the_newest_raw_month(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    context = dg.build_schedule_context(resources={"lake": lake})
    assert isinstance(automation.nightly_refresh(context), dg.SkipReason)
    for i, name in enumerate(["2019-Nov.csv", "2019-Oct.csv"]):
        path = tmp_path / name
        path.write_text("x")
        os.utime(path, (1_000 + i, 1_000 + i))
    request = automation.nightly_refresh(context)
    assert request.partition_key == "2019-10-01"  # Oct was written last
    monkeypatch.setenv("CIP_CURRENT_MONTH", "2019-11")
    assert automation.nightly_refresh(context).partition_key == "2019-11-01"
    assert automation.nightly_refresh.cron_schedule == "0 2 * * *"
    assert automation.nightly_refresh.execution_timezone == "UTC"


@pytest.mark.parametrize(
    ("total", "per_run", "cores", "runs", "threads"),
    [
        ("4GiB", "2GiB", 2, 2, 1),
        ("2GiB", "2GiB", 2, 1, 2),
        ("16GiB", "2GiB", 8, 8, 1),
        ("1500MB", "2GiB", 4, 1, 4),
    ],
)
def test_budget_sets_concurrency_threads_and_duckdb_limit(
    total: str, per_run: str, cores: int, runs: int, threads: int
) -> None:
    budget = Budget(parse_size(total), parse_size(per_run), cores)
    assert (budget.concurrent_runs, budget.threads_per_run) == (runs, threads)
    # `cip run`'s single process keeps the queue's size but takes every core.
    sole = Budget(parse_size(total), parse_size(per_run), cores, sole_run=True)
    assert (sole.concurrent_runs, sole.threads_per_run) == (runs, cores)
    # DuckDB reads the limit as 68% of the run's bytes (MB would be 10^6 bytes, 4.6% less).
    want = int(budget.run_bytes * 0.68) >> 20 << 20
    assert _duckdb_limit(budget.duckdb_memory_limit) == _duckdb_limit(f"{want} bytes")
    assert runs * budget.run_bytes <= max(budget.total_bytes, budget.run_bytes)


def _duckdb_limit(setting: str) -> str:
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{setting}'")
        (value,) = con.execute(
            "SELECT value FROM duckdb_settings() WHERE name = 'memory_limit'"
        ).fetchone()
    return value


def test_warehouse_connections_carry_the_budget(tmp_path: Path) -> None:
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"), memory_limit="300MB", threads=1)
    for connect in (warehouse.connect, warehouse.scratch):
        with connect() as con:
            settings = dict(
                con.execute(
                    "SELECT name, value FROM duckdb_settings() WHERE name IN "
                    "('memory_limit', 'threads', 'preserve_insertion_order')"
                ).fetchall()
            )
        assert settings == {
            "memory_limit": "286.1 MiB",  # 300 MB in DuckDB's binary units
            "threads": "1",
            "preserve_insertion_order": "false",
        }


def test_instance_config_holds_pool_and_run_queue(tmp_path: Path) -> None:
    budget = Budget(parse_size("6GiB"), parse_size("2GiB"), 2)
    config = write_instance_config(tmp_path, budget)
    text = config.read_text()
    assert text.startswith(MANAGED)
    parsed = yaml.safe_load(text)
    assert parsed["concurrency"]["pools"]["default_limit"] == 1
    assert parsed["concurrency"]["runs"]["max_concurrent_runs"] == 3
    # Hand edits (marker removed) are kept.
    config.write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    write_instance_config(tmp_path, budget)
    assert "max_concurrent_runs" not in config.read_text()


def test_cip_run_keeps_the_budgets_run_queue_in_the_instance_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cip run` takes every core for its one process, but the dagster.yaml it writes still
    lets the budget's runs through at once for the daemon (8 GiB in runs of 2 GiB: 4)."""
    from cip_pipeline import cli

    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIP_MEMORY_BUDGET", "8GiB")
    monkeypatch.setenv("CIP_RUN_MEMORY", "2GiB")
    monkeypatch.delenv("CIP_SOLE_RUN", raising=False)
    monkeypatch.setattr(cli, "cmd_run", lambda args: 0)  # the parsing and setup only
    monkeypatch.setattr(os, "environ", dict(os.environ))  # cli.main sets variables
    assert cli.main(["run"]) == 0
    from cip_pipeline.runner import ensure_instance

    ensure_instance().dispose()
    parsed = yaml.safe_load((tmp_path / "dagster_home" / "dagster.yaml").read_text())
    assert parsed["concurrency"]["runs"]["max_concurrent_runs"] == 4
    assert Budget.from_env().threads_per_run == available_cores()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--months", ","], "no month given"),
        (["run", "--months", "2019-13"], "2019-13"),
        (["generate", "--events", "inf"], "not a number: 'inf'"),
        (["generate", "--events", "0"], "must be at least 1"),
    ],
)
def test_cli_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cip_pipeline import cli

    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_months_are_sorted_once_each() -> None:
    from cip_pipeline import cli

    args = cli.build_parser().parse_args(["run", "--months", "2019-11, 2019-10,2019-11"])
    assert args.months == ["2019-10", "2019-11"]
