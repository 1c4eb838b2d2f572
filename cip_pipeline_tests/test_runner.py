"""What `cip run` says about a step that failed: the project's own message, not what lies
under it."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import dagster as dg
import pytest

from cip_pipeline import definitions, paths
from cip_pipeline.resources import LakeResource
from cip_pipeline.runner import execute, message_head, notes, print_summary, run_months
from cip_pipeline_tests.test_core_session_boundary import HEADER


def test_a_failure_is_reported_with_its_own_message(tmp_path: Path) -> None:
    """events_parquet raises a `dg.Failure` naming the file, from the reader's error, from
    Polars' error about the schema (the 0x1F byte splits the line in two)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2019-Nov.csv").write_bytes(
        f"{HEADER}\n2019-11-01 00:00:00 UTC,view,1,2,,,1.00,3,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c\x1f\n".encode()
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(tmp_path))
        defs = definitions.build_definitions()
    out = io.StringIO()
    (summary,) = run_months(defs, dg.DagsterInstance.ephemeral(), ["2019-11"], out)
    message = (
        "events_parquet: 2019-Nov.csv: cannot be read as lines of text (a line holds a 0x1F "
        "byte, which no REES46 row has)"
    )
    assert not summary.success
    assert summary.failures == [message]
    assert f"  FAILED {message}\n" in out.getvalue()


class Broken(Exception):
    pass


@dg.asset
def breaks() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise Broken("the asset's own words") from exc


def test_an_error_of_user_code_is_reported_as_raised_not_as_its_cause() -> None:
    """Dagster wraps the asset's error in its own; the summary unwraps that, and no more."""
    defs = dg.Definitions(assets=[breaks], jobs=[dg.define_asset_job("j", [breaks])])
    summary = execute(defs, "j", dg.DagsterInstance.ephemeral(), "broken")
    assert not summary.success
    assert summary.failures == [f"breaks: {__name__}.Broken: the asset's own words"]
    out = io.StringIO()
    print_summary(summary, out)
    assert f"  FAILED breaks: {__name__}.Broken: the asset's own words\n" in out.getvalue()


@pytest.mark.parametrize(
    ("message", "head"),
    [
        (
            "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed "
            "with ERROR severity:\nml/propensity_model: beats_best_baseline\n\nStack Trace:",
            "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed "
            "with ERROR severity: ml/propensity_model: beats_best_baseline",
        ),
        ("KeyError: 'x'\n  more", "KeyError: 'x'"),
        ("ends with a colon:", "ends with a colon:"),
        ("  \n", "Broken"),
    ],
)
def test_a_message_head_names_what_a_colon_announces(message: str, head: str) -> None:
    assert message_head(message, "Broken") == head


def test_a_csv_gz_beside_its_csv_is_named_as_not_read(tmp_path: Path) -> None:
    """Real .csv.gz files dropped beside the sample's .csv: the .csv is what loads, and both
    `cip run` and the step say which file is not read instead of loading the old one
    silently."""
    raw = tmp_path / "raw"
    raw.mkdir()
    row = "2019-10-01 00:00:0{} UTC,view,1,2,,,1.00,3,72d76fde-8bb3-4e00-8c23-a032dfed738c"
    (raw / "2019-Oct.csv").write_text(f"{HEADER}\n{row.format(1)}\n")
    with gzip.open(raw / "2019-Oct.csv.gz", "wt") as gz:
        gz.write(f"{HEADER}\n{row.format(1)}\n{row.format(2)}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(tmp_path))
        lake = LakeResource()
        defs = definitions.build_definitions()
        assert notes(lake, ["2019-10"]) == [
            "note 2019-10: 2019-Oct.csv.gz is not read: 2019-Oct.csv is there too, and a "
            "month's .csv is read before its .csv.gz (remove the one not meant)"
        ]
    instance = dg.DagsterInstance.ephemeral()
    summaries = run_months(defs, instance, ["2019-10"], io.StringIO())
    assert all(s.success for s in summaries)
    record = instance.fetch_materializations(dg.AssetKey("events_parquet"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert metadata["raw_file"].value == str(raw / "2019-Oct.csv")
    assert metadata["raw_file_not_read"].value == str(raw / "2019-Oct.csv.gz")
    assert metadata["rows_loaded"].value == 1  # the .csv's one row, not the .gz's two
    # What is unread follows the file read, not the folder afterwards: a .csv arriving while
    # the .csv.gz is read leaves nothing of it unread.
    assert paths.unread_beside(raw / "2019-Oct.csv.gz") is None
