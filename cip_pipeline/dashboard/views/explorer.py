"""Data explorer: event mix, daily and hourly trends, prices by category, missing values
and the quarantine, per month."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data, ui

# Above this many events a month's hour-of-day profile is read from a 2% block sample.
SAMPLE_ABOVE_ROWS = 10_000_000
EVENT_ORDER = ["view", "cart", "remove_from_cart", "purchase"]


def _profile(month: datetime, section: str) -> pl.DataFrame:
    return data.query("profile_section", month=month, section=section)


def event_mix(month: datetime) -> None:
    st.subheader("Event mix")
    mix = _profile(month, "event_type").pivot("metric", index="key", values="value")
    mix = mix.rename({"key": "event_type"}).sort("events", descending=True)
    fig = px.bar(mix, x="event_type", y="events", text=[ui.percent(s) for s in mix["share"]])
    fig.update_layout(xaxis_title=None, yaxis_title="events")
    ui.chart(fig, key="event_mix")


def missing_values(month: datetime) -> None:
    st.subheader("Missing values per column")
    columns = _profile(month, "column").filter(pl.col("metric") == "null_share")
    columns = columns.select(pl.col("key").alias("column"), pl.col("value").alias("null_share"))
    fig = px.bar(columns, x="null_share", y="column", orientation="h")
    fig.update_layout(xaxis_tickformat=".1%", xaxis_title="share of rows missing", yaxis_title=None)
    fig.update_yaxes(autorange="reversed")
    ui.chart(fig, key="missing_values")


def daily_trend(start: date, end: date) -> pl.DataFrame:
    st.subheader("Daily trend")
    days = data.query("daily_kpis", start=start, end=end)
    long = days.unpivot(["views", "carts", "purchases", "dau"], index="day", variable_name="series")
    ui.chart(ui.small_multiples(long, x="day", facet="series", height=520), key="daily_trend")
    return days


def hourly_trend(month: datetime, start: date, end: date, rows: float, days: pl.DataFrame) -> None:
    st.subheader("Hourly trend")
    left, right = st.columns(2)
    with left:
        sampled = rows > SAMPLE_ABOVE_ROWS
        name = "hour_of_day_sampled" if sampled else "hour_of_day"
        hours = data.query(name, start=start, end=end)
        hours = hours.with_columns((pl.col("events") / pl.col("events").sum()).alias("share"))
        fig = px.bar(
            hours,
            x="hour_of_day",
            y="share",
            color="event_type",
            category_orders={"event_type": EVENT_ORDER},
        )
        fig.update_layout(
            title="share of the month's events by hour of day (UTC)",
            yaxis_tickformat=".1%",
            xaxis_title=None,
            yaxis_title=None,
        )
        ui.chart(fig, key="hour_of_day")
        if sampled:
            st.caption("From a fixed 2% block sample of the month's events.")
    with right:
        busiest = days.sort("events", descending=True)["day"][0] if days.height else start
        day = st.date_input(
            "Day",
            value=busiest,
            min_value=start,
            max_value=end - timedelta(days=1),
            key="explorer_day",
            help="the month's busiest day by default",
        )
        first = datetime(day.year, day.month, day.day)
        per_hour = data.query(
            "hourly_events", start=first, end=first + timedelta(days=1), month=month
        )
        fig = ui.small_multiples(per_hour, x="hour", y="events", facet="event_type", height=420)
        fig.update_layout(title=f"events per hour on {day:%Y-%m-%d} (UTC)")
        ui.chart(fig, key="hourly_events")


def prices(month: datetime) -> None:
    st.subheader("Price distribution by category")
    quantiles = _profile(month, "price_by_category").pivot("metric", index="key", values="value")
    quantiles = quantiles.sort("p50", descending=True)
    fig = go.Figure(
        go.Box(
            x=quantiles["key"].to_list(),
            lowerfence=quantiles["min"].to_list(),
            q1=quantiles["p25"].to_list(),
            median=quantiles["p50"].to_list(),
            q3=quantiles["p75"].to_list(),
            upperfence=quantiles["max"].to_list(),
            name="price",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=quantiles["key"].to_list(),
            y=quantiles["p95"].to_list(),
            mode="markers",
            marker_symbol="line-ew-open",
            marker_size=18,
            name="95th percentile",
        )
    )
    fig.update_layout(yaxis_title="price", xaxis_title="top-level category ('(none)': no code)")
    ui.chart(fig, key="prices")
    st.caption("Boxes: quartiles; whiskers: min and max; from the month's data profile.")


def quarantine() -> None:
    st.subheader("Quarantine per month")
    audit = data.query("ingest_audit").with_columns(pl.col("month").dt.strftime("%Y-%m"))
    totals = audit.group_by("month").agg(pl.col("rows").sum().alias("rows_in"))
    rejected = (
        audit.filter(pl.col("outcome") != "loaded")
        .join(totals, on="month")
        .with_columns((pl.col("rows") / pl.col("rows_in")).alias("share"))
        .sort("month", "rows", descending=[False, True])
    )
    if rejected.height == 0:
        st.success("No row was quarantined or left out as a duplicate.")
        return
    left, right = st.columns([3, 2])
    with left:
        fig = px.bar(rejected, x="month", y="rows", color="reason", barmode="group")
        fig.update_layout(xaxis_title=None, yaxis_title="rows", xaxis_type="category")
        ui.chart(fig, key="quarantine")
    with right:
        st.dataframe(
            rejected.select("month", "outcome", "reason", "rows", "share"),
            hide_index=True,
            column_config={
                "rows": st.column_config.NumberColumn(format="localized"),
                "share": st.column_config.NumberColumn(format="percent"),
            },
        )
    st.caption(
        "Duplicates are exact repeats left out of the load; quarantined rows failed "
        "validation (reasons as in the lake's quarantine files). Share: of the month's rows."
    )


def render() -> None:
    st.title("Data explorer")
    months = data.query("profile_months")["month"].to_list()
    if not months:
        raise data.NotBuilt("analytics.data_profile has no month yet")
    month = st.selectbox(
        "Month", months, index=len(months) - 1, format_func=ui.month_name, key="explorer_month"
    )
    start, end = data.month_bounds(month.date())
    rows = _profile(month, "table")["value"].sum()
    st.caption(f"{ui.integer(rows)} events in {ui.month_name(month)}.")
    left, right = st.columns(2)
    with left, ui.section("Event mix"):
        event_mix(month)
    with right, ui.section("Missing values"):
        missing_values(month)
    with ui.section("Trends"):
        days = daily_trend(start, end)
        hourly_trend(month, start, end, rows, days)
    with ui.section("Prices"):
        prices(month)
    with ui.section("Quarantine"):
        quarantine()


if __name__ == "__main__":
    render()
