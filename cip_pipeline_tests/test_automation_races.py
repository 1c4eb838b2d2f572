"""The `downstream_automation` sensor of the code location, tick by tick: a month landing next
to a built month has the neighbour rebuilt before the tables over all months that read it, and
each of those tables is requested once. Runs are stood in for by the materializations they
would report."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import pytest

from cip_pipeline import definitions
from cip_pipeline.assets.core import FACT_DAILY_KPIS, FACT_SESSIONS

OCT, NOV = "2019-10-01", "2019-11-01"
# What a month's job materializes.
MONTH_KEYS = [a.key for a in definitions.PARTITIONED_ASSETS]
ALL_MONTHS = {a.key for a in definitions.UNPARTITIONED_ASSETS}
# What a month landing next to a built October rebuilds of October (ON_NEIGHBOUR_CHANGE).
REBUILT = {FACT_SESSIONS, FACT_DAILY_KPIS}


class Ticks:
    """The real sensor, ticked by hand against an ephemeral instance."""

    def __init__(self) -> None:
        self.repo = definitions.build_definitions().get_repository_def()
        self.sensor = self.repo.get_sensor_def("downstream_automation")
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(
            instance=self.instance, repository_def=self.repo, cursor=self.cursor
        )
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return list(data.run_requests)

    def materialize(
        self, keys: list[dg.AssetKey] | set[dg.AssetKey], partition: str | None
    ) -> None:
        for key in keys:
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(key, partition=partition)
            )

    def run(self, requests: list[dg.RunRequest]) -> None:
        for request in requests:
            self.materialize(list(request.asset_selection or []), request.partition_key)


def _assets(requests: list[dg.RunRequest], partition: str | None) -> set[dg.AssetKey]:
    """The assets requested for `partition` (None: the tables over all months)."""
    return {
        key for r in requests if r.partition_key == partition for key in r.asset_selection or []
    }


def _months(requests: list[dg.RunRequest]) -> set[str | None]:
    """The partitions with assets requested (check-only requests left out)."""
    return {r.partition_key for r in requests if r.asset_selection}


@pytest.fixture(scope="module")
def readers() -> set[dg.AssetKey]:
    """The tables over all months that read a rebuilt month, directly or not."""
    graph = definitions.build_definitions().resolve_asset_graph()
    below = dg.AssetSelection.assets(*REBUILT).downstream().resolve(graph)
    return below & ALL_MONTHS


def test_the_tables_over_all_months_wait_for_the_neighbour_rebuild(
    readers: set[dg.AssetKey],
) -> None:
    ticks = Ticks()
    assert ticks.tick() == []
    ticks.materialize(MONTH_KEYS, OCT)
    ticks.run(ticks.tick())
    assert _months(ticks.tick()) == set()  # built once, nothing pending
    assert {dg.AssetKey(["core", "dim_users"]), dg.AssetKey(["analytics", "funnel"])} <= readers

    ticks.materialize(MONTH_KEYS, NOV)  # November lands next to the built October
    first = ticks.tick()
    assert _months(first) <= {OCT, None}
    assert _assets(first, OCT) == REBUILT
    # Only tables that read no rebuilt month go now; the readers would read the old October.
    assert _assets(first, None) == ALL_MONTHS - readers
    ticks.run([r for r in first if r.partition_key is None])
    second = ticks.tick()  # the rebuild has not landed
    assert _assets(second, None) == set()
    ticks.run(second)

    ticks.materialize(REBUILT, OCT)  # the rebuild lands
    third = ticks.tick()
    assert _assets(third, None) == readers
    ticks.run(third)
    assert _months(ticks.tick()) == set()
    requested = Counter(k for t in (first, second, third) for k in _assets(t, None))
    assert requested == Counter(ALL_MONTHS)  # every table once


def test_a_month_with_no_neighbour_to_rebuild_refreshes_every_table_on_the_next_tick() -> None:
    ticks = Ticks()
    ticks.tick()
    ticks.materialize(MONTH_KEYS, OCT)
    first = ticks.tick()
    assert _assets(first, None) == ALL_MONTHS
    ticks.run(first)
    assert _months(ticks.tick()) == set()
    ticks.materialize(MONTH_KEYS, OCT)  # October again (late rows): no other month is built
    again = ticks.tick()
    assert _months(again) == {None} and _assets(again, None) == ALL_MONTHS


def test_a_table_missing_at_the_first_tick_waits_for_a_month_to_change() -> None:
    """`missing().newly_true()` fires for a table that goes missing after the sensor's first
    evaluation, not for one already missing then: that one waits for an upstream month."""
    ticks = Ticks()
    ticks.materialize(MONTH_KEYS, OCT)
    assert _assets(ticks.tick(), None) == set()
    assert _assets(ticks.tick(), None) == set()
    ticks.materialize(MONTH_KEYS, OCT)
    assert _assets(ticks.tick(), None) == ALL_MONTHS


def test_the_tables_wait_for_a_rebuild_requested_ticks_later(readers: set[dg.AssetKey]) -> None:
    """October's own run is in progress when November lands, so its rebuild is requested only
    once that run ends (here: fails), ticks later; the tables that read it wait until then and
    run once, after it."""
    from dagster._core.storage.dagster_run import DagsterRunStatus

    ticks = Ticks()
    ticks.tick()
    ticks.materialize(MONTH_KEYS, OCT)
    ticks.run(ticks.tick())
    ticks.tick()
    job = ticks.repo.get_job("monthly_refresh")
    october_run = ticks.instance.create_run_for_job(
        job,
        run_config={},
        tags={"dagster/partition": OCT},
        status=DagsterRunStatus.STARTED,
        asset_selection=frozenset(MONTH_KEYS),
    )
    ticks.materialize(MONTH_KEYS, NOV)
    first = ticks.tick()
    assert _assets(first, OCT) == set()  # October's run is in progress
    assert not _assets(first, None) & readers
    ticks.run(first)
    ticks.instance.report_run_failed(october_run)
    second = ticks.tick()
    assert _assets(second, OCT) == REBUILT
    assert not _assets(second, None) & readers  # before the fix: all six, beside the rebuild
    ticks.run(second)
    third = ticks.tick()
    assert _assets(third, None) & readers == readers
    ticks.run(third)
    assert not _assets(ticks.tick(), None) & readers


def test_the_rebuilt_months_are_those_of_the_neighbour_condition() -> None:
    """The tables over all months wait on exactly the assets ON_NEIGHBOUR_CHANGE rebuilds."""
    from cip_pipeline.assets.common import ON_NEIGHBOUR_CHANGE, REBUILT_ON_NEIGHBOUR_CHANGE

    graph = definitions.build_definitions().resolve_asset_graph()
    rebuilt = {
        key
        for key in graph.get_all_asset_keys()
        if graph.get(key).automation_condition == ON_NEIGHBOUR_CHANGE
    }
    assert rebuilt == set(REBUILT_ON_NEIGHBOUR_CHANGE)
