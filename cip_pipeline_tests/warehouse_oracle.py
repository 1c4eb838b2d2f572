"""The warehouse tables computed again with Polars alone, straight from the raw CSV files:
an oracle for the SQL that knows nothing of how the SQL is written. Definitions follow the
issue and README (a session belongs to the month of its first event, ties of "most frequent"
go to the alphabetically first value, quintile scores are tie-aware, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from cip_pipeline_tests.rees46_stats import read_month

EVENT_TYPES = ("view", "cart", "purchase", "remove_from_cart")
QUANTILES = (("min", 0.0), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95), ("max", 1.0))
SEGMENTS = (
    "Champions",
    "Loyal Customers",
    "Cant Lose Them",
    "At Risk",
    "Lost",
    "Hibernating",
    "New Customers",
    "Regular",
)


def read_events(paths: Sequence[Path]) -> pl.DataFrame:
    """Every month's events, exact duplicates dropped, with the top-level category."""
    frames = [read_month(p).unique() for p in paths]
    events = pl.concat(frames) if frames else pl.DataFrame()
    return events.with_columns(
        pl.col("category_code").str.split(".").list.first().alias("l1"),
        pl.col("event_time").dt.truncate("1mo").alias("month"),
    )


def _counts() -> list[pl.Expr]:
    return [
        (pl.col("event_type") == "view").sum().alias("views"),
        (pl.col("event_type") == "cart").sum().alias("carts"),
        (pl.col("event_type") == "purchase").sum().alias("purchases"),
        (pl.col("event_type") == "remove_from_cart").sum().alias("remove_from_carts"),
    ]


def _revenue() -> pl.Expr:
    return pl.col("price").filter(pl.col("event_type") == "purchase").sum().alias("revenue")


def _most_frequent(frame: pl.DataFrame, key: str, value: str, name: str) -> pl.DataFrame:
    """Per key, the value with the most rows; ties to the alphabetically first."""
    return (
        frame.filter(pl.col(value).is_not_null())
        .group_by(key, value)
        .len()
        .sort([key, "len", value], descending=[False, True, False])
        .group_by(key, maintain_order=True)
        .first()
        .select(key, pl.col(value).alias(name))
    )


def fact_sessions(events: pl.DataFrame) -> pl.DataFrame:
    with_session = events.filter(pl.col("user_session").is_not_null())
    sessions = with_session.group_by("user_session").agg(
        pl.col("user_id").min(),
        pl.col("event_time").min().alias("start_time"),
        pl.col("event_time").max().alias("end_time"),
        pl.len().alias("events"),
        *_counts(),
        pl.col("product_id").n_unique().alias("distinct_products"),
        _revenue(),
        pl.col("product_id")
        .filter(pl.col("event_type") == "view")
        .unique()
        .sort()
        .alias("viewed_products"),
    )
    main = _most_frequent(with_session, "user_session", "l1", "main_category")
    return (
        sessions.join(main, on="user_session", how="left")
        .with_columns(
            (pl.col("end_time") - pl.col("start_time"))
            .dt.total_seconds()
            .alias("duration_seconds"),
            (pl.col("carts") > 0).alias("has_cart"),
            (pl.col("purchases") > 0).alias("has_purchase"),
            ((pl.col("carts") > 0) & (pl.col("purchases") == 0)).alias("cart_abandoned"),
        )
        .sort("user_session")
    )


def _top_viewed(views: pl.DataFrame, value: str, name: str) -> pl.DataFrame:
    """Per user and day, the most viewed value; ties to the alphabetically last."""
    return (
        views.filter(pl.col(value).is_not_null())
        .group_by("user_id", "day", value)
        .len()
        .sort(["len", value], descending=True)
        .group_by("user_id", "day", maintain_order=True)
        .first()
        .select("user_id", "day", pl.col(value).alias(name))
    )


def fact_user_days(events: pl.DataFrame) -> pl.DataFrame:
    frame = events.with_columns(pl.col("event_time").dt.date().alias("day"))
    keys = ["user_id", "day"]

    def times(kind: str) -> pl.Expr:
        return pl.col("event_time").filter(pl.col("event_type") == kind)

    days = frame.group_by(keys).agg(
        pl.len().alias("events"),
        *_counts(),
        _revenue(),
        pl.col("event_time").min().alias("first_event"),
        pl.col("event_time").max().alias("last_event"),
        times("cart").max().alias("last_cart"),
        times("purchase").min().alias("first_purchase"),
        times("purchase").max().alias("last_purchase"),
    )
    carted, bought = (
        frame.filter(pl.col("event_type") == kind).select(*keys, "product_id").unique()
        for kind in ("cart", "purchase")
    )
    not_bought = (
        carted.join(bought, on=[*keys, "product_id"], how="anti")
        .group_by(keys)
        .len("carts_not_bought")
    )
    views = frame.filter(pl.col("event_type") == "view")
    return (
        days.join(not_bought, on=keys, how="left")
        .join(_top_viewed(views, "l1", "top_category"), on=keys, how="left")
        .join(_top_viewed(views, "brand", "top_brand"), on=keys, how="left")
        .with_columns(pl.col("carts_not_bought").fill_null(0))
        .sort(keys)
    )


def fact_daily_kpis(events: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    days = events.group_by(pl.col("event_time").dt.date().alias("day")).agg(
        pl.len().alias("events"),
        pl.col("user_id").n_unique().alias("dau"),
        *_counts(),
        pl.col("user_id").filter(pl.col("event_type") == "purchase").n_unique().alias("buyers"),
        _revenue(),
    )
    session_days = sessions.group_by(pl.col("start_time").dt.date().alias("day")).agg(
        pl.len().alias("sessions"), pl.col("has_purchase").sum().alias("converting_sessions")
    )
    kpis = days.join(session_days, on="day", how="left").with_columns(
        pl.col("sessions").fill_null(0), pl.col("converting_sessions").fill_null(0)
    )

    def ratio(a: str, b: str) -> pl.Expr:
        return pl.when(pl.col(b) > 0).then(pl.col(a) / pl.col(b)).otherwise(None)

    return kpis.with_columns(
        ratio("revenue", "purchases").alias("average_order_value"),
        ratio("carts", "views").alias("view_to_cart_rate"),
        ratio("purchases", "carts").alias("cart_to_purchase_rate"),
        ratio("converting_sessions", "sessions").alias("session_conversion_rate"),
    ).sort("day")


def _latest(column: str) -> pl.Expr:
    valid = pl.col(column).is_not_null()
    return pl.col(column).filter(valid).sort_by(pl.col("event_time").filter(valid)).last()


def dim_products(events: pl.DataFrame) -> pl.DataFrame:
    # id and code both from the latest event with a code (else the latest event); simultaneous
    # events: the highest id
    category_order = [pl.col("category_code").is_not_null(), "event_time", "category_id"]
    products = events.group_by("product_id").agg(
        pl.col("price").sort_by("event_time", "price").last().alias("latest_price"),
        pl.col("price").min().alias("min_price"),
        pl.col("price").max().alias("max_price"),
        pl.col("category_id").sort_by(category_order).last().alias("category_id"),
        pl.col("category_code").sort_by(category_order).last().alias("category_code"),
        _latest("brand").alias("brand"),
        pl.col("event_time").min().alias("first_seen"),
        pl.col("event_time").max().alias("last_seen"),
        *_counts(),
        _revenue(),
    )
    parts = pl.col("category_code").str.split(".")
    return products.with_columns(
        parts.list.get(0, null_on_oob=True).alias("category_l1"),
        parts.list.get(1, null_on_oob=True).alias("category_l2"),
        pl.when(parts.list.len() > 2)
        .then(parts.list.slice(2).list.join("."))
        .otherwise(None)
        .alias("category_l3"),
    ).sort("product_id")


def dim_users(events: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    purchase = pl.col("event_type") == "purchase"
    users = events.group_by("user_id").agg(
        pl.col("event_time").min().alias("first_seen"),
        pl.col("event_time").max().alias("last_seen"),
        pl.len().alias("events"),
        *_counts()[:3],
        _revenue(),
        pl.col("event_time").filter(purchase).min().alias("first_purchase"),
        pl.col("event_time").filter(purchase).max().alias("last_purchase"),
    )
    per_user = sessions.group_by("user_id").agg(pl.len().alias("sessions"))
    return (
        users.join(per_user, on="user_id", how="left")
        .join(
            _most_frequent(events, "user_id", "l1", "preferred_category"), on="user_id", how="left"
        )
        .join(
            _most_frequent(events, "user_id", "brand", "preferred_brand"), on="user_id", how="left"
        )
        .with_columns(
            pl.col("sessions").fill_null(0),
            (pl.col("last_seen").dt.date() - pl.col("first_seen").dt.date())
            .dt.total_days()
            .alias("tenure_days"),
        )
        .sort("user_id")
    )


def funnel(sessions: pl.DataFrame) -> pl.DataFrame:
    flags = sessions.select(
        pl.col("start_time").dt.strftime("%Y-%m-%d").alias("day"),
        pl.col("main_category").fill_null("(none)").alias("category"),
        (pl.col("views") > 0).alias("s1"),
        ((pl.col("views") > 0) & pl.col("has_cart")).alias("s2"),
        ((pl.col("views") > 0) & pl.col("has_cart") & pl.col("has_purchase")).alias("s3"),
    )
    steps = [pl.len().alias("s0"), pl.col("s1").sum(), pl.col("s2").sum(), pl.col("s3").sum()]
    counts = pl.concat(
        [
            flags.select(steps).with_columns(
                pl.lit("overall").alias("dimension"), pl.lit("all").alias("key")
            ),
            flags.group_by(pl.col("day").alias("key"))
            .agg(steps)
            .with_columns(pl.lit("day").alias("dimension")),
            flags.group_by(pl.col("category").alias("key"))
            .agg(steps)
            .with_columns(pl.lit("category").alias("dimension")),
        ],
        how="diagonal",
    )
    rows = []
    for row in counts.iter_rows(named=True):
        n = [row["s0"], row["s1"], row["s2"], row["s3"]]
        for step, name in enumerate(("session", "view", "cart", "purchase")):
            previous = n[step - 1] if step else None
            rows.append(
                {
                    "dimension": row["dimension"],
                    "key": row["key"],
                    "step": step,
                    "step_name": name,
                    "sessions": n[step],
                    "step_conversion": n[step] / previous if previous else None,
                    "conversion_from_start": n[step] / n[0] if n[0] else None,
                }
            )
    return pl.DataFrame(rows).sort("dimension", "key", "step")


def cohort_retention(events: pl.DataFrame) -> pl.DataFrame:
    weeks = events.with_columns(pl.col("event_time").dt.truncate("1w").dt.date().alias("week"))
    last_week = weeks["week"].max()
    days = set(events["event_time"].dt.date().to_list())

    def complete(week: date) -> bool:
        """Each of the week's seven days has an event (a month not loaded has none)."""
        return all(week + timedelta(days=d) in days for d in range(7))

    grid, actives = [], []
    for kind, frame in (
        ("activity", weeks),
        ("purchase", weeks.filter(pl.col("event_type") == "purchase")),
    ):
        user_weeks = frame.select("user_id", "week").unique()
        first = user_weeks.group_by("user_id").agg(pl.col("week").min().alias("cohort_week"))
        for cohort_week, cohort_users in first.group_by("cohort_week").len().iter_rows():
            for w in range((last_week - cohort_week).days // 7 + 1):
                week = cohort_week + timedelta(weeks=w)
                grid.append((kind, cohort_week, w, cohort_users, complete(week)))
        actives.append(
            user_weeks.join(first, on="user_id")
            .with_columns(
                ((pl.col("week") - pl.col("cohort_week")).dt.total_days() // 7).alias(
                    "weeks_since"
                ),
                pl.lit(kind).alias("cohort_kind"),
            )
            .group_by("cohort_kind", "cohort_week", "weeks_since")
            .agg(pl.len().cast(pl.Int64).alias("active_users"))
        )
    schema = {
        "cohort_kind": pl.String,
        "cohort_week": pl.Date,
        "weeks_since": pl.Int64,
        "cohort_users": pl.Int64,
        "week_complete": pl.Boolean,
    }
    return (
        pl.DataFrame(grid, schema=schema, orient="row")
        .join(pl.concat(actives), on=["cohort_kind", "cohort_week", "weeks_since"], how="left")
        .with_columns(pl.col("active_users").fill_null(0))
        .with_columns((pl.col("active_users") / pl.col("cohort_users")).alias("retention_rate"))
        .sort("cohort_kind", "cohort_week", "weeks_since")
    )


def segment(r: int, f: int, m: int) -> str:
    """The README's RFM rule table, first match wins."""
    if r >= 4 and f >= 4 and m >= 4:
        return "Champions"
    if r >= 3 and f >= 4:
        return "Loyal Customers"
    if r <= 2 and f >= 4 and m >= 4:
        return "Cant Lose Them"
    if r <= 2 and (f >= 3 or m >= 4):
        return "At Risk"
    if r == 1 and f <= 2 and m <= 2:
        return "Lost"
    if r <= 2:
        return "Hibernating"
    if r >= 4 and f == 1:
        return "New Customers"
    return "Regular"


def _quintile(value: pl.Expr, n: int) -> pl.Expr:
    """The README's tie-aware quintile of a higher-is-better value among n buyers: 5 for the
    best value, else 1 + floor(5 x the share of buyers strictly worse)."""
    worse = value.rank("min") - 1
    return pl.when(value == value.max()).then(5).otherwise(1 + (5 * worse) // n).cast(pl.Int64)


def _rfm_scores(recent: pl.Expr, frequency: pl.Expr, monetary: pl.Expr, n: int) -> list[pl.Expr]:
    """r/f/m_score of n buyers, each value higher = better (recent: minus the recency). F is
    1 exactly for one purchase day, and at least 2 for more."""
    f = (
        pl.when(frequency == 1)
        .then(1)
        .otherwise(pl.max_horizontal(2, _quintile(frequency, n)))
        .cast(pl.Int64)
    )
    return [
        _quintile(recent, n).alias("r_score"),
        f.alias("f_score"),
        _quintile(monetary, n).alias("m_score"),
    ]


def rfm_segments(events: pl.DataFrame) -> pl.DataFrame:
    end_of_data: datetime = events["event_time"].max()
    purchases = events.filter(pl.col("event_type") == "purchase")
    buyers = purchases.group_by("user_id").agg(
        pl.col("event_time").max().alias("last_purchase"),
        pl.col("event_time").dt.date().n_unique().alias("frequency"),
        pl.len().alias("purchases"),
        pl.col("price").sum().alias("monetary"),
    )
    scored = buyers.with_columns(
        (pl.lit(end_of_data.date()) - pl.col("last_purchase").dt.date())
        .dt.total_days()
        .alias("recency_days")
    )
    scored = scored.with_columns(
        _rfm_scores(-pl.col("recency_days"), pl.col("frequency"), pl.col("monetary"), scored.height)
    )
    return scored.with_columns(
        pl.struct("r_score", "f_score", "m_score")
        .map_elements(
            lambda s: segment(s["r_score"], s["f_score"], s["m_score"]), return_dtype=pl.String
        )
        .alias("segment")
    ).sort("user_id")


def rfm_segment_summary(rfm: pl.DataFrame) -> pl.DataFrame:
    total_users, total_revenue = rfm.height, rfm["monetary"].sum()
    per = rfm.group_by("segment").agg(
        pl.len().alias("users"),
        pl.col("monetary").mean().alias("average_spend"),
        pl.col("monetary").sum().alias("revenue"),
    )
    return (
        pl.DataFrame({"segment": SEGMENTS})
        .join(per, on="segment", how="left")
        .with_columns(
            pl.col("users").fill_null(0),
            pl.col("revenue").fill_null(0.0),
        )
        .with_columns(
            (pl.col("users") / total_users).alias("user_share"),
            (pl.col("revenue") / total_revenue).alias("revenue_share"),
        )
    )


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def data_profile(month_events: pl.DataFrame, raw_rows: int) -> dict[tuple[str, str, str], object]:
    """(section, key, metric) -> value (a float, or the text of a min / max)."""
    rows = month_events.height
    out: dict[tuple[str, str, str], object] = {("table", "core.events", "rows"): float(rows)}
    for column in (
        "event_time",
        "event_type",
        "product_id",
        "category_id",
        "category_code",
        "brand",
        "price",
        "user_id",
        "user_session",
    ):
        values = month_events[column]
        out["column", column, "null_share"] = values.null_count() / rows
        present = values.drop_nulls()
        out["column", column, "distinct_count"] = float(present.n_unique())
        out["column", column, "min"] = _text(present.min())
        out["column", column, "max"] = _text(present.max())
    for event_type in EVENT_TYPES:
        n = int((month_events["event_type"] == event_type).sum())
        out["event_type", event_type, "events"] = float(n)
        out["event_type", event_type, "share"] = n / rows
    for (category,), group in month_events.with_columns(pl.col("l1").fill_null("(none)")).group_by(
        "l1"
    ):
        prices = group["price"]
        out["price_by_category", category, "events"] = float(prices.len())
        for metric, q in QUANTILES:
            out["price_by_category", category, metric] = prices.quantile(q, "linear")
    out["ingest", "loaded", "loaded"] = float(rows)
    if raw_rows > rows:
        out["ingest", "duplicate", "duplicate"] = float(raw_rows - rows)
    return out
