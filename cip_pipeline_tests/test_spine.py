"""The spine through Dagster: partitions materialized in-process into a temporary warehouse."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from cip_pipeline import definitions
from cip_pipeline.assets import core
from cip_pipeline.assets.ingest import recorded_raw_rows
from cip_pipeline.generator import generate
from cip_pipeline.ingest import reader
from cip_pipeline.partitions import SPAN_DAYS
from cip_pipeline.resources import LakeResource
from cip_pipeline.runner import run_pipeline
from cip_pipeline_tests import rees46_stats as st

OCT = "2019-10-01"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    generate(60_000, seed=9, out=tmp_path / "raw")
    return tmp_path


def _materialize_into(
    instance: dg.DagsterInstance, partition: str = OCT, with_sessions: bool = False
) -> dg.ExecuteInProcessResult:
    """The month's load stage (raw file -> lake -> core.events, audit), and its sessions."""
    sessions = [core.fact_sessions, core.fact_sessions_checks] if with_sessions else []
    return dg.materialize(
        [*definitions.LOAD_ASSETS, *definitions.LOAD_CHECKS, *sessions],
        partition_key=partition,
        resources=definitions.resources(),
        instance=instance,
        raise_on_error=False,
    )


def _materialize(partition: str = OCT) -> dg.ExecuteInProcessResult:
    return _materialize_into(dg.DagsterInstance.ephemeral(), partition)


def _query(data_dir: Path, query: str) -> pl.DataFrame:
    con = duckdb.connect(str(data_dir / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        return con.sql(query).pl()
    finally:
        con.close()


def _events(data_dir: Path) -> pl.DataFrame:
    return _query(
        data_dir,
        "SELECT * EXCLUDE (user_session), user_session::VARCHAR AS user_session, "
        "event_type::VARCHAR AS event_type FROM core.events ORDER BY ALL",
    )


def _table(data_dir: Path, table: str) -> pl.DataFrame:
    return _query(data_dir, f"SELECT * FROM {table} ORDER BY ALL")


def test_definitions_load() -> None:
    defs = definitions.build_definitions()
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"events_parquet", "core/events", "core/ingest_audit"} <= keys


def test_partition_materializes_and_every_check_passes(data_dir: Path) -> None:
    result = _materialize()
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 13  # events_parquet 7, core/events 6
    assert [e.check_name for e in evaluations if not e.passed] == []

    # core.events equals an independent computation from the CSV with Polars alone.
    raw = st.read_month(data_dir / "raw" / "2019-Oct.csv").unique()
    loaded = _events(data_dir)
    assert loaded.height == raw.height
    assert loaded["price"].cast(pl.Float64).sum() == pytest.approx(raw["price"].sum(), rel=1e-12)
    assert (
        loaded.group_by("event_type").len().sort("event_type").rows()
        == raw.group_by("event_type").len().sort("event_type").rows()
    )
    assert loaded["user_session"].n_unique() == raw["user_session"].n_unique()

    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in (e.materialization for e in result.get_asset_materialization_events())
    }
    assert (
        meta["events_parquet"]["rows_in"].value
        == raw.height + meta["events_parquet"]["rows_duplicate"].value
    )
    assert meta["core/events"]["dagster/row_count"].value == raw.height

    # The Polars IO manager reads back what it wrote (DuckDB 2.0 has no connection.arrow()).
    audit = dict(_audit().select("reason", "rows").iter_rows())
    assert audit["loaded"] == raw.height


def _audit() -> pl.DataFrame:
    io_manager = definitions.resources()["polars_io_manager"]
    context = dg.build_input_context(
        asset_key=dg.AssetKey(["core", "ingest_audit"]),
        resources={"warehouse": definitions.resources()["warehouse"]},
    )
    return io_manager.load_input(context)


def test_second_materialization_leaves_identical_contents(data_dir: Path) -> None:
    assert _materialize().success
    first = _events(data_dir)
    assert _materialize().success
    assert _events(data_dir).equals(first)


def test_failed_load_keeps_the_previous_partition(data_dir: Path) -> None:
    assert _materialize().success
    before = _events(data_dir)
    # The lake file disappears: the next load fails inside its transaction.
    for part in (data_dir / "lake" / "events" / "month=2019-10").glob("part-*.parquet"):
        part.unlink()
    result = dg.materialize(
        [definitions.ingest.core_events],
        partition_key=OCT,
        resources=definitions.resources(),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    assert _events(data_dir).equals(before)


def test_row_accounting_catches_a_row_the_parser_lost(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw_lines = (data_dir / "raw" / "2019-Oct.csv").read_bytes().count(b"\n") - 1
    row_group = reader._row_group
    lost: list[int] = []

    def losing_one(block: pl.DataFrame, *args: object) -> pl.DataFrame:
        # a parser bug: the first row of the file vanishes, neither loaded nor quarantined
        if not lost:
            lost.append(1)
            block = block.slice(1)
        return row_group(block, *args)

    monkeypatch.setattr(reader, "_row_group", losing_one)
    result = _materialize()
    (accounting,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "row_accounting"
    ]
    assert not accounting.passed
    meta = accounting.metadata
    assert meta["raw_rows"].value == raw_lines
    assert meta["parquet_rows"].value + meta["quarantined"].value == raw_lines - 1
    # a blocking check: nothing is loaded from the lake file that lost a row
    materialized = {
        e.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    assert materialized == {"events_parquet"}


def test_row_accounting_uses_the_count_made_while_ingesting(data_dir: Path) -> None:
    raw = data_dir / "raw" / "2019-Oct.csv"
    raw_lines = raw.read_bytes().count(b"\n") - 1
    instance = dg.DagsterInstance.ephemeral()
    assert _materialize_into(instance).success
    lake = LakeResource()
    assert recorded_raw_rows(instance, OCT, lake) == raw_lines
    # The file grows after the load: the lake still accounts for the rows it was built from,
    # while a partition without a recorded count is counted from the file as it is now.
    with raw.open("ab") as f:
        f.write(raw.read_bytes().splitlines(keepends=True)[-1])
    assert recorded_raw_rows(instance, OCT, lake) == raw_lines
    assert recorded_raw_rows(dg.DagsterInstance.ephemeral(), OCT, lake) == raw_lines + 1


def test_months_are_independent_partitions(data_dir: Path) -> None:
    assert _materialize(OCT).success
    oct_rows = _events(data_dir).height
    assert _materialize("2019-11-01").success
    both = _events(data_dir)
    assert both.filter(pl.col("event_time") < pl.datetime(2019, 11, 1)).height == oct_rows
    assert _materialize(OCT).success
    assert _events(data_dir).equals(both)


def _metadata(result: dg.ExecuteInProcessResult, key: list[str]) -> dict[str, object]:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_late_rows_are_appended_and_rebuild_only_their_spans(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The month's file grows by late rows (its last thirtieth, held back at first): the lake
    gets a part for them, core/events loads again only the spans that part touches,
    fact_sessions builds again only the spans whose sessions could see them, and the month
    then holds exactly what a fresh build from the grown file gives."""
    raw = data_dir / "raw" / "2019-Oct.csv"
    grown = raw.read_bytes()
    cut = grown.index(b"\n", len(grown) - len(grown) // 30) + 1
    raw.write_bytes(grown[:cut])
    instance = dg.DagsterInstance.ephemeral()
    assert _materialize_into(instance, with_sessions=True).success
    raw.write_bytes(grown)
    late = _materialize_into(instance, with_sessions=True)
    assert late.success
    ingest = _metadata(late, ["events_parquet"])
    assert (ingest["read"], ingest["parquet_parts"]) == ("appended", 2)
    assert ingest["raw_rows"] == grown.count(b"\n") - 1
    assert ingest["raw_rows_read"] == grown[cut:].count(b"\n")
    span = SPAN_DAYS
    late_spans = {  # the first day of each load span holding a late row
        f"2019-10-{(int(line[8:10]) - 1) // span * span + 1:02d}"
        for line in grown[cut:].splitlines()
        if line[:4] == b"2019"
    }
    chunks = _metadata(late, ["core", "events"])["chunks"]
    reloaded = {c["label"][:10] for c in chunks if not c["kept"]}
    assert late_spans <= reloaded
    assert len(reloaded) <= len(late_spans) + 1  # a row group may straddle a span's start
    assert sum(c["rows"] for c in chunks) == ingest["rows_loaded"]
    sessions = _metadata(late, ["core", "fact_sessions"])["chunks"]
    rebuilt = sorted(c["label"][:10] for c in sessions if not c["kept"])
    # The spans of the late rows, and the one before (its sessions may run into them).
    earliest = datetime.fromisoformat(min(reloaded)) - timedelta(days=SPAN_DAYS)
    assert rebuilt and rebuilt[0] >= f"{earliest:%Y-%m-%d}"
    assert sum(c["kept"] for c in sessions) >= len(sessions) - 2 * len(reloaded)
    appended, appended_audit = _events(data_dir), _audit()
    appended_sessions = _table(data_dir, "core.fact_sessions")
    checks = late.get_asset_check_evaluations()
    assert checks and all(e.passed for e in checks)

    fresh = tmp_path_factory.mktemp("fresh")
    (fresh / "raw").mkdir()
    (fresh / "raw" / raw.name).write_bytes(grown)
    monkeypatch.setenv("CIP_DATA_DIR", str(fresh))
    assert _materialize_into(dg.DagsterInstance.ephemeral(), with_sessions=True).success
    assert appended.equals(_events(fresh))
    assert appended_sessions.equals(_table(fresh, "core.fact_sessions"))
    assert appended_audit.sort("reason").equals(_audit().sort("reason"))


def test_cip_run_on_partial_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    generate(4_000, seed=1, months=["2019-10"], out=tmp_path / "raw")
    generate(100, seed=1, months=["2019-09"], out=tmp_path / "raw")  # before the partitions
    out = io.StringIO()
    assert run_pipeline(["2019-09", "2019-10", "2019-11"], out=out) == 0
    text = out.getvalue()
    assert "skipped 2019-09: not a partition" in text
    assert "skipped 2019-11: no raw file" in text
    assert "2019-10  [ok" in text and "core/events" in text
    # One short month: the model and the simulation say why they did not run, no failure.
    assert "skipped ml/propensity_model: not enough history" in text
    assert "skipped ml__propensity_scores" in text
    assert "Traceback" not in text
    assert (tmp_path / "dagster_home" / "dagster.yaml").exists()


def test_cip_run_names_the_failed_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "2019-Oct.csv").write_text("not,the,header\n1,2,3\n")
    out = io.StringIO()
    assert run_pipeline(out=out) == 1
    text = out.getvalue()
    assert "FAILED events_parquet" in text and "unexpected header" in text
    assert "Runs ->" in text


def test_cip_run_with_no_partition_month_fails_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a month before the partitions in raw/: nothing can run, which is a failure (and
    not a reason to write the built-in sample beside the user's file)."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    generate(100, seed=1, months=["2019-09"], out=tmp_path / "raw")
    for months in (None, ["2019-09"]):
        out = io.StringIO()
        assert run_pipeline(months, out=out) == 1
        assert "nothing to run: no raw file of a partition month" in out.getvalue()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["2019-Sep.csv"]


def test_cip_run_fails_when_a_check_of_error_severity_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks do not block, so the run succeeds; `cip run` still says which check failed
    and exits 1: 500 lines that are not rows in 4,000 are 11% quarantined, above the 5% error
    threshold."""
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    generate(4_000, seed=1, months=["2019-10"], out=tmp_path / "raw")
    with (tmp_path / "raw" / "2019-Oct.csv").open("a") as f:
        f.writelines("not a row\n" for _ in range(500))
    out = io.StringIO()
    assert run_pipeline(["2019-10"], out=out) == 1
    text = out.getvalue()
    assert "2019-10  [CHECKS FAILED" in text
    assert "checks of ERROR severity failed: events_parquet:quarantine_rate" in text
    assert "Traceback" not in text
