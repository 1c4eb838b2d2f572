"""The memory budget's arithmetic and the command line's handling of what it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from cip_pipeline import cli
from cip_pipeline.budget import Budget, available_cores, parse_size
from cip_pipeline.resources import WarehouseResource
from cip_pipeline.runner import MANAGED, write_instance_config


@pytest.mark.parametrize(
    ("total", "per_run", "cores", "runs", "threads"),
    [
        ("4GiB", "2GiB", 2, 2, 1),
        ("2GiB", "2GiB", 2, 1, 2),
        ("16GiB", "2GiB", 8, 8, 1),
        ("16GiB", "2GiB", 2, 2, 1),  # the budget holds 8 runs, the cores 2
        ("6GiB", "2GiB", 4, 3, 1),
        ("1500MB", "2GiB", 4, 1, 4),
    ],
)
def test_budget_sets_concurrency_threads_and_duckdb_limit(
    total: str, per_run: str, cores: int, runs: int, threads: int
) -> None:
    budget = Budget(parse_size(total), parse_size(per_run), cores)
    assert (budget.concurrent_runs, budget.threads_per_run) == (runs, threads)
    assert runs * budget.threads_per_run <= cores  # no run shares a core
    # `cip run`'s single process keeps the queue's size but takes every core.
    sole = Budget(parse_size(total), parse_size(per_run), cores, sole_run=True)
    assert (sole.concurrent_runs, sole.threads_per_run) == (runs, cores)
    # DuckDB reads the limit as 68% of the run's bytes, or of the whole budget when a run is
    # given more than the budget (MB would be 10^6 bytes, 4.6% less).
    share = min(budget.run_bytes, budget.total_bytes)
    want = int(share * 0.68) >> 20 << 20
    assert _duckdb_limit(budget.duckdb_memory_limit) == _duckdb_limit(f"{want} bytes")
    assert _duckdb_bytes(budget.duckdb_memory_limit) < budget.total_bytes
    assert runs * share <= budget.total_bytes


@pytest.mark.parametrize(
    ("total", "per_run", "named"),
    [
        ("4GiB", "0", "CIP_RUN_MEMORY"),
        ("4GiB", "0.5", "CIP_RUN_MEMORY"),
        ("4GiB", "2000", "CIP_RUN_MEMORY"),  # bytes: a unit forgotten
        ("100MB", "2GiB", "CIP_MEMORY_BUDGET"),
    ],
)
def test_budget_refuses_sizes_no_run_fits_in(total: str, per_run: str, named: str) -> None:
    with pytest.raises(ValueError, match=f"{named} is .* at least 256 MiB"):
        Budget(parse_size(total), parse_size(per_run), 2)


def test_a_bad_budget_is_a_clear_error_of_the_command() -> None:
    """The package sizes Polars' threads by the budget when it is imported: a run size of 0
    divided by zero there. The import goes through; `cip` says what is wrong and exits 2."""
    env = {**os.environ, "CIP_RUN_MEMORY": "0"}
    imported = subprocess.run(
        [sys.executable, "-c", "import cip_pipeline"], env=env, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    result = subprocess.run(
        [sys.executable, "-m", "cip_pipeline.cli", "generate", "--events", "10"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: CIP_RUN_MEMORY is 0 bytes: at least 256 MiB" in result.stderr
    assert "Traceback" not in result.stderr


def test_cip_ui_runs_this_interpreters_dagster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not whichever `dagster` is first on PATH: the README calls .venv/bin/cip without
    activating the environment."""
    called: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: called.append([path, *argv]))
    monkeypatch.setattr(os, "execvp", lambda path, argv: called.append([path, *argv]))
    monkeypatch.setattr("cip_pipeline.runner.ensure_instance", lambda: None)
    cli.main(["ui", "--port", "3100"])
    (command,) = called
    assert command[0] == sys.executable
    assert command[1:5] == [sys.executable, "-m", "dagster", "dev"]
    assert command[-4:] == ["-h", "127.0.0.1", "-p", "3100"]


def _duckdb_limit(setting: str) -> str:
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{setting}'")
        (value,) = con.execute(
            "SELECT value FROM duckdb_settings() WHERE name = 'memory_limit'"
        ).fetchone()
    return str(value)


def _duckdb_bytes(setting: str) -> int:
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{setting}'")
        (value,) = con.execute("SELECT current_setting('memory_limit')").fetchone()
    return parse_size(str(value).replace(" ", ""))


def test_instance_queues_a_second_run_of_the_same_month(tmp_path: Path) -> None:
    """The instance the project writes lets one run per partition through at a time."""
    write_instance_config(tmp_path, Budget(parse_size("8GiB"), parse_size("2GiB"), 4))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 4
        assert [dict(limit) for limit in queue.tag_concurrency_limits] == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]


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
    budget = Budget(parse_size("6GiB"), parse_size("2GiB"), 4)
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
    lets the budget's runs through at once for the daemon (8 GiB in runs of 2 GiB: 4, or
    fewer on fewer cores)."""
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
    assert parsed["concurrency"]["runs"]["max_concurrent_runs"] == min(4, available_cores())
    assert Budget.from_env().threads_per_run == available_cores()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--months", ","], "no month given"),
        (["run", "--months", "2019-13"], "2019-13"),
        (["generate", "--events", "inf"], "not a number: 'inf'"),
        (["generate", "--events", "0"], "must be at least 1"),
        (["ui", "--port", "0"], "not a port: 0"),
        (["ui", "--port", "70000"], "not a port: 70000"),
        (["dashboard", "--port", "-1"], "not a port: -1"),
    ],
)
def test_cli_refuses_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_months_are_sorted_once_each() -> None:
    args = cli.build_parser().parse_args(["run", "--months", "2019-11, 2019-10,2019-11"])
    assert args.months == ["2019-10", "2019-11"]
