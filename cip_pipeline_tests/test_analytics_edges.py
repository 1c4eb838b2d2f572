"""analytics/* on small hand-made event sets whose figures are worked out by hand: no buyer at
all, a session that buys without a cart, data ending in the middle of a week; and the
dashboard's fixed sample of buyers."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from cip_pipeline import sql
from cip_pipeline.assets.analytics import cohort_retention_checks, rfm_segments_query
from cip_pipeline.assets.ml import snapshot_selects
from cip_pipeline.ml import propensity as prop
from cip_pipeline.resources import WarehouseResource
from cip_pipeline_tests import warehouse_oracle as oracle
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    check_problems,
    hand_made_events,
    read_warehouse,
    run_sample,
)

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
PHONE = "1002,2053013555631882655,electronics.smartphone,apple,250.00"


def _event(day: int, minute: int, kind: str, user: int) -> str:
    """An October 2019 event of `user`, in the user's session of that day."""
    return f"2019-10-{day:02d} 10:{minute:02d}:00 UTC,{kind},{PHONE},{user},{_session(user, day)}"


def _session(user: int, day: int) -> str:
    return f"{user:08d}-{day:04d}-4000-8000-000000000000"


def _visit(user: int, day: int, *kinds: str) -> list[str]:
    return [_event(day, i, kind, user) for i, kind in enumerate(kinds)]


def _build(root: Path, events: list[str]) -> WarehouseSample:
    raw = root / "raw"
    raw.mkdir()
    (raw / "2019-Oct.csv").write_text("\n".join([HEADER, *events]) + "\n")
    instance, summaries = run_sample(root, ["2019-10"])
    return WarehouseSample(root, instance, summaries)


# Weeks begin on Monday: Sep 30, Oct 7, Oct 14. The data ends on Thursday Oct 17, so the
# week of Oct 14 is seen for four days of seven. Every day from Oct 1 has an event (a week is
# complete only when each of its days has data).
MID_WEEK = [
    # cohort of Sep 30: users 1, 2, 3; users 1 and 2 come back in the week of Oct 7
    *_visit(1, 1, "view"),
    *_visit(1, 2, "view", "cart", "purchase"),
    *_visit(1, 9, "view", "cart", "purchase"),
    *_visit(2, 3, "view", "purchase"),  # bought without a cart
    *_visit(2, 10, "view"),
    *_visit(3, 5, "view"),
    # cohort of Oct 7: users 4..7; only user 4 is seen in the first days of Oct 14
    *_visit(4, 8, "view", "cart", "purchase"),
    *_visit(4, 15, "view", "purchase"),
    *_visit(5, 9, "view", "purchase"),
    *_visit(6, 11, "view", "cart", "purchase"),
    *_visit(7, 12, "view", "cart"),
    # cohort of Oct 14: user 8, on the last day of the data
    *_visit(8, 17, "view"),
    # the days no one above visits: users already seen in those weeks look again
    *_visit(3, 4, "view"),
    *_visit(3, 6, "view"),
    *_visit(5, 7, "view"),
    *_visit(7, 13, "view"),
    *_visit(4, 14, "view"),
    *_visit(4, 16, "view"),
]


@pytest.fixture(scope="module")
def mid_week(tmp_path_factory: pytest.TempPathFactory) -> WarehouseSample:
    return _build(tmp_path_factory.mktemp("mid_week"), MID_WEEK)


@pytest.fixture(scope="module")
def no_buyers(tmp_path_factory: pytest.TempPathFactory) -> WarehouseSample:
    events = [*_visit(1, 1, "view", "cart"), *_visit(2, 2, "view"), *_visit(1, 3, "view")]
    return _build(tmp_path_factory.mktemp("no_buyers"), events)


def test_no_buyers_passes_the_checks_with_shares_left_empty(no_buyers: WarehouseSample) -> None:
    assert all(s.success for s in no_buyers.summaries)
    assert check_problems(no_buyers.summaries) == []
    rfm = no_buyers.materialization(["analytics", "rfm_segments"])
    assert rfm["buyers"].value == 0
    assert rfm["revenue"].value == 0.0
    assert rfm["champions_share"].value is None
    assert rfm["lost_share"].value is None
    summary = no_buyers.materialization(["analytics", "rfm_segment_summary"])
    shares = summary["segment_shares"].value
    assert len(shares) == 8 and all(share is None for share in shares.values())
    table = no_buyers.table("SELECT users, user_share, revenue FROM analytics.rfm_segment_summary")
    assert table.height == 8
    assert table["users"].to_list() == [0] * 8
    assert table["user_share"].null_count() == 8
    assert table["revenue"].to_list() == [0.0] * 8


def test_funnel_rate_counts_sessions_with_a_view_a_cart_and_a_purchase(
    mid_week: WarehouseSample,
) -> None:
    assert check_problems(mid_week.summaries) == []
    meta = mid_week.materialization(["analytics", "funnel"])
    # 18 sessions (one per user and day); 7 with a purchase, of which 4 also viewed and carted
    # (users 2, 4 and 5 bought without a cart on Oct 3, 15 and 9)
    assert meta["sessions"].value == 18
    assert meta["session_view_cart_purchase_rate"].value == pytest.approx(4 / 18, rel=1e-12)
    assert "session_conversion_rate" not in meta
    sessions = mid_week.materialization(["core", "fact_sessions"], "2019-10-01")
    assert sessions["session_conversion_rate"].value == pytest.approx(7 / 18, rel=1e-12)


def test_week_1_retention_leaves_out_a_week_1_seen_in_part(mid_week: WarehouseSample) -> None:
    meta = mid_week.materialization(["analytics", "cohort_retention"])
    # Only the cohort of Sep 30 has its week 1 (Oct 7-13) wholly in the data: users 1 and 2 of
    # 1, 2, 3 came back; of its buyers 1 and 2, user 1 bought again. Counting the cohort of
    # Oct 7 too would give 3 / 7 and 2 / 5.
    assert meta["week_1_retention"].value == pytest.approx(2 / 3, rel=1e-12)
    assert meta["week_1_repeat_purchase_rate"].value == pytest.approx(1 / 2, rel=1e-12)
    grid = read_warehouse(
        mid_week.root,
        "SELECT cohort_kind, cohort_week, weeks_since, active_users, week_complete "
        "FROM analytics.cohort_retention",
    )
    actual = {(k, w, n): (a, c) for k, w, n, a, c in grid.iter_rows()}
    sep30, oct7, oct14 = date(2019, 9, 30), date(2019, 10, 7), date(2019, 10, 14)
    # Complete: all seven days in Oct 1..17. The week of Sep 30 misses its Monday.
    assert actual == {
        ("activity", sep30, 0): (3, False),
        ("activity", sep30, 1): (2, True),
        ("activity", sep30, 2): (0, False),
        ("activity", oct7, 0): (4, True),
        ("activity", oct7, 1): (1, False),
        ("activity", oct14, 0): (1, False),
        ("purchase", sep30, 0): (2, False),
        ("purchase", sep30, 1): (1, True),
        ("purchase", sep30, 2): (0, False),
        ("purchase", oct7, 0): (3, True),
        ("purchase", oct7, 1): (1, False),
    }


def _cohorts(user_days: list[tuple[int, date, int]]) -> tuple[dict, dict]:
    """cohort_retention's SQL and headline over hand-made user-days (user, day, purchases):
    (kind, cohort week, weeks since) -> (active users, week_complete), and the headline."""
    con = duckdb.connect()
    con.execute("CREATE TABLE user_days (user_id INTEGER, day DATE, purchases BIGINT)")
    con.executemany("INSERT INTO user_days VALUES (?, ?, ?)", user_days)
    query = sql.statement("analytics", "cohort_retention", user_days="user_days")
    con.execute(f"CREATE TABLE written AS {query}")
    rows = con.execute(
        "SELECT cohort_kind, cohort_week, weeks_since, active_users, week_complete FROM written"
    ).fetchall()
    cursor = con.execute(sql.statement("analytics", "cohort_headline"))
    headline = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))
    con.close()
    return {(k, w, n): (a, c) for k, w, n, a, c in rows}, headline


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def test_weeks_without_data_are_not_complete_and_stay_out_of_the_headline() -> None:
    """October and Dec 2-15 loaded, November not: its weeks hold no data, and the week of
    Oct 28 lacks Nov 1-3. Neither is complete, so the cohort of Oct 28, whose week 1 (Nov 4)
    has no data, is not counted as retaining no one. They were complete by the data's first
    and last day, which gave week-1 retention 4/7 and repeat purchase 1/2."""
    oct1, dec2, dec15 = date(2019, 10, 1), date(2019, 12, 2), date(2019, 12, 15)
    user_days = [
        *[(1, d, int(d == oct1)) for d in _days(oct1, date(2019, 10, 31))],  # every October day
        *[(7, d, 0) for d in _days(dec2, dec15)],  # every day of Dec 2-15
        (2, date(2019, 10, 8), 1),
        (2, date(2019, 10, 15), 1),  # back, and bought again, in week 1
        (3, date(2019, 10, 9), 0),
        (4, date(2019, 10, 28), 1),
        (5, date(2019, 10, 28), 0),
        (6, dec2, 1),
        (6, date(2019, 12, 10), 1),  # back, and bought again, in week 1
    ]
    cells, headline = _cohorts(user_days)
    sep30, oct7, oct28 = date(2019, 9, 30), date(2019, 10, 7), date(2019, 10, 28)
    # cohort of Sep 30 (user 1): weeks 1-3 (Oct 7-27) and 9-10 (Dec 2-15) are complete; week 0
    # misses Sep 30, week 4 (Oct 28) misses Nov 1-3, weeks 5-8 (Nov 4 - Dec 1) have no data
    assert [cells["activity", sep30, k] for k in range(11)] == [
        (1, False),
        (1, True),
        (1, True),
        (1, True),
        (1, False),
        (0, False),
        (0, False),
        (0, False),
        (0, False),
        (0, True),
        (0, True),
    ]
    assert cells["activity", oct7, 1] == (1, True)  # user 2 of 2, 3 back on Oct 15
    assert cells["activity", oct28, 1] == (0, False)
    assert cells["purchase", oct28, 1] == (0, False)
    # week 1 complete: Sep 30 (1 of 1 back), Oct 7 (user 2 of 2, 3), Dec 2 (users 6 and 7)
    assert headline["week_1_retention"] == pytest.approx(4 / 5, rel=1e-12)
    # buyers: Sep 30 (user 1, not again), Oct 7 (user 2, again), Dec 2 (user 6, again)
    assert headline["week_1_repeat_purchase_rate"] == pytest.approx(2 / 3, rel=1e-12)


def _rfm(purchases: list[tuple[str, float, int]]) -> dict[int, tuple]:
    """rfm_segments' SQL over hand-made purchases (time, price, user) and one view by user 99
    on Oct 1: user -> (recency_days, frequency, monetary, rfm_code, segment). The Polars
    oracle must give the same."""
    rows = [("2019-10-01 09:00:00", "view", 1.0, 99)]
    rows += [(t, "purchase", price, user) for t, price, user in purchases]
    con = hand_made_events()
    con.executemany("INSERT INTO core.events VALUES (?, ?, 1, 1, NULL, NULL, ?, ?, uuid())", rows)
    query = rfm_segments_query("core.events")
    got = {
        user: (recency, frequency, float(monetary), code, segment)
        for user, recency, frequency, monetary, code, segment in con.execute(
            f"SELECT user_id, recency_days, frequency, monetary, rfm_code, segment FROM ({query})"
        ).fetchall()
    }
    con.close()
    events = pl.DataFrame(
        rows, schema=["event_time", "event_type", "price", "user_id"], orient="row"
    ).with_columns(pl.col("event_time").str.to_datetime())
    expected = oracle.rfm_segments(events).with_columns(
        pl.format("{}{}{}", "r_score", "f_score", "m_score").alias("rfm_code")
    )
    assert {
        r[0]: r[1:]
        for r in expected.select(
            "user_id", "recency_days", "frequency", "monetary", "rfm_code", "segment"
        ).iter_rows()
    } == got
    return got


def test_one_buyer_on_the_last_day_is_a_new_customer() -> None:
    """Nothing to rank against: R and M are the best there is (5), F is 1 for one purchase
    day. The score counted buyers strictly worse: 0 of 1, so 111, 'Lost'."""
    assert _rfm([("2019-10-31 10:00:00", 5.0, 1)]) == {1: (0, 1, 5.0, "515", "New Customers")}


def test_buyers_all_tied_share_the_best_scores() -> None:
    got = _rfm([("2019-10-31 10:00:00", 5.0, u) for u in (1, 2, 3)])
    assert got == {u: (0, 1, 5.0, "515", "New Customers") for u in (1, 2, 3)}


def test_a_tie_at_the_best_value_holding_over_a_fifth_of_buyers_scores_5() -> None:
    """Ten one-day buyers. Recency: 4 bought on the last day (R 5; by the share strictly
    worse, 6/10, it was 4), 3 ten days before (3/10 worse: 2), 3 twenty days before (1).
    Spend: 30 by 3 buyers (M 5, was 4), then 20 (6/10 worse: 4), 15 (5/10: 3), 12 (4/10:
    3), 9 (3/10: 2), 6 (2/10: 2), 3 and 1 (1)."""
    last, ten, twenty = "2019-10-31 10:00:00", "2019-10-21 10:00:00", "2019-10-11 10:00:00"
    purchases = [
        (last, 30.0, 1),
        (last, 30.0, 2),
        (last, 20.0, 3),
        (last, 15.0, 4),
        (ten, 30.0, 5),
        (ten, 12.0, 6),
        (ten, 9.0, 7),
        (twenty, 6.0, 8),
        (twenty, 3.0, 9),
        (twenty, 1.0, 10),
    ]
    got = _rfm(purchases)
    assert {u: (code, segment) for u, (*_, code, segment) in got.items()} == {
        1: ("515", "New Customers"),
        2: ("515", "New Customers"),
        3: ("514", "New Customers"),
        4: ("513", "New Customers"),
        5: ("215", "At Risk"),
        6: ("213", "Hibernating"),
        7: ("212", "Hibernating"),
        8: ("112", "Lost"),
        9: ("111", "Lost"),
        10: ("111", "Lost"),
    }


def test_f_1_is_exactly_one_purchase_day() -> None:
    """New Customers bought on one day only, however few buyers did. All ten bought on the
    last day (R 5). Buyer 1: one day, 5.00 (F 1, M 5). Buyers 2-9: two days, 2.00; as one
    buyer in ten is strictly worse they scored F 1, 'New Customers': now 2, and M 1 (the
    least spent). Buyer 10: three days, 3.00 (F 5; M: 8 of 10 worse, 5)."""
    purchases = [("2019-10-31 10:00:00", 5.0, 1)]
    for u in range(2, 10):
        purchases += [("2019-10-30 10:00:00", 1.0, u), ("2019-10-31 09:00:00", 1.0, u)]
    purchases += [(f"2019-10-{d} 10:00:00", 1.0, 10) for d in (29, 30, 31)]
    got = _rfm(purchases)
    assert got[1] == (0, 1, 5.0, "515", "New Customers")
    assert all(got[u] == (0, 2, 2.0, "521", "Regular") for u in range(2, 10))
    assert got[10] == (0, 3, 3.0, "555", "Champions")
    # With no one-day buyer, the most frequent (two days) score F 5, not 1 ('Lost' before).
    got = _rfm([(f"2019-10-{d} 10:00:00", 1.0, u) for u in (1, 2) for d in (30, 31)])
    assert got == {u: (0, 2, 2.0, "555", "Champions") for u in (1, 2)}


def test_ml_rfm_score_scores_ties_as_the_segments_do(mid_week: WarehouseSample) -> None:
    """The mid-week buyers at the end of the data (Oct 17), each purchase 250.00:
    user 1 (last bought Oct 9: 8 days; 2 days; 500), 2 (14; 1; 250), 4 (2; 2; 500),
    5 (8; 1; 250), 6 (6; 1; 250). R: 4 is the best (5); 6 has 3 of 5 strictly worse (4);
    1 and 5 one (2); 2 none (1). F and M: users 1 and 4 tie at the best value, 40% of the
    buyers: 5 (it was 4, as 3 of 5 are worse), the rest 1. The propensity features' score
    snapshot (cutoff Oct 18) sums the same scores."""
    segments = mid_week.table(
        "SELECT user_id, rfm_code, segment FROM analytics.rfm_segments ORDER BY user_id"
    )
    assert segments.rows() == [
        (1, "255", "Cant Lose Them"),
        (2, "111", "Lost"),
        (4, "555", "Champions"),
        (5, "211", "Hibernating"),
        (6, "411", "New Customers"),
    ]
    plan = prop.plan_snapshots(datetime(2019, 10, 1), datetime(2019, 10, 17, 10))
    assert plan.score == datetime(2019, 10, 18)
    select = snapshot_selects(plan)["2019-10-18 (score)"]
    features = mid_week.table(f"SELECT user_id, rfm_score FROM ({select}) ORDER BY user_id")
    assert features.rows() == [(1, 12), (2, 3), (3, 0), (4, 15), (5, 4), (6, 6), (7, 0), (8, 0)]


def _landscape(user_ids: list[int]) -> set[int]:
    """The dashboard's sample over a rfm_segments table holding `user_ids` in that order."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA analytics")
    con.execute(
        "CREATE TABLE analytics.rfm_segments (user_id INTEGER, recency_days BIGINT, "
        "frequency BIGINT, monetary DECIMAL(18, 2), segment VARCHAR, rfm_code VARCHAR)"
    )
    con.executemany(
        "INSERT INTO analytics.rfm_segments VALUES (?, 1, 1, 10.00, 'Regular', '333')",
        [(u,) for u in user_ids],
    )
    rows = con.execute(sql.statement("dashboard", "rfm_landscape")).fetchall()
    con.close()
    assert len(rows) == len({r[0] for r in rows})
    return {r[0] for r in rows}


def test_rfm_landscape_sample_does_not_depend_on_row_order() -> None:
    users = list(range(1, 10_001))
    shuffled = sorted(users, key=lambda u: (u * 7919) % 10_007)
    expected = set(sorted(users, key=lambda u: ((u * 2654435761) % 2**32, u))[:4000])
    assert _landscape(users) == expected
    assert _landscape(shuffled) == expected
    assert _landscape(users[:150]) == set(users[:150])  # fewer buyers than the sample: all


def test_the_cohort_check_counts_each_cohort_apart(
    mid_week: WarehouseSample, tmp_path: Path
) -> None:
    """A user moved from the cohort of Sep 30 to that of Oct 7 keeps every total and every
    rate in range: only counting each cohort's first days again finds it."""
    db = tmp_path / "cip.duckdb"
    shutil.copy(mid_week.root / "warehouse" / "cip.duckdb", db)
    warehouse = WarehouseResource(path=str(db))

    def results() -> dict[str, dg.AssetCheckResult]:
        return {r.check_name: r for r in cohort_retention_checks(warehouse=warehouse)}

    assert results()["consistent"].passed
    with duckdb.connect(str(db)) as con:
        # the hand-worked cohorts: Sep 30 has users 1, 2, 3 and Oct 7 users 4..7
        sizes = con.execute(
            "SELECT cohort_week, cohort_users FROM analytics.cohort_retention "
            "WHERE cohort_kind = 'activity' AND weeks_since = 0 ORDER BY 1"
        ).fetchall()
        assert sizes == [(date(2019, 9, 30), 3), (date(2019, 10, 7), 4), (date(2019, 10, 14), 1)]
        con.execute(
            "UPDATE analytics.cohort_retention SET cohort_users = cohort_users "
            "+ CASE WHEN cohort_week = DATE '2019-09-30' THEN -1 ELSE 1 END, "
            "active_users = active_users "
            "+ CASE WHEN cohort_week = DATE '2019-09-30' THEN -1 ELSE 1 END "
            "WHERE cohort_kind = 'activity' AND weeks_since = 0 "
            "AND cohort_week IN (DATE '2019-09-30', DATE '2019-10-07')"
        )
    consistent = results()["consistent"]
    assert not consistent.passed
    assert consistent.metadata["cohorts_mismatched"].value == 2
    assert consistent.metadata["rates_out_of_range"].value == 0
