"""Executive overview: revenue and daily active users, the session funnel and conversion by
category, for every month or one."""

from __future__ import annotations

from datetime import date

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
import streamlit as st
from plotly.subplots import make_subplots

from cip_pipeline.dashboard import data, ui

ALL_MONTHS = "All months"


def month_filter() -> date | None:
    months = data.data_months()
    choice = st.selectbox(
        "Month",
        [ALL_MONTHS, *months],
        format_func=lambda m: m if isinstance(m, str) else ui.month_name(m),
        key="executive_month",
    )
    return None if isinstance(choice, str) else choice


def kpis(start: date, end: date) -> None:
    head = data.row("period_headline", start=start, end=end)
    cols = st.columns(5)
    cols[0].metric("Revenue", ui.money(head.get("revenue")), border=True)
    cols[1].metric("Orders", ui.integer(head.get("orders")), border=True)
    cols[2].metric("Average DAU", ui.integer(head.get("average_dau")), border=True)
    cols[3].metric(
        "Conversion",
        ui.percent(head.get("conversion")),
        border=True,
        help="sessions with a purchase / sessions",
    )
    cols[4].metric(
        "Average order value",
        ui.money(head.get("average_order_value")),
        border=True,
        help="revenue / purchase events",
    )


def revenue_and_dau(start: date, end: date) -> None:
    st.subheader("Revenue and daily active users")
    days = data.query("daily_kpis", start=start, end=end)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Bar(x=days["day"].to_list(), y=days["revenue"].to_list(), name="revenue", opacity=0.6)
    )
    fig.add_trace(
        go.Scatter(
            x=days["day"].to_list(),
            y=days["dau"].to_list(),
            name="DAU",
            mode="lines+markers",
            line={"width": 3, "color": "#d62728"},
        ),
        secondary_y=True,
    )
    fig.update_yaxes(title_text="revenue", secondary_y=False)
    fig.update_yaxes(title_text="daily active users", secondary_y=True)
    fig.update_layout(legend={"orientation": "h", "y": 1.1})
    ui.chart(fig, key="revenue_dau")


def funnel(start: date, end: date) -> None:
    st.subheader("Session funnel")
    steps = data.query("funnel_period", start=start, end=end)
    labels = {
        "session": "sessions",
        "view": "with a view",
        "cart": "viewed and carted",
        "purchase": "viewed, carted, bought",
    }
    fig = go.Figure(
        go.Funnel(
            y=[labels.get(s, s) for s in steps["step_name"]],
            x=steps["sessions"].to_list(),
            textinfo="value+percent initial+percent previous",
        )
    )
    ui.chart(fig, key="funnel")
    st.caption("Sessions by the day they began; each step keeps the sessions of the one before.")


def category_conversion(month: date | None, start: date, end: date) -> None:
    st.subheader("Conversion by category")
    if month is None:
        table = data.query("category_conversion_all")
    else:
        table = data.query("category_conversion_period", start=start, end=end)
    table = table.with_columns((pl.col("converted") / pl.col("sessions")).alias("conversion"))
    fig = px.bar(
        table.sort("conversion"),
        x="conversion",
        y="category",
        orientation="h",
        hover_data=["sessions", "converted"],
    )
    fig.update_layout(xaxis_tickformat=".2%", yaxis_title=None)
    ui.chart(fig, key="category_conversion")
    st.caption(
        "Sessions that viewed, carted and bought / sessions, by the session's main top-level "
        "category ('(none)': no event with a category code)."
    )


def render() -> None:
    st.title("Executive overview")
    month = month_filter()
    start, end = data.period(month)
    kpis(start, end)
    with ui.section("Revenue and DAU"):
        revenue_and_dau(start, end)
    left, right = st.columns(2)
    with left, ui.section("Funnel"):
        funnel(start, end)
    with right, ui.section("Conversion by category"):
        category_conversion(month, start, end)


if __name__ == "__main__":
    render()
