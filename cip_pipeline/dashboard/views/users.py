"""User intelligence: the RFM landscape, segment shares and value, and cohort retention."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data, ui

COHORT_KINDS = {
    "activity": "Activity: users by the week of their first event, active in later weeks",
    "purchase": "Purchase: buyers by the week of their first purchase, buying again later",
}


def segments() -> pl.DataFrame:
    summary = data.query("rfm_summary")
    buyers = int(summary["users"].sum())
    # No share of revenue without buyers (or when they all spent 0): no top segment then.
    shared = summary.filter(pl.col("revenue_share").is_not_null())
    cols = st.columns(4)
    cols[0].metric("Buyers", ui.integer(buyers), border=True)
    cols[1].metric("Buyer revenue", ui.money(summary["revenue"].sum()), border=True)
    if shared.height:
        top = shared.sort("revenue_share", descending=True).row(0, named=True)
        cols[2].metric(
            "Top segment by revenue",
            top["segment"],
            delta=f"{ui.percent(top['revenue_share'], 1)} of revenue",
            delta_color="off",
            delta_arrow="off",
            border=True,
        )
    else:
        cols[2].metric("Top segment by revenue", ui.MISSING, border=True)
    cols[3].metric(
        "Average spend per buyer",
        ui.money(summary["revenue"].sum() / buyers if buyers else None),
        border=True,
    )
    if not buyers:
        st.info(
            "No buyers yet: no purchase is in the warehouse, so there is no RFM landscape and "
            "no share of buyers or revenue to show."
        )
    return summary


def landscape(summary: pl.DataFrame) -> None:
    st.subheader("RFM landscape")
    sample = data.query("rfm_landscape")
    order = summary["segment"].to_list()
    # On a log axis a spend of 0 (items priced 0) would drop out silently: plot spend + 1.
    sample = sample.with_columns((pl.col("monetary").clip(lower_bound=0) + 1).alias("spend_1"))
    fig = px.scatter(
        sample,
        x="recency_days",
        y="spend_1",
        size="frequency",
        color="segment",
        category_orders={"segment": order},
        color_discrete_sequence=px.colors.qualitative.Bold,
        hover_data={
            "user_id": True,
            "rfm_code": True,
            "frequency": True,
            "monetary": ":,.2f",
            "spend_1": False,
        },
        log_y=True,
        size_max=18,
        opacity=0.7,
    )
    fig.update_layout(
        xaxis_title="recency: days since the last purchase",
        yaxis_title="monetary: total spend + 1 (log scale)",
    )
    ui.chart(fig, key="rfm_landscape")
    free = int((sample["monetary"] <= 0).sum())
    st.caption(
        f"A fixed random sample of {ui.integer(sample.height)} of "
        f"{ui.integer(summary['users'].sum())} buyers; point size: purchase days. Spend is "
        "plotted plus 1 so that buyers who spent 0 stay on the log axis"
        + (f" ({ui.integer(free)} here, at 1)." if free else ".")
    )


def shares(summary: pl.DataFrame) -> None:
    st.subheader("Segment shares and value")
    if summary["users"].sum():  # without buyers every share is empty: the table alone
        long = summary.select(
            "segment",
            pl.col("user_share").alias("share of buyers"),
            pl.col("revenue_share").alias("share of revenue"),
        ).unpivot(index="segment", variable_name="share", value_name="value")
        left, table = st.columns([1, 1])
        with left:
            fig = px.bar(long, x="segment", y="value", color="share", barmode="group")
            fig.update_layout(yaxis_tickformat=".0%", xaxis_title=None, yaxis_title=None)
            ui.chart(fig, key="segment_shares")
    else:
        table = st.container()
    with table:
        st.dataframe(
            summary.select(
                "segment",
                "users",
                "user_share",
                "revenue",
                "revenue_share",
                "average_spend",
                "average_recency_days",
                "average_frequency",
            ),
            hide_index=True,
            column_config={
                "users": st.column_config.NumberColumn(format="localized"),
                "user_share": st.column_config.NumberColumn("share", format="percent"),
                "revenue": st.column_config.NumberColumn(format="localized"),
                "revenue_share": st.column_config.NumberColumn("of revenue", format="percent"),
                "average_spend": st.column_config.NumberColumn(format="%.2f"),
                "average_recency_days": st.column_config.NumberColumn(
                    "recency (days)", format="%.1f"
                ),
                "average_frequency": st.column_config.NumberColumn("purchase days", format="%.2f"),
            },
        )


def retention() -> None:
    st.subheader("Cohort retention")
    kind = st.radio(
        "Cohorts",
        list(COHORT_KINDS),
        format_func=lambda k: COHORT_KINDS[k],
        key="cohort_kind",
    )
    cohorts = data.query("cohort_retention", kind=kind)
    if cohorts.height == 0:
        st.info("No cohort of this kind yet.")
        return
    # A week the data covers in part (usually the last) would read as low retention: blank.
    # Week 0 stays: it is 100% by definition however much of the week is seen.
    shown = pl.when(pl.col("week_complete") | (pl.col("weeks_since") == 0)).then(
        pl.col("retention_rate")
    )
    grid = (
        cohorts.with_columns(shown.alias("shown"))
        .pivot("weeks_since", index="cohort_week", values="shown")
        .sort("cohort_week")
    )
    weeks = [c for c in grid.columns if c != "cohort_week"]
    sizes = cohorts.filter(pl.col("weeks_since") == 0).sort("cohort_week")["cohort_users"]
    labels = [
        f"{w:%Y-%m-%d} ({ui.integer(n)})" for w, n in zip(grid["cohort_week"], sizes, strict=True)
    ]
    z = grid.select(pl.col(weeks).cast(pl.Float64)).to_numpy()
    later = cohorts.filter((pl.col("weeks_since") > 0) & pl.col("week_complete"))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[int(w) for w in weeks],
            y=labels,
            colorscale="Blues",
            zmin=0,
            zmax=max(0.05, float(later["retention_rate"].max() or 0)),
            text=[[ui.percent(v, 1) if v == v else "" for v in r] for r in z],
            texttemplate="%{text}",
            hovertemplate="cohort %{y}<br>week %{x}: %{z:.2%}<extra></extra>",
            hoverongaps=False,
        )
    )
    fig.update_layout(xaxis_title="weeks since the cohort's week", yaxis_title="cohort (users)")
    fig.update_yaxes(autorange="reversed")
    ui.chart(fig, key="retention")
    partial = cohorts.filter((pl.col("weeks_since") > 0) & ~pl.col("week_complete")).height
    st.caption(
        "Week 0 is 100% by definition; the colour scale spans the later weeks. Blank: weeks "
        "the data covers only in part or not at all (the last week, usually, or a month not "
        "loaded), where retention would read low"
        + (f" ({ui.integer(partial)} cells)." if partial else ".")
    )


def render() -> None:
    st.title("User intelligence")
    with ui.section("RFM segments"):
        summary = segments()
        if summary["users"].sum():  # an empty scatter fails in Plotly (no point to size)
            landscape(summary)
        shares(summary)
    with ui.section("Cohort retention"):
        retention()


if __name__ == "__main__":
    render()
