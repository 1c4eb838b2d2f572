"""analytics/* against an independent Polars computation from the raw CSV files of the same
sample."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cip_pipeline import sql
from cip_pipeline.assets.analytics import rfm_rules, rfm_segments_query
from cip_pipeline.assets.ml import snapshot_selects
from cip_pipeline.generator import generate
from cip_pipeline.ml import propensity as prop
from cip_pipeline_tests import warehouse_oracle as oracle
from cip_pipeline_tests.rees46_stats import read_month
from cip_pipeline_tests.test_ingest_reader import CORPUS
from cip_pipeline_tests.warehouse_sample import (
    WarehouseSample,
    assert_frames_match,
    read_warehouse,
    run_sample,
)


@pytest.fixture(scope="module")
def events(warehouse_sample: WarehouseSample) -> pl.DataFrame:
    return oracle.read_events(warehouse_sample.raw_files)


@pytest.mark.parametrize(
    ("month", "file"), [("2019-10-01", "2019-Oct"), ("2019-11-01", "2019-Nov")]
)
def test_data_profile_equals_the_oracle(
    warehouse_sample: WarehouseSample, month: str, file: str
) -> None:
    raw = read_month(warehouse_sample.root / "raw" / f"{file}.csv")
    month_events = oracle.read_events([warehouse_sample.root / "raw" / f"{file}.csv"])
    expected = oracle.data_profile(month_events, raw.height)
    rows = warehouse_sample.table(
        f"SELECT section, key, metric, value, value_text FROM analytics.data_profile "
        f"WHERE month = '{month}'"
    ).iter_rows()
    actual = {(s, k, m): (t if t is not None else v) for s, k, m, v, t in rows}
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert math.isclose(actual[key], value, rel_tol=1e-6, abs_tol=1e-12), key
        else:
            assert actual[key] == value, key
    meta = warehouse_sample.materialization(["analytics", "data_profile"], month)
    assert meta["rows_loaded"].value == month_events.height
    assert "event_mix" in meta


def test_funnel_equals_the_oracle(warehouse_sample: WarehouseSample, events: pl.DataFrame) -> None:
    actual = warehouse_sample.table("SELECT * FROM analytics.funnel")
    expected = oracle.funnel(oracle.fact_sessions(events))
    assert_frames_match(actual, expected, ["dimension", "key", "step"])
    meta = warehouse_sample.materialization(["analytics", "funnel"])
    overall = expected.filter(pl.col("dimension") == "overall")
    assert meta["session_view_cart_purchase_rate"].value == pytest.approx(
        overall["conversion_from_start"][3], rel=1e-6
    )


def test_cohort_retention_equals_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table("SELECT * FROM analytics.cohort_retention")
    expected = oracle.cohort_retention(events)
    assert_frames_match(actual, expected, ["cohort_kind", "cohort_week", "weeks_since"])
    # The sample starts on Tuesday 2019-10-01: its first cohort is the week of Monday Sep 30.
    assert str(actual["cohort_week"].min()) == "2019-09-30"
    assert actual.filter(pl.col("cohort_kind") == "purchase")["weeks_since"].max() >= 1
    # That week misses its Monday and the last one (from Nov 25) its Sunday: not complete.
    complete = {
        (str(week), since): c
        for kind, week, since, c in actual.select(
            "cohort_kind", "cohort_week", "weeks_since", "week_complete"
        ).iter_rows()
        if kind == "activity"
    }
    assert not complete["2019-09-30", 0] and complete["2019-09-30", 1]
    assert not complete["2019-09-30", 8] and not complete["2019-11-25", 0]
    meta = warehouse_sample.materialization(["analytics", "cohort_retention"])
    for kind, name in (
        ("activity", "week_1_retention"),
        ("purchase", "week_1_repeat_purchase_rate"),
    ):
        week_1 = expected.filter(
            (pl.col("cohort_kind") == kind) & (pl.col("weeks_since") == 1) & pl.col("week_complete")
        )
        want = week_1["active_users"].sum() / week_1["cohort_users"].sum()
        assert meta[name].value == pytest.approx(want, rel=1e-12)


def test_rfm_segments_equal_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table(
        "SELECT * EXCLUDE (r_score, f_score, m_score, rfm_code), r_score::BIGINT AS r_score, "
        "f_score::BIGINT AS f_score, m_score::BIGINT AS m_score FROM analytics.rfm_segments"
    )
    expected = oracle.rfm_segments(events)
    assert_frames_match(actual, expected, ["user_id"])
    assert set(actual["segment"]) >= {"Champions", "Lost", "New Customers"}
    meta = warehouse_sample.materialization(["analytics", "rfm_segments"])
    assert meta["buyers"].value == expected.height
    assert meta["revenue"].value == pytest.approx(expected["monetary"].sum(), rel=1e-9)
    champions = (expected["segment"] == "Champions").mean()
    assert meta["champions_share"].value == pytest.approx(champions, rel=1e-12)


def test_rfm_segment_summary_equals_the_oracle(
    warehouse_sample: WarehouseSample, events: pl.DataFrame
) -> None:
    actual = warehouse_sample.table(
        "SELECT segment, users, user_share, average_spend, revenue, revenue_share "
        "FROM analytics.rfm_segment_summary ORDER BY rule_order"
    )
    expected = oracle.rfm_segment_summary(oracle.rfm_segments(events))
    assert actual["segment"].to_list() == list(oracle.SEGMENTS)
    assert_frames_match(actual, expected, ["segment"])
    assert actual["user_share"].sum() == pytest.approx(1.0, rel=1e-12)
    meta = warehouse_sample.materialization(["analytics", "rfm_segment_summary"])
    shares = meta["segment_shares"].value
    assert shares.keys() == set(oracle.SEGMENTS)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert "| segment |" in meta["segments"].value


def test_rule_table_gives_every_score_exactly_the_documented_segment() -> None:
    """The SQL rule table (first match by priority) against the README's rules in Python,
    for all 125 score combinations."""
    con = duckdb.connect()
    rules = con.sql(rfm_rules()).fetchall()
    for r, f, m in itertools.product(range(1, 6), repeat=3):
        matching = [
            (priority, name)
            for priority, name, r0, r1, f0, f1, m0, m1 in rules
            if r0 <= r <= r1 and f0 <= f <= f1 and m0 <= m <= m1
        ]
        assert matching, (r, f, m)
        assert min(matching)[1] == oracle.segment(r, f, m), (r, f, m)
    assert {name for _, name, *_ in rules} == set(oracle.SEGMENTS)


def test_ml_rfm_score_is_the_sum_of_the_segments_scores_as_of_its_cutoff(
    warehouse_sample: WarehouseSample,
) -> None:
    """Each propensity snapshot's rfm_score (from the user-days before its cutoff) is R + F + M
    of rfm_segments over the events before that cutoff (what experiments/segment_outcomes
    segments), and of the Polars oracle; 0 for users who had not bought."""
    con = duckdb.connect(str(warehouse_sample.root / "warehouse" / "cip.duckdb"), read_only=True)
    try:
        first, last = con.execute(
            "SELECT min(event_time), max(event_time) FROM core.events"
        ).fetchone()
        plan = prop.plan_snapshots(first, last)
        selects = snapshot_selects(plan)
        assert len(selects) >= 3
        events = oracle.read_events(warehouse_sample.raw_files)
        for label, select in selects.items():
            cutoff = datetime.strptime(label[:10], "%Y-%m-%d")
            ml_scores = dict(con.execute(f"SELECT user_id, rfm_score FROM ({select})").fetchall())
            before = f"(SELECT * FROM core.events WHERE event_time < {sql.timestamp(cutoff)})"
            segments = rfm_segments_query(before)
            summed = dict(
                con.execute(
                    f"SELECT user_id, r_score + f_score + m_score FROM ({segments})"
                ).fetchall()
            )
            assert len(summed) > 100, label
            assert {u: s for u, s in ml_scores.items() if s} == summed, label
            expected = oracle.rfm_segments(events.filter(pl.col("event_time") < cutoff))
            assert summed == {
                u: r + f + m
                for u, r, f, m in expected.select(
                    "user_id", "r_score", "f_score", "m_score"
                ).iter_rows()
            }, label
    finally:
        con.close()


def test_data_profile_counts_quarantined_rows_by_reason(tmp_path: Path) -> None:
    """The reader's corpus of bad lines appended to a generated October: each reason's count
    reaches core.ingest_audit and the profile, beside the loaded rows the oracle counts, and
    every check still passes (the bad share is under the 0.1% warning line)."""
    raw = tmp_path / "raw" / "2019-Oct.csv"
    generate(50_000, seed=9, months=["2019-10"], out=raw.parent)
    bad = [(line, reason) for line, reason in CORPUS if reason not in (None, "duplicate")]
    with raw.open("a") as f:
        f.writelines(line + "\n" for line, _ in bad)
    instance, summaries = run_sample(tmp_path, ["2019-10"])
    assert all(s.success for s in summaries)
    assert not any(s.check_problems for s in summaries)

    profile = read_warehouse(
        tmp_path, "SELECT key, metric, value FROM analytics.data_profile WHERE section = 'ingest'"
    )
    actual = {(k, m): v for k, m, v in profile.iter_rows()}
    reasons = [reason for _, reason in bad]
    good = read_month_lines(raw, skip=len(bad))
    expected = {(r, "quarantined"): float(reasons.count(r)) for r in set(reasons)}
    expected["loaded", "loaded"] = float(good.unique().height)
    if good.height > good.unique().height:
        expected["duplicate", "duplicate"] = float(good.height - good.unique().height)
    assert actual == expected
    audit = read_warehouse(tmp_path, "SELECT sum(rows) AS n FROM core.ingest_audit")
    assert audit["n"][0] == good.height + len(bad)  # every raw row accounted for once
    instance.dispose()


def read_month_lines(path: Path, skip: int) -> pl.DataFrame:
    """The month file without its last `skip` lines, read as the oracle reads a month."""
    lines = path.read_text().splitlines(keepends=True)
    clean = path.with_name("clean.csv")
    clean.write_text("".join(lines[: len(lines) - skip]))
    return read_month(clean)
