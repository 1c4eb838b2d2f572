"""Core star schema: session and daily facts per month, product and user dimensions over all
months. Every table is a SQL query that DuckDB runs inside the warehouse (the SQL IO manager
stores it); Python only sees the small results of headline queries and checks.

Sessions and month boundaries
-----------------------------
A session belongs to the month of its first event and appears exactly once over all
partitions, with all its events. `fact_sessions[M]` therefore reads three months of
`core.events` (through a `TimeWindowPartitionMapping` from M-1 to M+1):

* the last hours of M-1, to leave out the sessions that began there (they are rows of M-1);
* all of M;
* the first hours of M+1, for the next-month events of sessions that began in M.

Which sessions cross a boundary is decided in windows of `SESSION_GAP` on each side of it:
REES46 changes a session's id after a long pause, so two consecutive events of one session
are less than `SESSION_GAP` apart. The next-month window is then widened until no crossing
session can have a later event. Should the data ever break that assumption, the checks say
so: a session split over two months fails `user_session_unique`, a session missing events
fails `reconciles_with_events`.

When month M+1 is loaded after `fact_sessions[M]` was built, M's sessions that continue
into M+1 lack their M+1 events and M+1 leaves them out: `reconciles_with_events` of M+1
fails (some of its events lie outside every session row) until `fact_sessions[M]` (and what
depends on it) is materialized again. Likewise M+1 must be derived again when M is loaded
after it. Dagster shows the partition as having a newer upstream (it depends on
`core/events[M+1]`); its automation condition (`ON_NEIGHBOUR_CHANGE`) has the automation
sensor rebuild it, and `cip run` does it by itself: it loads every month before deriving
any, and re-derives the already loaded neighbours of the months it loads, unless what a
neighbour's sessions read from the months around it is unchanged (`neighbours_unchanged`);
a neighbour not derived since its load is derived whole. The checks that read other months'
sessions (`CROSS_MONTH_CHECKS`) judge a month once the months around it are rebuilt.

Inside the month the same holds at the boundaries of its spans of three days
(`month_spans`): each span's sessions are built apart, with the rest of those that go on into
the next span, and a span keeps its stored rows while the core.events spans it reads are as
they were loaded (`session_chunks`).
"""

import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

import dagster as dg
import duckdb

from cip_pipeline import sql
from cip_pipeline.assets.common import (
    ON_NEIGHBOUR_CHANGE,
    check_spec,
    fetch_row,
    headline,
    latest_materialization,
    metadata_value,
    reconcile,
    recorded,
    zero_counts,
)
from cip_pipeline.automation import ON_ANY_MONTH_CHANGE
from cip_pipeline.budget import day_chunks, parse_size
from cip_pipeline.io_managers import Chunk, SqlQuery, SqlTable, fingerprint
from cip_pipeline.io_managers.tables import CHUNKS, PARTITION_EXPR, TimeSlice
from cip_pipeline.months import month_bounds
from cip_pipeline.partitions import (
    WAREHOUSE_POOL,
    month_spans,
    month_window,
    monthly,
    span_label,
)
from cip_pipeline.resources import WarehouseResource

EVENTS = dg.AssetKey(["core", "events"])
FACT_SESSIONS = dg.AssetKey(["core", "fact_sessions"])
FACT_USER_DAYS = dg.AssetKey(["core", "fact_user_days"])
FACT_DAILY_KPIS = dg.AssetKey(["core", "fact_daily_kpis"])
DIM_PRODUCTS = dg.AssetKey(["core", "dim_products"])
DIM_USERS = dg.AssetKey(["core", "dim_users"])

# fact_sessions metadata: what the month's sessions read from its neighbours, and the code
# that reads it.
FINGERPRINT = "neighbour_fingerprint"
SESSION_STATEMENTS = ("boundary_sessions", "continuing_reach", "top_categories", "fact_sessions")
# Two consecutive events of one session are less than this apart (see the module docstring).
SESSION_GAP = timedelta(hours=24)
# DuckDB memory per event of a user-day chunk: chunks this size aggregate without spilling.
BYTES_PER_EVENT = 200


def month_after(end: datetime) -> datetime:
    """The end of the month that begins at `end`."""
    _, following = month_bounds(f"{end:%Y-%m}")
    return datetime(following.year, following.month, 1)


def month_before(start: datetime) -> datetime:
    """The start of the month that ends at `start`."""
    previous = start - timedelta(days=1)
    return datetime(previous.year, previous.month, 1)


def top_categories_sql(events: SqlTable) -> str:
    """Each category_id's top-level category (`top_categories` in core.sql)."""
    return sql.statement(
        "core", "top_categories", events=events.select("category_id, category_code")
    )


def brand_ranks_sql(events: SqlTable) -> str:
    """Each brand's alphabetical rank (`brand_ranks` in core.sql)."""
    return sql.statement("core", "brand_ranks", events=events.select("brand"))


def boundary_sql(events: SqlTable, start: datetime, end: datetime) -> str:
    """The sessions crossing the month's boundaries (`boundary_sessions` in core.sql)."""
    return sql.statement(
        "core",
        "boundary_sessions",
        events=events.select(),
        start=sql.timestamp(start),
        start_gap_from=sql.timestamp(start - SESSION_GAP),
        start_gap_to=sql.timestamp(start + SESSION_GAP),
        end=sql.timestamp(end),
        end_gap_from=sql.timestamp(end - SESSION_GAP),
        end_gap_to=sql.timestamp(end + SESSION_GAP),
    )


def boundary_once(
    con: duckdb.DuckDBPyConnection, events: SqlTable, start: datetime, end: datetime
) -> str:
    """The boundary sessions of [start, end) (`boundary_sql`) computed into a temporary table
    of this connection, named by the window and replaced on each call, and a SELECT over it:
    the reach, counts and fingerprint queries would each compute them from four days of
    events."""
    table = f"boundary_{start:%Y%m%d%H%M%S}_{end:%Y%m%d%H%M%S}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {boundary_sql(events, start, end)}")
    return f"SELECT side, user_session FROM temp.{table}"


def session_reach(
    con: duckdb.DuckDBPyConnection,
    events: SqlTable,
    boundary: str,
    end: datetime,
    limit: datetime | None = None,
) -> tuple[datetime, int]:
    """How far past `end` the continuing sessions of the month (or span) ending there go: the
    end of the window to read (exclusive, at most `limit`, by default the end of the next
    month) and the number of events after `end` in it.

    Starts with one gap past `end` and widens the window while a continuing session's last
    event in it is closer than one gap to its end (a later event could follow).
    """
    next_end = limit or month_after(end)
    until = min(end + SESSION_GAP, next_end)
    while True:
        last, events_in = con.execute(
            sql.statement(
                "core",
                "continuing_reach",
                boundary=boundary,
                events=events.select(),
                end=sql.timestamp(end),
                until=sql.timestamp(until),
            )
        ).fetchone()
        if last is None:
            return end, 0
        if last + SESSION_GAP <= until or until >= next_end:
            return until, int(events_in)
        until = min(last + SESSION_GAP, next_end)


def neighbour_fingerprint(
    con: duckdb.DuckDBPyConnection, events: SqlTable, boundary: str, end: datetime, until: datetime
) -> str:
    """What the month's sessions read from the months around it (`neighbour_fingerprint` in
    core.sql): recorded by fact_sessions, compared by `neighbours_unchanged`."""
    query = sql.statement(
        "core",
        "neighbour_fingerprint",
        boundary=boundary,
        events=events.select(),
        top_categories=top_categories_sql(events),
        end=sql.timestamp(end),
        until=sql.timestamp(until),
    )
    code = sql.digest(*(sql.statement("core", name) for name in SESSION_STATEMENTS))
    return f"code {code}; {con.execute(query).fetchone()[0]}"


def neighbours_unchanged(
    instance: dg.DagsterInstance, warehouse: WarehouseResource, partition_key: str
) -> bool:
    """Whether `fact_sessions[partition_key]` would come out as it is: the month was derived
    since it was loaded (`derived_since_load`) and the warehouse holds what its sessions read
    from the months around it when last built (their recorded fingerprint). Its own month is
    not compared: this is for a month whose neighbour alone was loaded again."""
    fingerprint = recorded(instance, FACT_SESSIONS, partition_key).get(FINGERPRINT)
    if (
        fingerprint is None
        or not derived_since_load(
            instance, partition_key, [FACT_USER_DAYS, FACT_SESSIONS, FACT_DAILY_KPIS]
        )
        or not _kpis_follow_sessions(instance, partition_key)
    ):
        return False
    start, end = month_window(partition_key)
    around = TimeSlice("event_time", month_before(start), month_after(end))
    events = SqlTable(*EVENTS.path, around.predicate())
    with warehouse.connect(read_only=True) as con:
        boundary = boundary_once(con, events, start, end)
        until, _ = session_reach(con, events, boundary, end)
        return neighbour_fingerprint(con, events, boundary, end, until) == fingerprint


def derived_since_load(
    instance: dg.DagsterInstance, partition_key: str, keys: Iterable[dg.AssetKey]
) -> bool:
    """Every partition `keys[partition_key]` was materialized after the month's core.events:
    a month loaded and not derived since (a `cip run` cut short after its loads) has none or
    older ones, which only a whole derive makes right."""
    events = latest_materialization(instance, EVENTS, partition_key)
    if events is None:
        return False
    for key in keys:
        built = latest_materialization(instance, key, partition_key)
        if built is None or built.storage_id < events.storage_id:
            return False
    return True


def _kpis_follow_sessions(instance: dg.DagsterInstance, partition_key: str) -> bool:
    """The month's daily KPIs were built after its sessions (a re-derive cut short between the
    two leaves them behind)."""
    sessions = latest_materialization(instance, FACT_SESSIONS, partition_key)
    kpis = latest_materialization(instance, FACT_DAILY_KPIS, partition_key)
    return sessions is not None and kpis is not None and kpis.storage_id > sessions.storage_id


def _neighbouring_months() -> dg.TimeWindowPartitionMapping:
    """Month M reads months M-1..M+1; the first and the last month have one neighbour."""
    with warnings.catch_warnings():
        # allow_nonexistent_upstream_partitions is beta in the Dagster range we pin and test.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.TimeWindowPartitionMapping(
            start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
        )


@dg.asset(
    key=FACT_SESSIONS,
    ins={"events": dg.AssetIn(EVENTS, partition_mapping=_neighbouring_months())},
    partitions_def=monthly,
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_NEIGHBOUR_CHANGE,
    metadata={PARTITION_EXPR: "start_time"},
    description="One row per session (user_session) whose first event lies in the month, "
    "with all its events, including those in the first hours of the next month: user, "
    "start, end, duration, event counts, distinct products, cart/purchase flags, revenue, "
    "main top-level category and the products viewed. Events without a session are in no "
    "session.",
)
def fact_sessions(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, events: SqlTable
) -> dg.Output[SqlQuery]:
    start, end = month_window(context.partition_key)
    loaded = loaded_spans(context.instance, [month_before(start), start, end])
    with warehouse.connect(read_only=True) as con:
        boundary = boundary_once(con, events, start, end)
        until, next_events = session_reach(con, events, boundary, end)
        crossing = fetch_row(con, sql.statement("core", "boundary_counts", boundary=boundary))
        figures = headline(
            con, sql.statement("core", "fact_sessions_event_coverage"), {"start": start, "end": end}
        )
        fingerprint = neighbour_fingerprint(con, events, boundary, end, until)
        chunks = session_chunks(con, events, start, end, until, loaded)
    context.log.info(
        f"{crossing['inherited']} sessions began in the previous month, "
        f"{crossing['continuing']} continue into the next ({next_events} events up to {until})"
    )
    return dg.Output(
        SqlQuery(chunks=tuple(chunks), headline=sql.statement("core", "fact_sessions_headline")),
        metadata={
            **figures,
            "sessions_from_previous_month": metadata_value(crossing["inherited"]),
            "sessions_into_next_month": metadata_value(crossing["continuing"]),
            "next_month_events_included": metadata_value(next_events),
            "next_month_read_until": metadata_value(until),
            "session_gap_hours": metadata_value(SESSION_GAP / timedelta(hours=1)),
            FINGERPRINT: dg.MetadataValue.text(fingerprint),
        },
    )


LoadedSpan = tuple[datetime, datetime, str]


def loaded_spans(instance: dg.DagsterInstance, months: list[datetime]) -> list[LoadedSpan] | None:
    """The spans of core.events in `months` (`month_spans`) as their last loads recorded them:
    [since, until) and the fingerprint of what was loaded. None when a loaded month recorded
    other chunks (an older version of the load)."""
    spans: list[LoadedSpan] = []
    for month in months:
        partition = f"{month:%Y-%m-%d}"
        last = recorded(instance, EVENTS, partition)
        if not last:
            continue  # not loaded: nothing of it is read
        loaded = {c["label"]: c["fingerprint"] for c in last.get(CHUNKS) or []}
        expected = {span_label(*span): span for span in month_spans(*month_window(partition))}
        if not loaded or not loaded.keys() <= expected.keys():
            return None
        spans += [(*expected[label], f) for label, f in loaded.items()]
    return spans


def session_chunks(
    con: duckdb.DuckDBPyConnection,
    events: SqlTable,
    start: datetime,
    end: datetime,
    until: datetime,
    loaded: list[LoadedSpan] | None,
) -> list[Chunk]:
    """The month's sessions (`fact_sessions` in core.sql) as one SELECT per span of session
    start days (`month_spans`): a span's boundaries are handled as the month's are, and its
    category map is made from the events it reads (REES46 gives a category id one code). Each
    chunk's fingerprint is its SQL and the fingerprints of the core.events spans it reads, as
    their loads recorded them (`loaded`; core.events has no other writer): late rows rebuild
    only the spans whose sessions could have seen them."""
    chunks = []
    for since, span_end in month_spans(start, end):
        boundary = boundary_sql(events, since, span_end)
        if span_end == end:
            reach = until
        else:
            # A span's sessions may run past the month's end too (through a last span
            # shorter than the gap): as far as the month's own may.
            reach, _ = session_reach(
                con,
                events,
                boundary_once(con, events, since, span_end),
                span_end,
                limit=month_after(end),
            )
        read = SqlTable(
            events.schema, events.table, TimeSlice("event_time", since, reach).predicate()
        )
        select = sql.statement(
            "core",
            "fact_sessions",
            boundary=boundary,
            top_categories=top_categories_sql(read),
            events=events.select(),
            start=sql.timestamp(since),
            end=sql.timestamp(span_end),
            until=sql.timestamp(reach),
        )
        # The boundaries read a session gap on either side of the span.
        first, last = since - SESSION_GAP, max(reach, span_end + SESSION_GAP)
        inputs = None if loaded is None else [f for a, b, f in loaded if a < last and b > first]
        chunks.append(
            Chunk(
                select,
                label=span_label(since, span_end),
                fingerprint=None if inputs is None else sql.digest(select, *inputs),
                keep=TimeSlice("start_time", since, span_end).predicate(),
            )
        )
    return chunks


@dg.multi_asset_check(
    specs=[
        check_spec(
            "user_session_unique",
            FACT_SESSIONS,
            "user_session is never null and unique, in the month and across every month.",
            monthly_partitions=True,
        ),
        check_spec(
            "values_consistent",
            FACT_SESSIONS,
            "events = views + carts + purchases + remove_from_carts; 1 <= distinct_products "
            "<= events; duration = end - start >= 0; flags agree with the counts.",
            monthly_partitions=True,
        ),
        check_spec(
            "reconciles_with_events",
            FACT_SESSIONS,
            "The sessions' events, views, carts, purchases and revenue equal those of the "
            "core.events rows with their keys, and every event of the month with a session "
            "lies within a session row of this month or the previous one.",
            monthly_partitions=True,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def fact_sessions_checks(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    start, end = month_window(context.partition_key)
    params = {"start": start, "end": end}
    with warehouse.connect(read_only=True) as con:
        keys = fetch_row(con, sql.statement("core", "check_sessions_keys"), params)
        values = fetch_row(con, sql.statement("core", "check_sessions_values"), params)
        totals = fetch_row(con, sql.statement("core", "sessions_totals"), params)
        direct = fetch_row(
            con,
            sql.statement("core", "check_sessions_reconcile"),
            {**params, "previous_start": month_before(start), "next_end": month_after(end)},
        )
    passed, metadata = zero_counts(keys, ["null_keys", "duplicated_keys"])
    yield dg.AssetCheckResult(
        check_name="user_session_unique",
        passed=passed,
        metadata={**metadata, "sessions": keys["sessions"]},
    )
    passed, metadata = zero_counts(values, ["inconsistent_rows"])
    yield dg.AssetCheckResult(check_name="values_consistent", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            name: (totals[name], direct[name])
            for name in ("events", "views", "carts", "purchases", "revenue")
        }
    )
    outside = direct["month_events_outside_sessions"]
    sessions = totals["sessions"]
    yield dg.AssetCheckResult(
        check_name="reconciles_with_events",
        passed=passed and outside == 0,
        metadata={
            **metadata,
            "month_events_with_session": metadata_value(direct["month_events_with_session"]),
            "month_events_outside_sessions": metadata_value(outside),
            # the session rates are the asset's headline, defined once
            "sessions": metadata_value(sessions),
        },
    )


def user_days_chunks(
    con: duckdb.DuckDBPyConnection, events: SqlTable, end: datetime, chunk_events: int
) -> list[Chunk]:
    """The month's user-days (`fact_user_days` in core.sql) as one SELECT per chunk of whole
    days holding at most `chunk_events` events; `events` is the month, ending at `end`. Each
    chunk's fingerprint is its SQL and its days' events: late rows for the month's last days
    leave the earlier chunks' stored rows in place."""
    days = con.execute(sql.statement("core", "user_day_events", events=events.select())).fetchall()
    chunks = []
    for since, until in day_chunks([(d, n) for d, n, _ in days], chunk_events, end) or [(end, end)]:
        span = SqlTable(
            events.schema, events.table, TimeSlice("event_time", since, until).predicate()
        )
        select = sql.statement(
            "core",
            "fact_user_days",
            events=span.select(),
            top_categories=top_categories_sql(span),
            brand_ranks=brand_ranks_sql(span),
        )
        read = [(n, h) for d, n, h in days if since <= d < until]
        chunks.append(
            Chunk(
                select,
                label=span_label(since, until),
                fingerprint=fingerprint(select, read),
                keep=TimeSlice("day", since, until).predicate(),
            )
        )
    return chunks


@dg.asset(
    key=FACT_USER_DAYS,
    ins={"events": dg.AssetIn(EVENTS)},
    partitions_def=monthly,
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_NEIGHBOUR_CHANGE,
    metadata={PARTITION_EXPR: "day"},
    description="One row per user and day with an event: events by type, revenue, first and "
    "last event, last cart, first and last purchase, products carted and not bought, and the "
    "day's most viewed top-level category and brand. What daily KPIs, user dimensions, "
    "cohorts and propensity features sum over.",
)
def fact_user_days(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, events: SqlTable
) -> dg.Output[SqlQuery]:
    _, end = month_window(context.partition_key)
    chunk_events = parse_size(warehouse.memory_limit) // BYTES_PER_EVENT
    with warehouse.connect(read_only=True) as con:
        chunks = user_days_chunks(con, events, end, chunk_events)
    return dg.Output(
        SqlQuery.chunked(chunks),
        metadata={
            "max_events_per_chunk": dg.MetadataValue.int(chunk_events),
        },
    )


@dg.multi_asset_check(
    specs=[
        check_spec(
            "user_day_unique",
            FACT_USER_DAYS,
            "(user_id, day) never null and unique in the month.",
            monthly_partitions=True,
        ),
        check_spec(
            "values_consistent",
            FACT_USER_DAYS,
            "events = views + carts + purchases + remove_from_carts; first and last event on "
            "the day, in order; carts_not_bought <= carts; purchase and cart times set exactly "
            "when there are purchases and carts.",
            monthly_partitions=True,
        ),
        check_spec(
            "reconciles_with_events",
            FACT_USER_DAYS,
            "The month's events, views, carts, purchases and purchase revenue equal those of "
            "core.events.",
            monthly_partitions=True,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def fact_user_days_checks(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    start, end = month_window(context.partition_key)
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("core", "check_user_days"), {"start": start, "end": end})
    passed, metadata = zero_counts(row, ["null_keys", "duplicated_keys"])
    yield dg.AssetCheckResult(check_name="user_day_unique", passed=passed, metadata=metadata)
    passed, metadata = zero_counts(row, ["inconsistent_rows"])
    yield dg.AssetCheckResult(check_name="values_consistent", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            name: (row[f"day_{name}"], row[name])
            for name in ("events", "views", "carts", "purchases", "revenue")
        }
    )
    yield dg.AssetCheckResult(check_name="reconciles_with_events", passed=passed, metadata=metadata)


@dg.asset(
    key=FACT_DAILY_KPIS,
    ins={"user_days": dg.AssetIn(FACT_USER_DAYS), "sessions": dg.AssetIn(FACT_SESSIONS)},
    partitions_def=monthly,
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_NEIGHBOUR_CHANGE,
    metadata={PARTITION_EXPR: "day"},
    description="One row per day with events: events, DAU, sessions, views, carts, purchases, "
    "buyers, revenue, average order value, view->cart and cart->purchase rates, session "
    "conversion.",
)
def fact_daily_kpis(user_days: SqlTable, sessions: SqlTable) -> SqlQuery:
    query = sql.statement(
        "core", "fact_daily_kpis", user_days=user_days.select(), sessions=sessions.select()
    )
    return SqlQuery(query, headline=sql.statement("core", "month_headline"))


@dg.multi_asset_check(
    specs=[
        check_spec(
            "day_unique",
            FACT_DAILY_KPIS,
            "One row per day: day never null and unique.",
            monthly_partitions=True,
        ),
        check_spec(
            "reconciles_with_events",
            FACT_DAILY_KPIS,
            "Sums over the days equal the month's events, purchase events and purchase "
            "revenue in core.events and its sessions in core.fact_sessions.",
            monthly_partitions=True,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def fact_daily_kpis_checks(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    start, end = month_window(context.partition_key)
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(
            con, sql.statement("core", "check_daily_kpis"), {"start": start, "end": end}
        )
    passed, metadata = zero_counts(row, ["duplicated_days", "null_days"])
    yield dg.AssetCheckResult(check_name="day_unique", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            name: (row[f"kpi_{name}"], row[name])
            for name in ("events", "purchases", "revenue", "sessions")
        }
    )
    yield dg.AssetCheckResult(check_name="reconciles_with_events", passed=passed, metadata=metadata)


@dg.asset(
    key=DIM_PRODUCTS,
    ins={"events": dg.AssetIn(EVENTS)},
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="One row per product over all months: latest price, price range, category "
    "(id, code, levels l1..l3), brand, first and last seen, lifetime views, carts, purchases "
    "and revenue.",
)
def dim_products(events: SqlTable) -> SqlQuery:
    return SqlQuery(
        sql.statement("core", "dim_products", events=events.select()),
        headline=sql.statement("core", "dim_products_headline"),
    )


@dg.multi_asset_check(
    specs=[
        check_spec(
            "product_id_unique",
            DIM_PRODUCTS,
            "product_id never null and unique.",
            monthly_partitions=False,
        ),
        check_spec(
            "no_orphan_products",
            DIM_PRODUCTS,
            "Every product_id of core.events is in dim_products.",
            monthly_partitions=False,
        ),
        check_spec(
            "reconciles_with_events",
            DIM_PRODUCTS,
            "Lifetime views, carts, purchases and revenue add up to core.events; price range "
            "and first/last seen are ordered.",
            monthly_partitions=False,
        ),
        check_spec(
            "category_id_one_code",
            DIM_PRODUCTS,
            "Each category_id has one category_code (or none) across products: the top-level "
            "categories of sessions, user-days and dim_users are found through it. Warns.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def dim_products_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("core", "check_dim_products"))
        totals = fetch_row(con, sql.statement("core", "check_dim_products_reconcile"))
        codes = fetch_row(con, sql.statement("core", "check_category_codes"))
    yield dg.AssetCheckResult(
        check_name="category_id_one_code",
        passed=codes["category_ids_with_several_codes"] == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "category_ids_with_several_codes": codes["category_ids_with_several_codes"],
            "examples": dg.MetadataValue.json([str(i) for i in codes["examples"]]),
        },
    )
    passed, metadata = zero_counts(row, ["duplicated_keys", "null_keys"])
    yield dg.AssetCheckResult(check_name="product_id_unique", passed=passed, metadata=metadata)
    passed, metadata = zero_counts(row, ["orphan_products"])
    yield dg.AssetCheckResult(check_name="no_orphan_products", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            name: (totals[f"dim_{name}"], totals[name])
            for name in ("views", "carts", "purchases", "revenue")
        }
    )
    consistent, counts = zero_counts(row, ["inconsistent_rows"])
    yield dg.AssetCheckResult(
        check_name="reconciles_with_events",
        passed=passed and consistent,
        metadata={**metadata, **counts},
    )


@dg.asset(
    key=DIM_USERS,
    ins={
        "events": dg.AssetIn(EVENTS),
        "user_days": dg.AssetIn(FACT_USER_DAYS),
        "sessions": dg.AssetIn(FACT_SESSIONS),
    },
    group_name="core",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    automation_condition=ON_ANY_MONTH_CHANGE,
    description="One row per user over all months: first and last seen, tenure, sessions, "
    "events, purchases, revenue, first and last purchase, preferred top-level category and "
    "brand.",
)
def dim_users(
    warehouse: WarehouseResource, events: SqlTable, user_days: SqlTable, sessions: SqlTable
) -> dg.Output[SqlQuery]:
    query = sql.statement(
        "core",
        "dim_users",
        events=events.select(),
        user_days=user_days.select(),
        sessions=sessions.select(),
        top_categories=top_categories_sql(events),
        brand_ranks=brand_ranks_sql(events),
    )
    # The warehouse pool lets no other step write the user-days before this build is stored.
    with warehouse.connect(read_only=True) as con:
        days = con.execute(sql.statement("core", "user_days_content")).fetchall()
    return dg.Output(
        SqlQuery(query, headline=sql.statement("core", "dim_users_headline")),
        metadata={USER_DAYS_READ: user_days_digest(days)},
    )


# dim_users' materialization metadata: the user-days it added up (see user_days_digest).
USER_DAYS_READ = "user_days_read"


def user_days_digest(days: list[tuple[datetime, int, int]]) -> str:
    """Every row of core.fact_user_days, from its (day, rows, hash sum) lines
    (`user_days_content` in core.sql): equal digests, equal user-days."""
    return fingerprint(sql.statement("core", "user_days_content"), [(n, h) for _, n, h in days])


@dg.multi_asset_check(
    specs=[
        check_spec(
            "user_id_unique", DIM_USERS, "user_id never null and unique.", monthly_partitions=False
        ),
        check_spec(
            "no_orphan_users",
            DIM_USERS,
            "Every user_id of core.events and core.fact_sessions is in dim_users.",
            monthly_partitions=False,
        ),
        check_spec(
            "reconciles_with_events",
            DIM_USERS,
            "Events, purchases, revenue and sessions add up to core.events and "
            "core.fact_sessions; first/last seen ordered, purchase dates set for buyers.",
            monthly_partitions=False,
        ),
    ],
    pool=WAREHOUSE_POOL,
)
def dim_users_checks(warehouse: WarehouseResource) -> Iterator[dg.AssetCheckResult]:
    with warehouse.connect(read_only=True) as con:
        row = fetch_row(con, sql.statement("core", "check_dim_users"))
        totals = fetch_row(con, sql.statement("core", "check_dim_users_reconcile"))
    passed, metadata = zero_counts(row, ["duplicated_keys", "null_keys"])
    yield dg.AssetCheckResult(check_name="user_id_unique", passed=passed, metadata=metadata)
    passed, metadata = zero_counts(row, ["orphan_event_users", "orphan_session_users"])
    yield dg.AssetCheckResult(check_name="no_orphan_users", passed=passed, metadata=metadata)
    passed, metadata = reconcile(
        {
            name: (totals[f"dim_{name}"], totals[name])
            for name in ("events", "purchases", "revenue", "sessions")
        }
    )
    consistent, counts = zero_counts(row, ["inconsistent_rows"])
    yield dg.AssetCheckResult(
        check_name="reconciles_with_events",
        passed=passed and consistent,
        metadata={**metadata, **counts},
    )


PARTITIONED_ASSETS = [fact_user_days, fact_sessions, fact_daily_kpis]
# What reads the neighbouring months (itself, or through fact_sessions): all that a month needs
# again when a neighbour is loaded after it.
NEIGHBOUR_ASSETS = [fact_sessions, fact_daily_kpis]
PARTITIONED_CHECKS = [fact_user_days_checks, fact_sessions_checks, fact_daily_kpis_checks]
# What reads a derived asset's rows of other months: it judges a month rightly only once the
# months around it are rebuilt too.
CROSS_MONTH_CHECKS = [fact_sessions_checks]
UNPARTITIONED_ASSETS = [dim_products, dim_users]
UNPARTITIONED_CHECKS = [dim_products_checks, dim_users_checks]
