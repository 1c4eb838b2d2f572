"""analytics/* on small hand-made event sets whose figures are worked out by hand: no buyer at
all, a session that buys without a cart, data ending in the middle of a week; and the
dashboard's fixed sample of buyers."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from cip_pipeline import sql
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    check_problems,
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
# week of Oct 14 is seen for four days of seven.
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
    # 12 sessions (one per user and day); 7 with a purchase, of which 4 also viewed and carted
    # (users 2, 4 and 5 bought without a cart on Oct 3, 15 and 9)
    assert meta["sessions"].value == 12
    assert meta["session_view_cart_purchase_rate"].value == pytest.approx(4 / 12, rel=1e-12)
    assert "session_conversion_rate" not in meta
    sessions = mid_week.materialization(["core", "fact_sessions"], "2019-10-01")
    assert sessions["session_conversion_rate"].value == pytest.approx(7 / 12, rel=1e-12)


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
