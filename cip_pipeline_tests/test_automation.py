"""Schedule, raw-file sensor, memory budget and the instance configuration they produce."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from cip_pipeline import automation, definitions
from cip_pipeline.months import next_month
from cip_pipeline.partitions import month_of_partition, monthly
from cip_pipeline.resources import LakeResource


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
    assert json.loads(fifth.cursor)["requested"].keys() == {"2019-10", "2019-11"}

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


def test_an_old_cursor_met_by_an_empty_folder_is_kept_for_the_files_back(tmp_path: Path) -> None:
    """The first tick of this version reads a cursor of the one before against the files
    present: an empty mount point then would lose it and rebuild every month."""
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    oct_file = tmp_path / "2019-Oct.csv"
    oct_file.write_text("header\n")
    stat = oct_file.stat()
    old = [stat.st_size, stat.st_mtime_ns]
    cursor = json.dumps({"seen": {oct_file.name: old}, "requested": {oct_file.name: old}})
    away = tmp_path.parent / f"{tmp_path.name}-away.csv"
    oct_file.rename(away)
    empty = _tick(lake, cursor)
    assert empty.run_requests == [] and empty.cursor is None  # kept
    away.rename(oct_file)
    assert _stable(lake, cursor).run_requests == []


def test_an_old_cursor_entry_is_upgraded_and_a_same_size_same_mtime_restore_still_runs(
    tmp_path: Path,
) -> None:
    """A size-and-mtime entry of the old cursor that matches the file takes its whole state:
    replacing the file with one of the same size and mtime is a change again."""
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    oct_file = tmp_path / "2019-Oct.csv"
    oct_file.write_text("header\nrow 1\n")
    stat = oct_file.stat()
    old = [stat.st_size, stat.st_mtime_ns]
    cursor = json.dumps({"seen": {oct_file.name: old}, "requested": {oct_file.name: old}})
    first = _tick(lake, cursor)
    second = _tick(lake, first.cursor)
    assert first.run_requests == [] and second.run_requests == []  # the upgrade is no change
    restored = tmp_path / "restore.tmp"
    restored.write_text("header\nrow X\n")
    os.utime(restored, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(restored, oct_file)
    third = _tick(lake, second.cursor)
    fourth = _tick(lake, third.cursor)
    assert third.run_requests == []  # seen once
    assert [r.partition_key for r in fourth.run_requests] == ["2019-10-01"]


def _stable(lake: LakeResource, cursor: str | None) -> dg.SensorResult:
    """Two ticks: what is requested once the files have held still for one."""
    first = _tick(lake, cursor)
    assert first.run_requests == []
    return _tick(lake, first.cursor)


def _files(result: dg.SensorResult) -> list[tuple[str | None, str]]:
    return [(r.partition_key, r.tags["cip/raw_file"]) for r in result.run_requests]


def test_a_month_is_its_csv_else_its_csv_gz(tmp_path: Path) -> None:
    """The ingest reads a month's .csv, else its .csv.gz (`LakeResource.raw_file`): one run
    with both there, none for a change to the shadowed .csv.gz, one when deleting the .csv
    makes the .csv.gz the month's file."""
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    csv, gz = tmp_path / "2019-Oct.csv", tmp_path / "2019-Oct.csv.gz"
    csv.write_text("header\n")
    gz.write_bytes(b"gz")
    both = _stable(lake, None)
    assert _files(both) == [("2019-10-01", "2019-Oct.csv")]
    gz.write_bytes(b"gz, more rows")  # shadowed: not what the ingest reads
    shadowed = _stable(lake, both.cursor)
    assert shadowed.run_requests == []
    csv.unlink()
    switched = _stable(lake, shadowed.cursor)
    assert _files(switched) == [("2019-10-01", "2019-Oct.csv.gz")]
    assert _stable(lake, switched.cursor).run_requests == []


def test_back_to_a_csv_gz_run_before_is_a_new_run_key(tmp_path: Path) -> None:
    """A .csv.gz run, shadowed by its .csv (`gunzip -k`), then the month's file again once the
    .csv is deleted: its run key is not the first one (Dagster drops a run key it has seen)."""
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    csv, gz = tmp_path / "2019-Oct.csv", tmp_path / "2019-Oct.csv.gz"
    gz.write_bytes(b"gz")
    first = _stable(lake, None)
    csv.write_text("header\n")
    second = _stable(lake, first.cursor)
    csv.unlink()
    third = _stable(lake, second.cursor)
    assert [_files(r) for r in (first, second, third)] == [
        [("2019-10-01", "2019-Oct.csv.gz")],
        [("2019-10-01", "2019-Oct.csv")],
        [("2019-10-01", "2019-Oct.csv.gz")],
    ]
    keys = [r.run_requests[0].run_key for r in (first, second, third)]
    assert len(set(keys)) == 3


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


@pytest.fixture(scope="module")
def repository() -> dg.RepositoryDefinition:
    return definitions.build_definitions().get_repository_def()


_AFTER_LAST = next_month(month_of_partition(monthly.get_last_partition_key()))


@pytest.mark.parametrize(
    ("configured", "reason"),
    [
        ("2019-09", "CIP_CURRENT_MONTH: 2019-09 is not a partition (months run from 2019-10"),
        (_AFTER_LAST, f"CIP_CURRENT_MONTH: {_AFTER_LAST} is not a partition"),
        ("Oct 2019", "CIP_CURRENT_MONTH: not a month: 'Oct 2019'"),
    ],
)
def test_nightly_schedule_skips_a_current_month_that_is_not_a_partition(
    configured: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    repository: dg.RepositoryDefinition,
) -> None:
    """Dagster rejects a run of a month outside the partitions: the tick says why instead of
    failing every night."""
    (tmp_path / "2019-Oct.csv").write_text("header\n")
    lake = LakeResource(raw_dir=str(tmp_path), lake_dir=str(tmp_path / "lake"))
    schedule = repository.get_schedule_def("nightly_refresh")
    monkeypatch.setenv("CIP_CURRENT_MONTH", configured)
    with dg.build_schedule_context(resources={"lake": lake}, repository_def=repository) as ctx:
        data = schedule.evaluate_tick(ctx)
    assert not data.run_requests
    assert data.skip_message is not None and data.skip_message.startswith(reason)
    monkeypatch.setenv("CIP_CURRENT_MONTH", "2019-11")
    with dg.build_schedule_context(resources={"lake": lake}, repository_def=repository) as ctx:
        data = schedule.evaluate_tick(ctx)
    assert [r.partition_key for r in data.run_requests or []] == ["2019-11-01"]


def test_a_raw_folder_gone_for_a_while_requests_nothing_when_it_is_back(tmp_path: Path) -> None:
    """A share unmounted (its folder missing, or left empty) for some ticks: the same files back
    are no change; a file changed meanwhile still is."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lake = LakeResource(raw_dir=str(raw), lake_dir=str(tmp_path / "lake"))
    for name in ("2019-Oct.csv", "2019-Nov.csv"):
        (raw / name).write_text("header\n")
    started = _stable(lake, None)
    assert sorted(r.partition_key for r in started.run_requests) == ["2019-10-01", "2019-11-01"]

    away = tmp_path / "away"
    raw.rename(away)
    missing = _tick(lake, started.cursor)
    assert missing.run_requests == [] and missing.cursor is None
    assert missing.skip_reason is not None and "not found" in str(missing.skip_reason)
    away.rename(raw)
    assert _stable(lake, started.cursor).run_requests == []

    raw.rename(away)
    raw.mkdir()  # the empty mount point
    empty = _stable(lake, started.cursor)
    assert empty.run_requests == []
    raw.rmdir()
    away.rename(raw)
    back = _stable(lake, empty.cursor)
    assert back.run_requests == []

    (raw / "2019-Nov.csv").write_text("header\nlate row\n")
    assert [r.partition_key for r in _stable(lake, back.cursor).run_requests] == ["2019-11-01"]
