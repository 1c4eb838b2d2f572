"""Jobs, the nightly schedule, the raw-file sensor and the automation of downstream assets."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from cip_pipeline.assets.common import NEIGHBOUR_CHANGED, REBUILT_ON_NEIGHBOUR_CHANGE
from cip_pipeline.months import month_of_raw_file, parse_month, partition_key
from cip_pipeline.observability import STEP_HOOKS
from cip_pipeline.partitions import is_partition_month, month_of_partition, monthly
from cip_pipeline.resources import LakeResource

MONTHLY_JOB = "monthly_refresh"
# Schedules and sensors start running with the daemon unless CIP_AUTOMATION=off (for a
# deployment that only refreshes by hand, and for tests that launch their own runs).
AUTOMATION_ON = os.environ.get("CIP_AUTOMATION", "on").lower() not in ("off", "0", "false")
SCHEDULE_STATUS = (
    dg.DefaultScheduleStatus.RUNNING if AUTOMATION_ON else dg.DefaultScheduleStatus.STOPPED
)
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if AUTOMATION_ON else dg.DefaultSensorStatus.STOPPED
ALL_MONTHS_JOB = "all_months_refresh"


def build_jobs(
    partitioned: Sequence[dg.AssetsDefinition | dg.AssetChecksDefinition],
    unpartitioned: Sequence[dg.AssetsDefinition | dg.AssetChecksDefinition],
) -> list[dg.UnresolvedAssetJobDefinition]:
    """One job for a month's partitioned chain, one for the assets over all months."""

    def selection(
        items: Sequence[dg.AssetsDefinition | dg.AssetChecksDefinition],
    ) -> dg.AssetSelection:
        assets = [a for a in items if not isinstance(a, dg.AssetChecksDefinition)]
        checks = [c for c in items if isinstance(c, dg.AssetChecksDefinition)]
        return dg.AssetSelection.assets(*assets) | dg.AssetSelection.checks(*checks)

    jobs = [
        dg.define_asset_job(
            MONTHLY_JOB,
            selection=selection(partitioned),
            hooks=STEP_HOOKS,
            description="Refresh one month: raw file -> lake -> warehouse.",
        )
    ]
    if unpartitioned:
        jobs.append(
            dg.define_asset_job(
                ALL_MONTHS_JOB,
                selection=selection(unpartitioned),
                hooks=STEP_HOOKS,
                description="Refresh the assets over all months.",
            )
        )
    return jobs


def raw_files(lake: LakeResource) -> dict[str, Path]:
    """The raw month files whose month is a partition (from FIRST_MONTH to the month in
    progress): a run requested for another month would fail the whole sensor tick."""
    root = Path(lake.raw_dir)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if _partition_of(p.name)}


def _partition_of(name: str) -> str | None:
    month = month_of_raw_file(name)
    return partition_key(month) if month and is_partition_month(month) else None


def current_month(lake: LakeResource) -> str | None:
    """`CIP_CURRENT_MONTH` when set, else the month of the most recently written raw file.

    Raises ValueError when `CIP_CURRENT_MONTH` is not a month."""
    configured = os.environ.get("CIP_CURRENT_MONTH")
    if configured:
        return parse_month(configured)
    files = raw_files(lake)
    if not files:
        return None
    newest = max(files.values(), key=lambda p: p.stat().st_mtime_ns)
    return month_of_raw_file(newest.name)


@dg.schedule(
    cron_schedule="0 2 * * *",
    job_name=MONTHLY_JOB,
    execution_timezone="UTC",
    default_status=SCHEDULE_STATUS,
    description="02:00 UTC: refresh the current month (late data arrives daily).",
)
def nightly_refresh(
    context: dg.ScheduleEvaluationContext, lake: LakeResource
) -> dg.RunRequest | dg.SkipReason:
    # A bad CIP_CURRENT_MONTH skips the night with the reason shown on the tick, instead of an
    # error every night (Dagster rejects a run of a month that is not a partition).
    try:
        month = current_month(lake)
    except ValueError as error:
        return dg.SkipReason(f"CIP_CURRENT_MONTH: {error}")
    if month is None:
        return dg.SkipReason(f"no raw file in {lake.raw_dir}")
    if not is_partition_month(month):
        first, last = monthly.get_first_partition_key(), monthly.get_last_partition_key()
        return dg.SkipReason(
            f"CIP_CURRENT_MONTH: {month} is not a partition (months run from "
            f"{month_of_partition(first)} to {month_of_partition(last)}, the month in progress)"
        )
    return dg.RunRequest(
        partition_key=partition_key(month), tags={"cip/trigger": "nightly schedule"}
    )


# A month's entry in the sensor's cursor: the name of the file the ingest reads for it (see
# `month_files`) and that file's `_file_state`.
Entry = list[str | int]
# Version 1 (no "version") kept entries per file name, each [size, mtime] or its `_file_state`.
CURSOR_VERSION = 2


def _file_state(path: Path) -> list[int]:
    """Size and mtime, and the inode and ctime: a file replaced by one of the same size with
    its mtime kept (`cp -p`, a restore) is still a change."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


def month_files(lake: LakeResource) -> dict[str, Entry]:
    """Per partition month with a raw file, the file its ingest reads (a `.csv` shadows its
    `.csv.gz`) with its state: a shadowed file's changes change nothing."""
    entries: dict[str, Entry] = {}
    for month in filter(is_partition_month, lake.raw_months()):
        path = lake.raw_file(month)
        try:
            if path is not None:
                entries[month] = [path.name, *_file_state(path)]
        except FileNotFoundError:  # deleted since listed: the next tick sees what replaced it
            continue
    return entries


def _read_cursor(
    text: str | None, now: dict[str, Entry]
) -> tuple[dict[str, Entry], dict[str, Entry]]:
    """The seen and requested entries per month, from a cursor of either version."""
    cursor = json.loads(text) if text else {}
    if cursor.get("version") == CURSOR_VERSION:
        return cursor["seen"], cursor["requested"]

    def upgrade(by_name: dict[str, list[int]]) -> dict[str, Entry]:
        # A file's size and mtime as recorded before the inode and ctime were: the file as it is
        # now, not a change of every file; from now on its whole state is compared.
        upgraded: dict[str, Entry] = {}
        for month, entry in now.items():
            recorded = by_name.get(str(entry[0]))
            if recorded is not None:
                same = recorded == entry[1 : 1 + len(recorded)]
                upgraded[month] = entry if same else [entry[0], *recorded]
        return upgraded

    return upgrade(cursor.get("seen", {})), upgrade(cursor.get("requested", {}))


@dg.sensor(
    job_name=MONTHLY_JOB,
    minimum_interval_seconds=30,
    default_status=SENSOR_STATUS,
    description="A month's raw file (its .csv, else its .csv.gz) new, changed or switched "
    "requests a run for exactly that month, once its name, size, mtime, inode and ctime have "
    "held still for one tick (no half-copied file).",
)
def raw_file_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    if not Path(lake.raw_dir).is_dir():
        # An unmounted share or a folder being moved: seen as empty, its files would all look
        # new when it came back and every month would be rebuilt.
        return dg.SensorResult(skip_reason=f"raw folder {lake.raw_dir} not found: cursor kept")
    now = month_files(lake)
    if not now and context.cursor and json.loads(context.cursor).get("version") != CURSOR_VERSION:
        # a cursor of version 1 is upgraded against the files present: none, it would be lost
        return dg.SensorResult(skip_reason="no raw file to upgrade the cursor against: kept")
    seen, requested = _read_cursor(context.cursor, now)
    runs = []
    for month, entry in now.items():
        if seen.get(month) != entry or requested.get(month) == entry:
            continue
        run_key = ":".join(map(str, entry))
        before = requested.get(month)
        if before is not None and before[0] != entry[0]:
            # Back to a file run before the one that shadowed it: Dagster drops a seen run key.
            run_key += " after " + ":".join(map(str, before))
        runs.append(
            dg.RunRequest(
                partition_key=partition_key(month),
                run_key=run_key,
                tags={"cip/trigger": "raw file sensor", "cip/raw_file": str(entry[0])},
            )
        )
        requested[month] = entry
    # A month's file gone is no change to request; kept, its entry means that the same file
    # back (a share remounted empty for a while) is no change either.
    return dg.SensorResult(
        run_requests=runs,
        cursor=json.dumps({"version": CURSOR_VERSION, "seen": now, "requested": requested}),
    )


# An upstream month that its own automation (ON_NEIGHBOUR_CHANGE) is to rebuild: a month it
# reads changed and it has not been requested since, or its rebuild was requested last tick and
# has not landed (until its run is queued it does not show as in progress). A target requested
# in the same run as the month (its checks) does not wait for it.
_MONTH_TO_REBUILD = (
    (NEIGHBOUR_CHANGED | dg.AutomationCondition.newly_requested())
    & ~dg.AutomationCondition.newly_updated()
    & ~dg.AutomationCondition.will_be_requested()
).with_label("upstream month to be rebuilt")

# Materialize an asset over all months when any upstream month was updated since it last ran,
# or when it goes missing (wiped) after the sensor first evaluated it: one missing at that first
# evaluation (or when this condition changes) waits for an upstream month to change. It also
# waits while a month it reads is to be rebuilt (the neighbour of a month that landed), to read
# the rebuilt month and run once, after it. (`eager()` would never fire: the monthly partitions
# run to the month in progress, so an upstream partition is missing while a month has no data.)
ON_ANY_MONTH_CHANGE = (
    (dg.AutomationCondition.missing().newly_true() | dg.AutomationCondition.any_deps_updated())
    .since_last_handled()
    .with_label("missing, or any upstream month updated")
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_match(_MONTH_TO_REBUILD)
    .allow(dg.AssetSelection.assets(*REBUILT_ON_NEIGHBOUR_CHANGE))
    .with_label("an upstream month to be rebuilt")
).with_label("refresh when any month changes")


def downstream_automation(
    unpartitioned: Sequence[dg.AssetsDefinition],
) -> dg.AutomationConditionSensorDefinition:
    """Assets over all months follow their upstream months declaratively, with no second
    schedule: those without a condition of their own get ON_ANY_MONTH_CHANGE."""
    return dg.AutomationConditionSensorDefinition(
        "downstream_automation",
        target=dg.AssetSelection.assets(*unpartitioned),
        default_condition=ON_ANY_MONTH_CHANGE,
        use_user_code_server=True,
        default_status=SENSOR_STATUS,
        minimum_interval_seconds=60,
    )
