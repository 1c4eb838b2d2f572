"""`cip run`: materialize every partition of every asset the raw data allows, through Dagster
(so the runs, materializations and check results show in the UI), and print a summary."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TextIO, cast

import dagster as dg

from cip_pipeline import definitions, paths
from cip_pipeline.assets import core, ingest
from cip_pipeline.assets.common import SKIPPED
from cip_pipeline.automation import ALL_MONTHS_JOB, MONTHLY_JOB
from cip_pipeline.budget import Budget
from cip_pipeline.months import next_month, partition_key, previous_month
from cip_pipeline.observability import reset_peak_rss, step_peaks
from cip_pipeline.partitions import FIRST_MONTH, is_partition_month
from cip_pipeline.resources import LakeResource, WarehouseResource

SAMPLE_EVENTS = 2_000_000
SAMPLE_MONTHS = ("2019-10", "2019-11")
# Dagster's console logger would print every event; the summary says what matters, and the
# full log stays in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


MANAGED = "# managed by cip"


def write_instance_config(home: Path, budget: Budget) -> Path:
    """The project's dagster.yaml in `home`, sized by the memory budget. A file whose first
    line is not the managed marker was edited by hand and is left alone."""
    config = home / "dagster.yaml"
    if config.exists() and not config.read_text().startswith(MANAGED):
        return config
    template = files("cip_pipeline").joinpath("instance/dagster.yaml").read_text()
    config.write_text(
        template.format(
            marker=MANAGED,
            max_concurrent_runs=budget.concurrent_runs,
            total=budget.total_bytes >> 20,
            per_run=budget.run_bytes >> 20,
        )
    )
    return config


def ensure_instance() -> dg.DagsterInstance:
    """The persistent instance under `$CIP_DATA_DIR/dagster_home`, with the project's config."""
    home = paths.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    write_instance_config(home, Budget.from_env())
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


@dataclass
class StepLine:
    asset: str
    rows: int | None
    seconds: float
    peak_rss: int | None = None


@dataclass
class RunSummary:
    label: str
    run_id: str
    success: bool
    seconds: float
    steps: list[StepLine] = field(default_factory=list)  # materializations
    check_steps: list[StepLine] = field(default_factory=list)  # the steps of an asset's checks
    checks_passed: int = 0
    check_errors: list[str] = field(default_factory=list)  # failed checks of ERROR severity
    check_warnings: list[str] = field(default_factory=list)  # and those of WARN severity
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    step_peaks: dict[str, int] = field(default_factory=dict)  # every step's peak RSS, bytes
    step_seconds: dict[str, float] = field(default_factory=dict)  # every step that ran

    @property
    def check_problems(self) -> list[str]:
        """Every check not passed, with its severity."""
        return [f"{name} (error)" for name in self.check_errors] + [
            f"{name} (warn)" for name in self.check_warnings
        ]


def _summarize(
    label: str,
    result: dg.ExecuteInProcessResult,
    instance: dg.DagsterInstance,
    seconds: float,
    checked: dict[str, str],
) -> RunSummary:
    """What a run did; `checked` names the asset of each step of asset checks."""
    run_id = result.run_id
    summary = RunSummary(label, run_id, result.success, seconds, step_peaks=dict(step_peaks))
    # A skipped step has an end time and no start time: it did not run.
    durations = summary.step_seconds = {
        s.step_key: s.end_time - s.start_time
        for s in instance.get_run_step_stats(run_id)
        if s.start_time is not None and s.end_time is not None
    }
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        rows = mat.metadata.get("dagster/row_count")
        summary.steps.append(
            StepLine(
                mat.asset_key.to_user_string(),
                int(rows.value) if rows is not None else None,
                durations.get(event.step_key or "", 0.0),
                step_peaks.get(event.step_key or ""),
            )
        )
    summary.check_steps = [
        StepLine(checked[step_key], None, step_seconds, step_peaks.get(step_key))
        for step_key, step_seconds in durations.items()
        if step_key in checked
    ]
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed:
            summary.checks_passed += 1
        else:
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                summary.check_errors.append(name)
            else:
                summary.check_warnings.append(name)
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            observation = event.asset_observation_data.asset_observation
            reason = observation.metadata.get(SKIPPED)
            if reason is not None:
                summary.skipped.append(f"{observation.asset_key.to_user_string()}: {reason.value}")
        if event.event_type == dg.DagsterEventType.STEP_SKIPPED:
            summary.skipped.append(f"{event.step_key}: nothing upstream to build on")
        if event.is_step_failure:
            summary.failures.append(f"{event.step_key}: {failure_message(event)}")
    return summary


def _subclasses(cls: type) -> set[type]:
    return {s for sub in cls.__subclasses__() for s in (sub, *_subclasses(sub))}


# Dagster's wrappers of an error raised by user code (in a step, an IO manager, a resource):
# what they wrap is the user code's own error. Recorded errors keep only the class name.
DAGSTER_WRAPPERS = frozenset(
    c.__name__
    for c in _subclasses(dg.DagsterUserCodeExecutionError) | {dg.DagsterUserCodeExecutionError}
)


def failure_message(event: dg.DagsterEvent) -> str:
    """The first line of what a failed step raised: a `dg.Failure`'s description, or the user
    code's own error under Dagster's wrappers (not the errors it was raised from: the
    project's errors name the file or month, those under them seldom do)."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return message_head(data.user_failure_data.description, "Failure")
    error = data.error
    while error is not None and error.cls_name in DAGSTER_WRAPPERS and error.cause is not None:
        error = error.cause
    return "unknown error" if error is None else message_head(error.message, error.cls_name)


def message_head(message: str, fallback: str) -> str:
    """An error message's first line, with the next one when it ends in a colon ("1 blocking
    asset check failed with ERROR severity:" names the check on its next line)."""
    lines = [line.strip() for line in message.strip().splitlines()] or [fallback]
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and lines[1:] else lines[0]


def print_summary(summary: RunSummary, out: TextIO = sys.stdout) -> None:
    # Most checks do not block (the data stays for a look), so a run succeeds past a failed
    # one: an ERROR check's failure is reported as the run's.
    status = "FAILED" if not summary.success else "CHECKS FAILED" if summary.check_errors else "ok"
    print(
        f"{summary.label}  [{status}, {summary.seconds:.1f} s, run {summary.run_id[:8]}]", file=out
    )
    for step in summary.steps:
        rows = f"{step.rows:>12,} rows" if step.rows is not None else " " * 17
        rss = f"  {step.peak_rss / 2**20:7,.0f} MiB peak" if step.peak_rss else ""
        print(f"  {step.asset:<28} {rows}  {step.seconds:6.2f} s{rss}", file=out)
    check_seconds = sum(step.seconds for step in summary.check_steps)
    checks = f"  checks: {summary.checks_passed} passed ({check_seconds:.2f} s)"
    if summary.check_problems:
        checks += f", {len(summary.check_problems)} not passed: " + ", ".join(
            summary.check_problems
        )
    print(checks, file=out)
    for skipped in summary.skipped:
        print(f"  skipped {skipped}", file=out)
    for failure in summary.failures:
        print(f"  FAILED {failure}", file=out)


def execute(
    defs: dg.Definitions,
    job_name: str,
    instance: dg.DagsterInstance,
    label: str,
    partition: str | None = None,
    assets: Sequence[dg.AssetsDefinition] | None = None,
    checks: dg.AssetSelection | None = None,
) -> RunSummary:
    """Run one of the project's jobs (or only `assets` of it, with their checks or those of
    `checks`) in this process and summarize it."""
    step_peaks.clear()
    reset_peak_rss()
    t0 = time.perf_counter()
    job = defs.resolve_job_def(job_name)
    keys = [k for a in assets for k in a.keys] if assets is not None else None
    if checks is not None:
        # execute_in_process selects assets only, each with every check of it: subset the job.
        check_keys = checks.resolve_checks(defs.resolve_asset_graph())
        if not keys and not check_keys:
            raise ValueError(f"{label}: nothing to run")  # get_subset would keep the whole job
        job = job.get_subset(asset_selection=set(keys or ()), asset_check_selection=check_keys)
        keys = None  # selected again, the assets would bring all their checks back
    result = job.execute_in_process(
        partition_key=partition,
        instance=instance,
        raise_on_error=False,
        asset_selection=keys,
        tags={"cip/trigger": "cip run"},
        run_config=QUIET,
    )
    return _summarize(label, result, instance, time.perf_counter() - t0, checked_assets(defs))


def checked_assets(defs: dg.Definitions) -> dict[str, str]:
    """The step of each definition of asset checks (its op's name) -> the asset it checks (or
    the assets, joined). Checks declared on an asset run in the asset's own step: not here."""
    return {
        c.node_def.name: ", ".join(sorted({k.asset_key.to_user_string() for k in c.check_keys}))
        for c in defs.asset_checks or []
    }


def months_to_derive(loaded: Sequence[str], previously_loaded: Iterable[str]) -> list[str]:
    """The months whose derived partitions must be (re)built after loading `loaded`: those,
    and their neighbours loaded before, whose sessions crossing into or from a newly loaded
    month changed."""
    before = set(previously_loaded)
    wanted = set(loaded)
    for month in loaded:
        wanted |= {m for m in (previous_month(month), next_month(month)) if m in before}
    return sorted(wanted)


def run_months(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    months: Sequence[str],
    out: TextIO | None = None,
) -> list[RunSummary]:
    """The month job for `months`, in two stages: load every month, then derive every month
    once the months around it are in the warehouse, and derive again in the neighbours loaded
    before what reads across the month boundary (all they derive, if not derived since their
    load). A month's checks across months run once the month after it is rebuilt too."""
    previously_loaded = {
        key[:7] for key in instance.get_materialized_partitions(ingest.core_events.key)
    }
    summaries: list[RunSummary] = []

    def run(
        label: str,
        month: str,
        assets: Sequence[dg.AssetsDefinition],
        checks: dg.AssetSelection | None = None,
    ) -> RunSummary:
        summary = execute(defs, MONTHLY_JOB, instance, label, partition_key(month), assets, checks)
        if out is not None:
            print_summary(summary, out)
        summaries.append(summary)
        return summary

    loaded = [m for m in months if run(m, m, definitions.LOAD_ASSETS).success]
    if not definitions.DERIVED_ASSETS:
        return summaries
    warehouse = cast(WarehouseResource, defs.resources["warehouse"])
    derived = [k for a in definitions.DERIVED_ASSETS for k in a.keys]
    # (month, what it needs: None when it is skipped); deriving one month changes nothing
    # the others are judged by.
    plan: list[tuple[str, Sequence[dg.AssetsDefinition] | None]] = []
    for month in months_to_derive(loaded, previously_loaded):
        if month in loaded or not core.derived_since_load(instance, partition_key(month), derived):
            plan.append((month, definitions.DERIVED_ASSETS))
        elif core.neighbours_unchanged(instance, warehouse, partition_key(month)):
            plan.append((month, None))
        else:
            # a neighbour derived since its load needs only what reads across the boundary
            plan.append((month, definitions.NEIGHBOUR_ASSETS))
    rebuilt = {month for month, assets in plan if assets is not None}
    across = dg.AssetSelection.checks(*definitions.CROSS_MONTH_CHECKS)
    across_assets = {k.asset_key for c in definitions.CROSS_MONTH_CHECKS for k in c.check_keys}
    deferred: list[str] = []
    for month, assets in plan:
        if assets is None:
            if out is not None:
                print(
                    f"{month} derived  [skipped: what its sessions read from the months "
                    "around it is unchanged]",
                    file=out,
                )
            continue
        if next_month(month) not in rebuilt:
            run(f"{month} derived", month, assets)
            continue
        # Until the next month is rebuilt, the checks across months would judge its old
        # rows (a session that moved would be in both): they run once it is.
        checks = dg.AssetSelection.checks_for_assets(*assets) - across
        summary = run(f"{month} derived", month, assets, checks)
        if across_assets <= {dg.AssetKey.from_user_string(step.asset) for step in summary.steps}:
            deferred.append(month)  # not when what they check was not built
    for month in deferred:
        run(f"{month} checks across months", month, [], across)
    return summaries


def notes(lake: LakeResource, months: Iterable[str]) -> list[str]:
    """What `cip run` says before it runs `months`: a raw file it will not read."""
    said = []
    for month in months:
        read = lake.raw_file(month)
        unread = paths.unread_beside(read) if read else None
        if read and unread:
            said.append(f"note {month}: {ingest.unread_note(read, unread)}")
    return said


def run_pipeline(months: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Materialize the partitions of `months` (default: every month with a raw file), then
    the assets over all months. Returns the process exit code."""
    instance = ensure_instance()
    lake = LakeResource()
    if months is None and not lake.raw_months():
        from cip_pipeline.generator import generate

        print(
            f"{lake.raw_dir} holds no raw files: generating the built-in sample "
            f"({SAMPLE_EVENTS:,} events, {', '.join(SAMPLE_MONTHS)})",
            file=out,
        )
        generate(SAMPLE_EVENTS, months=SAMPLE_MONTHS, out=Path(lake.raw_dir))
    available = set(lake.raw_months())
    wanted = sorted(months or available)
    todo = []
    for month in wanted:
        if not is_partition_month(month):
            print(
                f"skipped {month}: not a partition (months from {FIRST_MONTH[:7]} to the "
                "current one)",
                file=out,
            )
        elif month not in available:
            print(f"skipped {month}: no raw file in {lake.raw_dir}", file=out)
        else:
            todo.append(month)
    if not todo:
        print(f"nothing to run: no raw file of a partition month in {lake.raw_dir}", file=out)
        return 1
    for note in notes(lake, todo):
        print(note, file=out)
    defs = definitions.build_definitions()
    t_all = time.perf_counter()
    summaries = run_months(defs, instance, todo, out)
    failed = [s for s in summaries if not s.success]
    if definitions.UNPARTITIONED_ASSETS and todo and not failed:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "all months")
        print_summary(summary, out)
        summaries.append(summary)
        if not summary.success:
            failed.append(summary)
    print(
        f"total {time.perf_counter() - t_all:.1f} s; Dagster home {paths.dagster_home()}", file=out
    )
    for summary in failed:
        print(
            f"run {summary.run_id} failed ({summary.label}); its full log: "
            f"`cip ui`, then Runs -> {summary.run_id}",
            file=out,
        )
    checked = [s for s in summaries if s.check_errors]
    for summary in checked:
        print(
            f"run {summary.run_id} ({summary.label}): checks of ERROR severity failed: "
            f"{', '.join(summary.check_errors)}; their figures: `cip ui`, then Runs -> "
            f"{summary.run_id}",
            file=out,
        )
    return 1 if failed or checked else 0
