"""Jobs, the nightly schedule, the raw-file sensor and the automation of downstream assets."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from cip_pipeline.months import month_of_raw_file, parse_month, partition_key
from cip_pipeline.observability import STEP_HOOKS
from cip_pipeline.partitions import is_partition_month
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
    """`CIP_CURRENT_MONTH` when set, else the month of the most recently written raw file."""
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
    month = current_month(lake)
    if month is None:
        return dg.SkipReason(f"no raw file in {lake.raw_dir}")
    return dg.RunRequest(
        partition_key=partition_key(month), tags={"cip/trigger": "nightly schedule"}
    )


def _file_state(path: Path) -> list[int]:
    """Size and mtime, and the inode and ctime: a file replaced by one of the same size with
    its mtime kept (`cp -p`, a restore) is still a change."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


def _same(recorded: list[int] | None, state: list[int]) -> bool:
    """`recorded` is `state`; a cursor written before it held the inode and ctime recorded
    size and mtime alone, which the upgrade must not take for a change of every file."""
    return recorded is not None and recorded == state[: len(recorded)]


@dg.sensor(
    job_name=MONTHLY_JOB,
    minimum_interval_seconds=30,
    default_status=SENSOR_STATUS,
    description="A new or changed raw file requests a run for exactly its month, once "
    "its size, mtime, inode and ctime have held still for one tick (no half-copied file).",
)
def raw_file_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, list[int]] = cursor.get("seen", {})
    requested: dict[str, list[int]] = cursor.get("requested", {})
    now = {name: _file_state(path) for name, path in raw_files(lake).items()}
    runs = []
    for name, state in now.items():
        if _same(seen.get(name), state) and not _same(requested.get(name), state):
            month = month_of_raw_file(name)
            runs.append(
                dg.RunRequest(
                    partition_key=partition_key(month),
                    run_key=f"{name}:" + ":".join(map(str, state)),
                    tags={"cip/trigger": "raw file sensor", "cip/raw_file": name},
                )
            )
            requested[name] = state
    requested = {k: v for k, v in requested.items() if k in now}
    return dg.SensorResult(
        run_requests=runs, cursor=json.dumps({"seen": now, "requested": requested})
    )


# Materialize an asset over all months when it is missing or any upstream month was updated
# since it last ran. (Plain `eager()` never fires here: the monthly partitions run to the month
# after today, so some upstream partition is always missing.)
ON_ANY_MONTH_CHANGE = (
    (dg.AutomationCondition.missing().newly_true() | dg.AutomationCondition.any_deps_updated())
    .since_last_handled()
    .with_label("missing, or any upstream month updated")
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
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
