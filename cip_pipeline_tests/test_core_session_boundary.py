"""Sessions that cross a month boundary, on crafted files: counted once, in the month they
began, with all their events, whichever order the months arrive in."""

from __future__ import annotations

import io
import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter

from cip_pipeline import definitions
from cip_pipeline.assets import analytics, core
from cip_pipeline.automation import ALL_MONTHS_JOB, MONTHLY_JOB
from cip_pipeline.resources import WarehouseResource
from cip_pipeline.runner import execute, months_to_derive, run_months, run_pipeline
from cip_pipeline_tests.warehouse_sample import check_problems, read_warehouse, run_sample

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
PHONE = "1002,2053013555631882655,electronics.smartphone,apple"
WASHER = "1003,2053013563810775923,appliances.kitchen.washer,lg"
TV = "1004,2053013554658804075,electronics.video.tv,samsung"
PLAIN = "1005,2053013552226107603,,"
A = "aaaaaaaa-0000-4000-8000-000000000001"  # Oct 31 23:50 -> Nov 1 00:10
B = "bbbbbbbb-0000-4000-8000-000000000002"  # October only
F = "ffffffff-0000-4000-8000-000000000003"  # Oct 31 23:00 -> Nov 3, gaps of 19-21 h
G = "99999999-0000-4000-8000-000000000004"  # November only
H = "12345678-0000-4000-8000-000000000005"  # one second either side of midnight
# Oct 30 12:00 -> Nov 1 06:00: begins in a span before October's last (one day, Oct 31) and
# reaches past it into November
J = "abcdef01-0000-4000-8000-000000000006"
# October's checks that read November run once November is rebuilt too.
ACROSS = "2019-10 checks across months"

OCTOBER = [
    f"2019-10-10 10:00:00 UTC,view,{PLAIN},10.00,1,{B}",
    f"2019-10-10 10:01:00 UTC,cart,{PLAIN},10.00,1,{B}",
    f"2019-10-10 10:02:00 UTC,purchase,{PLAIN},10.00,1,{B}",
    f"2019-10-15 12:00:00 UTC,view,{TV},300.00,4,",
    f"2019-10-30 12:00:00 UTC,view,{TV},300.00,7,{J}",
    f"2019-10-31 08:00:00 UTC,view,{PHONE},250.00,7,{J}",
    f"2019-10-31 23:00:00 UTC,view,{TV},300.00,3,{F}",
    f"2019-10-31 23:50:00 UTC,view,{PHONE},250.00,2,{A}",
    f"2019-10-31 23:55:00 UTC,cart,{PHONE},250.00,2,{A}",
    f"2019-10-31 23:59:59 UTC,view,{WASHER},400.00,6,{H}",
]
NOVEMBER = [
    f"2019-11-01 00:00:00 UTC,view,{WASHER},400.00,6,{H}",
    f"2019-11-01 00:05:00 UTC,purchase,{PHONE},250.00,2,{A}",
    f"2019-11-01 00:10:00 UTC,view,{WASHER},400.00,2,{A}",
    f"2019-11-01 06:00:00 UTC,cart,{PHONE},250.00,7,{J}",
    f"2019-11-01 20:00:00 UTC,view,{TV},300.00,3,{F}",
    f"2019-11-02 15:00:00 UTC,view,{PHONE},250.00,3,{F}",
    f"2019-11-03 10:00:00 UTC,cart,{PHONE},250.00,3,{F}",
    f"2019-11-05 09:00:00 UTC,view,{PLAIN},10.00,5,{G}",
    f"2019-11-05 09:01:00 UTC,cart,{PLAIN},10.00,5,{G}",
    f"2019-11-20 08:00:00 UTC,purchase,{TV},300.00,4,",
]


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2019-Oct.csv").write_text("\n".join([HEADER, *OCTOBER]) + "\n")
    (raw / "2019-Nov.csv").write_text("\n".join([HEADER, *NOVEMBER]) + "\n")
    return tmp_path


def _sessions(root: Path) -> dict[str, dict]:
    frame = read_warehouse(
        root,
        "SELECT * EXCLUDE (user_session), user_session::VARCHAR AS user_session, "
        "strftime(date_trunc('month', start_time), '%Y-%m') AS month FROM core.fact_sessions",
    )
    assert frame["user_session"].n_unique() == frame.height, "a session appears twice"
    return {row["user_session"]: row for row in frame.iter_rows(named=True)}


def _assert_complete(sessions: dict[str, dict]) -> None:
    assert {k: s["month"] for k, s in sessions.items()} == {
        A: "2019-10",
        B: "2019-10",
        F: "2019-10",
        H: "2019-10",
        J: "2019-10",
        G: "2019-11",
    }
    a = sessions[A]
    assert (a["events"], a["views"], a["carts"], a["purchases"]) == (4, 2, 1, 1)
    assert a["revenue"] == 250.0 and a["has_purchase"] and not a["cart_abandoned"]
    assert a["distinct_products"] == 2 and a["main_category"] == "electronics"
    assert str(a["start_time"]) == "2019-10-31 23:50:00"
    assert str(a["end_time"]) == "2019-11-01 00:10:00"
    assert a["duration_seconds"] == 20 * 60 and a["user_id"] == 2
    f = sessions[F]
    assert f["events"] == 4 and str(f["end_time"]) == "2019-11-03 10:00:00"
    assert f["cart_abandoned"]
    assert sessions[H]["events"] == 2
    j = sessions[J]
    assert (j["events"], j["carts"], str(j["end_time"])) == (3, 1, "2019-11-01 06:00:00")
    assert sessions[G]["events"] == 2 and sessions[G]["main_category"] is None


def test_a_crossing_session_is_counted_once_with_all_its_events(crafted: Path) -> None:
    _, summaries = run_sample(crafted, ["2019-10", "2019-11"])
    assert check_problems(summaries) == []
    _assert_complete(_sessions(crafted))

    kpis = read_warehouse(crafted, "SELECT * FROM core.fact_daily_kpis ORDER BY day")
    by_day = {str(row["day"]): row for row in kpis.iter_rows(named=True)}
    # Events count on their own day (A's purchase on Nov 1, null sessions included); sessions
    # and conversion on the day they began (A converts on Oct 31).
    assert by_day["2019-11-01"]["purchases"] == 1 and by_day["2019-11-01"]["sessions"] == 0
    assert by_day["2019-10-31"]["sessions"] == 3
    assert by_day["2019-10-31"]["converting_sessions"] == 1
    assert by_day["2019-11-20"]["purchases"] == 1 and by_day["2019-11-20"]["revenue"] == 300.0
    assert kpis["events"].sum() == len(OCTOBER) + len(NOVEMBER)
    users = read_warehouse(crafted, "SELECT user_id, sessions FROM core.dim_users ORDER BY 1")
    assert dict(users.iter_rows()) == {1: 1, 2: 1, 3: 1, 4: 0, 5: 1, 6: 1, 7: 1}


def test_a_month_loaded_later_is_detected_and_fixed_by_rederiving(crafted: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    _, summaries = run_sample(crafted, ["2019-10"], instance)
    assert check_problems(summaries) == []
    assert _sessions(crafted)[A]["events"] == 2  # November not there yet

    # November arrives; a naive refresh builds only November's partitions.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(crafted))
        defs = definitions.build_definitions()
    november = execute(defs, MONTHLY_JOB, instance, "2019-11", "2019-11-01")
    assert november.success
    # A, F and H went on into November: those events are now in no session, and it shows.
    assert november.check_problems == ["core/fact_sessions:reconciles_with_events (error)"]
    assert G in _sessions(crafted) and _sessions(crafted)[A]["events"] == 2

    # Deriving October again (as `cip run` does by itself) makes both months whole.
    assert months_to_derive(["2019-11"], ["2019-10"]) == ["2019-10", "2019-11"]
    again = [
        execute(defs, MONTHLY_JOB, instance, m, f"{m}-01", definitions.DERIVED_ASSETS)
        for m in ("2019-10", "2019-11")
    ]
    assert check_problems(again) == []
    _assert_complete(_sessions(crafted))


def test_cip_run_rederives_the_month_before_a_newly_loaded_one(crafted: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(crafted))
        defs = definitions.build_definitions()
    first = run_months(defs, instance, ["2019-10"])
    second = run_months(defs, instance, ["2019-11"])
    assert [s.label for s in second] == ["2019-11", "2019-10 derived", "2019-11 derived", ACROSS]
    # October's three session checks ran once, after November's sessions were rebuilt.
    assert (second[1].checks_passed, second[-1].checks_passed, second[-1].steps) == (2, 3, [])
    assert check_problems([*first, *second]) == []
    _assert_complete(_sessions(crafted))


def test_cip_run_skips_a_neighbour_whose_boundary_is_unchanged(crafted: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(crafted))
        defs = definitions.build_definitions()

    def load(month: str) -> tuple[list[str], list[str]]:
        """The runs made, and the neighbours skipped."""
        out = io.StringIO()
        summaries = run_months(defs, instance, [month], out)
        assert check_problems(summaries) == []
        skipped = [line for line in out.getvalue().splitlines() if "[skipped" in line]
        return [s.label for s in summaries], [line.split("  [")[0] for line in skipped]

    assert load("2019-10") == (["2019-10", "2019-10 derived"], [])
    assert load("2019-11") == (["2019-11", "2019-10 derived", "2019-11 derived", ACROSS], [])
    # The same files again, then a change far from the boundary: nothing the neighbour's
    # sessions read has moved.
    assert load("2019-11") == (["2019-11", "2019-11 derived"], ["2019-10 derived"])
    assert load("2019-10") == (["2019-10", "2019-10 derived"], ["2019-11 derived"])
    november = crafted / "raw" / "2019-Nov.csv"
    november.write_text(november.read_text().replace("2019-11-20 08:00:00", "2019-11-21 08:00:00"))
    assert load("2019-11") == (["2019-11", "2019-11 derived"], ["2019-10 derived"])
    _assert_complete(_sessions(crafted))

    # October's sessions were built again but its KPIs not (a re-derive cut short): the next
    # reload re-derives October although its boundary is unchanged.
    october_sessions = execute(defs, MONTHLY_JOB, instance, "x", "2019-10-01", [core.fact_sessions])
    assert october_sessions.success
    assert load("2019-11") == (["2019-11", "2019-10 derived", "2019-11 derived", ACROSS], [])
    assert load("2019-11") == (["2019-11", "2019-11 derived"], ["2019-10 derived"])

    # The code that builds sessions changes: the neighbour is rebuilt, its data unchanged.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "SESSION_STATEMENTS", (*core.SESSION_STATEMENTS, "sessions_totals"))
        assert load("2019-11") == (["2019-11", "2019-10 derived", "2019-11 derived", ACROSS], [])

    # A's purchase on November 1 changes price: October's row of A follows it.
    november.write_text(november.read_text().replace(f"250.00,2,{A}", f"199.00,2,{A}"))
    assert load("2019-11") == (["2019-11", "2019-10 derived", "2019-11 derived", ACROSS], [])
    assert _sessions(crafted)[A]["revenue"] == 199.0

    # H's October second disappears: H now begins in November, which must take it in.
    october = crafted / "raw" / "2019-Oct.csv"
    october.write_text(
        "".join(line for line in october.read_text().splitlines(True) if H not in line)
    )
    assert load("2019-10") == (["2019-10", "2019-10 derived", "2019-11 derived", ACROSS], [])
    assert _sessions(crafted)[H]["month"] == "2019-11"


def _user_days(rows: list[str]) -> set[tuple[str, str]]:
    """(day, user_id) of raw rows, counted apart from the warehouse."""
    return {(row[:10], row.split(",")[7]) for row in rows}


def _month_counts(root: Path, table: str, column: str) -> dict[str, int]:
    frame = read_warehouse(
        root,
        f"SELECT strftime({column}, '%Y-%m') AS month, count(*) AS n FROM {table} GROUP BY 1",
    )
    return dict(frame.iter_rows())


@pytest.mark.parametrize("state", ["never derived", "sessions and KPIs only", "reloaded since"])
def test_a_neighbour_loaded_but_not_derived_since_is_derived_whole(
    crafted: Path, state: str
) -> None:
    """A first `cip run` cut short after its loads leaves November loaded, not derived; an
    older `cip run` then gave it only what reads across the boundary. `cip run --months
    2019-10` derives it whole, and later runs may skip it again."""
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(crafted))
        defs = definitions.build_definitions()
    november_rows = list(NOVEMBER)
    if state == "reloaded since":
        assert check_problems(run_months(defs, instance, ["2019-10", "2019-11"])) == []
        # A row far from the boundary, loaded by a run cut short before deriving.
        november_rows.append(f"2019-11-25 10:00:00 UTC,view,{PLAIN},10.00,8,{B[:-1]}9")
        november = crafted / "raw" / "2019-Nov.csv"
        november.write_text("\n".join([HEADER, *november_rows]) + "\n")
        load = [("2019-11", "2019-11-01")]
    else:
        load = [("2019-10", "2019-10-01"), ("2019-11", "2019-11-01")]
    for label, partition in load:
        loaded = execute(defs, MONTHLY_JOB, instance, label, partition, definitions.LOAD_ASSETS)
        assert loaded.success
    if state == "sessions and KPIs only":
        # What an earlier `cip run --months 2019-10` made of it.
        for partition, assets in (
            ("2019-10-01", definitions.DERIVED_ASSETS),
            ("2019-11-01", core.NEIGHBOUR_ASSETS),
        ):
            assert execute(defs, MONTHLY_JOB, instance, "x", partition, assets).success
        assert _month_counts(crafted, "core.fact_daily_kpis", "day") == {"2019-10": 4}
    warehouse = defs.resources["warehouse"]
    assert isinstance(warehouse, WarehouseResource)
    assert not core.neighbours_unchanged(instance, warehouse, "2019-11-01")

    summaries = run_months(defs, instance, ["2019-10"])
    assert [s.label for s in summaries] == ["2019-10", "2019-10 derived", "2019-11 derived", ACROSS]
    built = {step.asset for step in summaries[2].steps}
    assert built == {k.to_user_string() for a in definitions.DERIVED_ASSETS for k in a.keys}
    over_all_months = [*core.UNPARTITIONED_ASSETS, *analytics.UNPARTITIONED_ASSETS]
    summaries.append(execute(defs, ALL_MONTHS_JOB, instance, "all", assets=over_all_months))
    assert check_problems(summaries) == []

    expected_days = {"2019-10": _user_days(OCTOBER), "2019-11": _user_days(november_rows)}
    assert _month_counts(crafted, "core.fact_user_days", "day") == {
        m: len(days) for m, days in expected_days.items()
    }
    assert _month_counts(crafted, "core.fact_daily_kpis", "day") == {
        m: len({day for day, _ in days}) for m, days in expected_days.items()
    }
    users = read_warehouse(crafted, "SELECT count(*) AS n, sum(events) AS e FROM core.dim_users")
    all_rows = [*OCTOBER, *november_rows]
    assert users.row(0) == (len({r.split(",")[7] for r in all_rows}), len(all_rows))

    # Derived after its load now: the boundary is unchanged, November is skipped.
    assert core.neighbours_unchanged(instance, warehouse, "2019-11-01")
    out = io.StringIO()
    again = run_months(defs, instance, ["2019-10"], out)
    assert [s.label for s in again] == ["2019-10", "2019-10 derived"]
    assert "2019-11 derived  [skipped" in out.getvalue()


def _last_check_result(instance: dg.DagsterInstance, key: dg.AssetCheckKey, partition: str) -> bool:
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    assert record.evaluation is not None
    return record.evaluation.passed


def test_a_late_row_moving_a_session_across_the_boundary_passes_every_check(
    crafted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An October row arrives for a session that began on November 1: the session becomes
    October's. October is derived before November's row of it is gone; the checks that read
    across months judge the warehouse once both are rebuilt, and `cip run` exits 0."""
    monkeypatch.setenv("CIP_DATA_DIR", str(crafted))
    monkeypatch.setenv("CIP_AUTOMATION", "off")
    monkeypatch.setattr(os, "environ", dict(os.environ))  # run_pipeline sets DAGSTER_HOME
    k = "cccccccc-0000-4000-8000-000000000007"
    november = crafted / "raw" / "2019-Nov.csv"
    with november.open("a") as file:
        file.write(f"2019-11-01 00:30:00 UTC,view,{TV},300.00,8,{k}\n")
    first = io.StringIO()
    assert run_pipeline(["2019-10", "2019-11"], first) == 0, first.getvalue()
    assert _sessions(crafted)[k]["month"] == "2019-11"

    with (crafted / "raw" / "2019-Oct.csv").open("a") as file:
        file.write(f"2019-10-31 23:40:00 UTC,view,{PHONE},250.00,8,{k}\n")
    out = io.StringIO()
    assert run_pipeline(["2019-10"], out) == 0, out.getvalue()
    assert "ERROR severity" not in out.getvalue() and "(error)" not in out.getvalue()
    moved = _sessions(crafted)[k]  # once only: _sessions asserts it
    assert (moved["month"], moved["events"], str(moved["start_time"])) == (
        "2019-10",
        2,
        "2019-10-31 23:40:00",
    )
    # What Dagster recorded last for either month is the final warehouse's result.
    with dg.DagsterInstance.from_config(str(crafted / "dagster_home")) as instance:
        for name in ("user_session_unique", "values_consistent", "reconciles_with_events"):
            key = dg.AssetCheckKey(core.FACT_SESSIONS, name)
            for partition in ("2019-10-01", "2019-11-01"):
                assert _last_check_result(instance, key, partition), (name, partition)
