"""Automation of the derived months and the tables over all months: a month landing after
its neighbour rebuilds the neighbour; any month changing refreshes the tables over all
months, those reading the neighbour once it is rebuilt. (`AutomationCondition.eager()` would
never fire for them: the monthly partitions run to the month in progress, so an upstream
partition is missing while a month has no data.)"""

from __future__ import annotations

import dagster as dg
import pytest

from cip_pipeline import definitions

OCT, NOV, DEC = "2019-10-01", "2019-11-01", "2019-12-01"
MONTH_KEYS = [
    dg.AssetKey(k)
    for k in (
        ["events_parquet"],
        ["core", "events"],
        ["core", "ingest_audit"],
        ["core", "fact_user_days"],
        ["core", "fact_sessions"],
        ["core", "fact_daily_kpis"],
        ["analytics", "data_profile"],
    )
]


def _month_job_ran(instance: dg.DagsterInstance, partition: str) -> None:
    for key in MONTH_KEYS:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def _requested(result: object, key: list[str]) -> set[str]:
    return set(result.get_requested_partitions(dg.AssetKey(key)))  # type: ignore[attr-defined]


@pytest.fixture
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[*definitions.PARTITIONED_ASSETS, *definitions.UNPARTITIONED_ASSETS],
        resources=definitions.resources(),
    )


def test_a_later_month_rebuilds_its_neighbour_and_the_tables_over_all_months(
    defs: dg.Definitions,
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing loaded: nothing to derive

    _month_job_ran(instance, OCT)
    after_oct = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert _requested(after_oct, ["core", "fact_sessions"]) == set()  # built by its own run
    for table in (["core", "dim_users"], ["core", "dim_products"], ["analytics", "rfm_segments"]):
        assert after_oct.get_num_requested(dg.AssetKey(table)) == 1

    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_oct.cursor)
    assert quiet.total_requested == 0  # requested once, not again while nothing changes

    _month_job_ran(instance, NOV)
    after_nov = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
    # October's sessions that ran past midnight on Oct 31 gain their November events; the
    # month after November has no data and stays unmaterialized.
    assert _requested(after_nov, ["core", "fact_sessions"]) == {OCT}
    assert _requested(after_nov, ["core", "fact_daily_kpis"]) == {OCT}
    assert _requested(after_nov, ["analytics", "data_profile"]) == set()
    assert DEC not in _requested(after_nov, ["core", "fact_sessions"])
    # The funnel reads October's sessions: it waits for their rebuild, then runs once.
    funnel = dg.AssetKey(["analytics", "funnel"])
    assert after_nov.get_num_requested(funnel) == 0
    assert after_nov.get_num_requested(dg.AssetKey(["core", "dim_products"])) == 1
    for key in (["core", "fact_sessions"], ["core", "fact_daily_kpis"]):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=OCT))
    rebuilt = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_nov.cursor
    )
    assert rebuilt.get_num_requested(funnel) == 1
