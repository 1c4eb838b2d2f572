"""Behavioural analytics over the core tables: the monthly data profile, the session funnel,
weekly cohort retention and RFM segments. All SQL run by DuckDB in the warehouse; the RFM rule
table is `rfm_rules` in sql/analytics.sql (and in the README)."""

from collections.abc import Iterator

import dagster as dg

from cip_pipeline import sql
from cip_pipeline.assets.common import (
    FLOAT_TOLERANCE,
    ON_NEIGHBOUR_CHANGE,
    check_spec,
    fetch_row,
    headline,
    markdown_table,
    metadata_value,
    query_table,
    reconcile,
    zero_counts,
)
from cip_pipeline.assets.core import EVENTS, FACT_SESSIONS, FACT_USER_DAYS
from cip_pipeline.automation import ON_ANY_MONTH_CHANGE
from cip_pipeline.io_managers import SqlQuery, SqlTable
from cip_pipeline.io_managers.tables import PARTITION_EXPR
from cip_pipeline.partitions import WAREHOUSE_POOL, month_window, monthly
from cip_pipeline.resources import WarehouseResource

INGEST_AUDIT = dg.AssetKey(["core", "ingest_audit"])
DATA_PROFILE = dg.AssetKey(["analytics", "data_profile"])
FUNNEL = dg.AssetKey(["analytics", "funnel"])
COHORT_RETENTION = dg.AssetKey(["analytics", "cohort_retention"])
RFM_SEGMENTS = dg.AssetKey(["analytics", "rfm_segments"])
RFM_SEGMENT_SUMMARY = dg.AssetKey(["analytics", "rfm_segment_summary"])


def rfm_rules() -> str:
    """The RFM rule table as a query (priority, segment, r/f/m_min, r/f/m_max)."""
    return sql.statement("analytics", "rfm_rules")


def rfm_scored(valued: str) -> str:
    """The rows of the relation `valued` (r/f/m_value, each higher = better) with their R, F
    and M scores: one definition for the segments and the propensity features' rfm_score."""
    return sql.statement("analytics", "rfm_scored", valued=valued)


def rfm_segments_query(events: str) -> str:
    """One row per buyer of the relation `events`, scored and segmented (rfm_segments)."""
    return sql.statement(
        "analytics",
        "rfm_segments",
        events=events,
        rules=rfm_rules(),
        rfm_scored=rfm_scored("valued"),
    )


@dg.asset(
    key=DATA_PROFILE,
    ins={
        "events": dg.AssetIn(EVENTS),
        # core/ingest_audit is written by the Polars IO manager; read it as a table reference.
        "audit": dg.AssetIn(INGEST_AUDIT, input_manager_key="sql_io_manager"),
    },
    partitions_def=monthly,
    group_name="analytics",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_NEIGHBOUR_CHANGE,
    metadata={PARTITION_EXPR: "month"},
    description="Profile of the month's events as a tidy table (section, key, metric): per "
    "column null share, distinct count, min and max; event mix; price quantiles per top-level "
    "category; rows loaded, duplicate and quarantined by reason.",
)
def data_profile(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    events: SqlTable,
    audit: SqlTable,
) -> dg.Output[SqlQuery]:
    start, end = month_window(context.partition_key)
    params = {"start": start, "end": end}
    with warehouse.connect(read_only=True) as con:
        figures = headline(con, sql.statement("analytics", "data_profile_headline"), params)
        mix = query_table(con, sql.statement("analytics", "event_mix"), params)
    query = sql.statement(
        "analytics",
        "data_profile",
        events=events.select(),
        audit=audit.select(),
        start=sql.timestamp(start),
    )
    return dg.Output(SqlQuery(query), metadata={**figures, "event_mix": mix})


@dg.multi_asset_check(
    specs=[
        check_spec(
            "key_unique",
            DATA_PROFILE,
            "One row per (section, key, metric) in the month.",
            monthly_partitions=True,
        ),
        check_spec(
            "consistent",
            DATA_PROFILE,
            "Shares in [0, 1]; event shares add to 1; rows = events per category = rows "
            "loaded by the ingest = rows of core.events in the month.",
            monthly_partitions=True,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def data_profile_checks(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    start, end = month_window(context.partition_key)
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(
            con, sql.statement("analytics", "check_data_profile"), {"start": start, "end": end}
        )
    passed, metadata = zero_counts(row, ["duplicated_keys"])
    yield dg.AssetCheckResult(check_name="key_unique", passed=passed, metadata=metadata)
    rows = row["table_rows"]
    passed, metadata = reconcile(
        {
            "profiled_rows": (row["profiled_rows"], float(rows)),
            "priced_events": (row["priced_events"], float(rows) if rows else None),
            "loaded_rows": (row["loaded_rows"], float(rows)),
            "event_share_total": (row["event_share_total"], 1.0 if rows else None),
        }
    )
    in_range, counts = zero_counts(row, ["shares_out_of_range"])
    yield dg.AssetCheckResult(
        check_name="consistent", passed=passed and in_range, metadata={**metadata, **counts}
    )


@dg.asset(
    key=FUNNEL,
    ins={"sessions": dg.AssetIn(FACT_SESSIONS)},
    group_name="analytics",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="Session funnel (sessions -> with a view -> with a cart -> with a purchase) "
    "overall, per day and per top-level category, with step conversion rates.",
)
def funnel(warehouse: WarehouseResource, sessions: SqlTable) -> dg.Output[SqlQuery]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("analytics", "funnel_headline"))
    steps = [
        ("session", row["sessions"]),
        ("view", row["with_view"]),
        ("cart", row["with_cart"]),
        ("purchase", row["with_purchase"]),
    ]
    table = [
        (name, n, n / steps[i - 1][1] if i and steps[i - 1][1] else None)
        for i, (name, n) in enumerate(steps)
    ]
    return dg.Output(
        SqlQuery(sql.statement("analytics", "funnel", sessions=sessions.select())),
        metadata={
            "sessions": metadata_value(row["sessions"]),
            # The funnel's last step, not fact_sessions' session_conversion_rate (any purchase).
            "session_view_cart_purchase_rate": metadata_value(
                row["with_purchase"] / row["sessions"] if row["sessions"] else None
            ),
            "overall_funnel": markdown_table(["step", "sessions", "step_conversion"], table),
        },
    )


@dg.multi_asset_check(
    specs=[
        check_spec(
            "key_unique",
            FUNNEL,
            "One row per (dimension, key, step).",
            monthly_partitions=False,
        ),
        check_spec(
            "steps_never_increase",
            FUNNEL,
            "Within every (dimension, key), each step has at most the sessions of the one "
            "before; rates in [0, 1].",
            monthly_partitions=False,
        ),
        check_spec(
            "reconciles_with_sessions",
            FUNNEL,
            "Step 0 overall, summed over days and summed over categories equals the sessions "
            "of core.fact_sessions.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def funnel_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("analytics", "check_funnel"))
    passed, metadata = zero_counts(row, ["duplicated_keys"])
    yield dg.AssetCheckResult(check_name="key_unique", passed=passed, metadata=metadata)
    passed, metadata = zero_counts(row, ["increasing_steps", "rates_out_of_range"])
    yield dg.AssetCheckResult(check_name="steps_never_increase", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            "overall_sessions": (row["funnel_sessions"], row["sessions"]),
            "day_sessions": (row["day_sessions"], row["sessions"] or None),
            "category_sessions": (row["category_sessions"], row["sessions"] or None),
        }
    )
    yield dg.AssetCheckResult(
        check_name="reconciles_with_sessions", passed=passed, metadata=metadata
    )


@dg.asset(
    key=COHORT_RETENTION,
    ins={"user_days": dg.AssetIn(FACT_USER_DAYS)},
    group_name="analytics",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="Weekly cohorts by first-seen week x weeks since: cohort users, active users, "
    "retention rate and whether the week is complete (each of its seven days has data: not a "
    "partial first or last week, nor one of a month not loaded); the same for buyers by "
    "first-purchase week (repeat purchase). Week-1 headlines count only complete weeks.",
)
def cohort_retention(user_days: SqlTable) -> SqlQuery:
    return SqlQuery(
        sql.statement("analytics", "cohort_retention", user_days=user_days.select()),
        headline=sql.statement("analytics", "cohort_headline"),
    )


@dg.multi_asset_check(
    specs=[
        check_spec(
            "key_unique",
            COHORT_RETENTION,
            "One row per (cohort_kind, cohort_week, weeks_since).",
            monthly_partitions=False,
        ),
        check_spec(
            "consistent",
            COHORT_RETENTION,
            "Retention in [0, 1]; each cohort holds the users whose first day with an event "
            "(activity) or a purchase (purchase) in core.fact_user_days falls in its week, "
            "counted apart, so that every user and every buyer is in exactly one.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def cohort_retention_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("analytics", "check_cohort_retention"))
    passed, metadata = zero_counts(row, ["duplicated_keys"])
    yield dg.AssetCheckResult(check_name="key_unique", passed=passed, metadata=metadata)
    passed, counts = zero_counts(row, ["rates_out_of_range", "cohorts_mismatched"])
    yield dg.AssetCheckResult(
        check_name="consistent",
        passed=passed,
        metadata={**counts, "users": row["users"], "buyers": row["buyers"]},
    )


@dg.asset(
    key=RFM_SEGMENTS,
    ins={"events": dg.AssetIn(EVENTS)},
    group_name="analytics",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="One row per buyer: recency in days to the end of the data, frequency "
    "(distinct purchase days), monetary; R, F, M tie-aware quintile scores 1..5 (the best "
    "value 5, F 1 exactly for one purchase day) and the segment of the documented rule table.",
)
def rfm_segments(events: SqlTable) -> SqlQuery:
    query = rfm_segments_query(events.select())
    return SqlQuery(query, headline=sql.statement("analytics", "rfm_headline"))


@dg.multi_asset_check(
    specs=[
        check_spec("user_id_unique", RFM_SEGMENTS, "One row per buyer.", monthly_partitions=False),
        check_spec(
            "scores_in_range", RFM_SEGMENTS, "R, F and M scores in 1..5.", monthly_partitions=False
        ),
        check_spec(
            "every_buyer_one_segment",
            RFM_SEGMENTS,
            "Every user with a purchase in core.events has exactly one row, with a segment "
            "of the rule table.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def rfm_segments_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("analytics", "check_rfm_segments", rules=rfm_rules()))
    yield dg.AssetCheckResult(
        check_name="user_id_unique",
        passed=row["rows"] == row["distinct_users"],
        metadata={"rows": row["rows"], "distinct_users": row["distinct_users"]},
    )
    passed, metadata = zero_counts(row, ["scores_out_of_range"])
    yield dg.AssetCheckResult(check_name="scores_in_range", passed=passed, metadata=metadata)
    passed, metadata = reconcile({"buyers": (row["rows"], row["buyers"])})
    assigned, counts = zero_counts(row, ["without_segment"])
    yield dg.AssetCheckResult(
        check_name="every_buyer_one_segment",
        passed=passed and assigned,
        metadata={**metadata, **counts},
    )


@dg.asset(
    key=RFM_SEGMENT_SUMMARY,
    ins={"rfm": dg.AssetIn(RFM_SEGMENTS)},
    group_name="analytics",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="Per RFM segment (in rule order): buyers, share of buyers, average spend, "
    "revenue and share of revenue.",
)
def rfm_segment_summary(warehouse: WarehouseResource, rfm: SqlTable) -> dg.Output[SqlQuery]:
    query = sql.statement("analytics", "rfm_segment_summary", rfm=rfm.select(), rules=rfm_rules())
    # The summary is a handful of rows over the buyers: computed here too, for the UI.
    with warehouse.connect(read_only=True) as con:
        cursor = con.execute(
            f"SELECT segment, users, user_share, average_spend, revenue_share FROM ({query})"
        )
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    return dg.Output(
        SqlQuery(query),
        metadata={
            "segments": markdown_table(columns, rows),
            # No buyer: every share is None, not 0 (they would not add to 1).
            "segment_shares": dg.MetadataValue.json(
                {
                    segment: None if share is None else round(share, 6)
                    for segment, _, share, _, _ in rows
                }
            ),
        },
    )


@dg.multi_asset_check(
    specs=[
        check_spec(
            "segment_unique",
            RFM_SEGMENT_SUMMARY,
            "One row per segment.",
            monthly_partitions=False,
        ),
        check_spec(
            "shares_add_to_one",
            RFM_SEGMENT_SUMMARY,
            "User shares and revenue shares each add to 1; users and revenue add up to "
            "rfm_segments.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def rfm_segment_summary_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("analytics", "check_rfm_segment_summary"))
    passed, metadata = zero_counts(row, ["duplicated_segments"])
    yield dg.AssetCheckResult(check_name="segment_unique", passed=passed, metadata=metadata)
    buyers = row["buyers"]
    passed, metadata = reconcile(
        {
            "user_share_total": (row["user_share_total"], 1.0 if buyers else None),
            "revenue_share_total": (
                row["revenue_share_total"],
                1.0 if buyers and row["buyer_revenue"] else None,
            ),
            "users": (row["users"], buyers),
            "revenue": (row["revenue"], row["buyer_revenue"]),
        }
    )
    yield dg.AssetCheckResult(
        check_name="shares_add_to_one",
        passed=passed,
        metadata={**metadata, "tolerance": FLOAT_TOLERANCE},
    )


PARTITIONED_ASSETS = [data_profile]
PARTITIONED_CHECKS = [data_profile_checks]
UNPARTITIONED_ASSETS = [funnel, cohort_retention, rfm_segments, rfm_segment_summary]
UNPARTITIONED_CHECKS = [
    funnel_checks,
    cohort_retention_checks,
    rfm_segments_checks,
    rfm_segment_summary_checks,
]
