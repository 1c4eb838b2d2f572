"""Home: headline metrics, data freshness per month, and how the pipeline is laid out."""

from __future__ import annotations

from typing import Any

import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data, ui

# How data moves between the stores (README, "What is where"): files, then the warehouse's
# schemas. The tables in each schema and their rows come from the warehouse itself.
FLOW = [
    ("raw", "lake"),
    ("lake", "core"),
    ("core", "analytics"),
    ("core", "ml"),
    ("core", "experiments"),
    ("analytics", "experiments"),
]
# Per month: the step that read the raw file, the load into the warehouse, the derivation.
MONTH_STEPS = {
    "events_parquet": "validated at",
    "core/events": "loaded at",
    "core/fact_sessions": "derived at",
}


def headline() -> dict[str, Any]:
    head = data.row("headline")
    if not head or head.get("events") is None:
        raise data.WarehouseMissing("The warehouse holds no events yet: run `cip run`.")
    cols = st.columns(5)
    cols[0].metric("Events", ui.integer(head["events"]), border=True)
    cols[1].metric("Users", ui.integer(head["users"]), border=True)
    cols[2].metric("Revenue", ui.money(head["revenue"]), border=True, help="sum of purchase prices")
    cols[3].metric(
        "Orders",
        ui.integer(head["orders"]),
        border=True,
        help="purchase events: the data has no order id, each purchase event is one item",
    )
    cols[4].metric(
        "Conversion",
        ui.percent(head["conversion"]),
        border=True,
        help=f"sessions with a purchase / sessions ({ui.integer(head['sessions'])})",
    )
    return head


def freshness() -> None:
    st.subheader("Data freshness")
    months = data.query("month_rows")
    mats = data.materializations()
    table = months.with_columns(pl.col("month").dt.strftime("%Y-%m").alias("month"))
    steps = (
        mats.filter(pl.col("partition").is_not_null() & pl.col("asset").is_in(MONTH_STEPS))
        if mats is not None
        else None
    )
    if steps is not None and steps.height:
        per_month = steps.with_columns(
            pl.col("partition").str.slice(0, 7).alias("month"),
            pl.col("asset").replace_strict(MONTH_STEPS),
        ).pivot("asset", index="month", values="materialized_at")
        table = table.join(per_month, on="month", how="left").select(
            *months.columns, *[s for s in MONTH_STEPS.values() if s in per_month.columns]
        )
        st.caption("Last materialization of each month's steps (UTC), from the Dagster instance.")
    else:
        written = data.lake_written()
        table = table.with_columns(
            pl.col("month")
            .replace_strict(written, default=None, return_dtype=pl.Datetime("us", "UTC"))
            .alias("Parquet written at")
        )
        st.caption(
            "No Dagster history of the months beside this warehouse: when each month reached "
            "the lake (UTC)."
        )
    times = {
        c: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
        for c, t in table.schema.items()
        if isinstance(t, pl.Datetime)
    }
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            **times,
            "loaded": st.column_config.NumberColumn("rows loaded", format="localized"),
            "duplicates": st.column_config.NumberColumn(format="localized"),
            "quarantined": st.column_config.NumberColumn(format="localized"),
        },
    )
    if mats is not None and mats.height:
        overall = (
            mats.filter(pl.col("partition").is_null())
            .sort("materialized_at", descending=True)
            .select(
                "asset",
                pl.col("materialized_at").alias("last materialized"),
                pl.col("run_id").str.slice(0, 8).alias("run"),
            )
        )
        with st.expander(f"Tables over all months ({overall.height})"):
            st.dataframe(
                overall,
                hide_index=True,
                column_config={
                    "last materialized": st.column_config.DatetimeColumn(
                        format="YYYY-MM-DD HH:mm:ss"
                    )
                },
            )


def _dot(catalog: pl.DataFrame, files: pl.DataFrame) -> str:
    def label(lines: list[str]) -> str:
        return "\\l".join(line.replace('"', "'") for line in lines) + "\\l"

    raw_bytes = files["raw_bytes"].sum() or 0  # the file read per month, gzip ones compressed
    gzip = int(files["raw_gzip"].sum() or 0)
    parquet_bytes = files["events_bytes"].sum() or 0
    nodes = {
        "raw": label(
            [
                f"raw/ (CSV{f', {gzip} gzip' if gzip else ''})",
                f"{files['raw_file'].count()} month files",
                ui.mebibytes(raw_bytes),
            ]
        ),
        "lake": label(
            [
                "lake/ (Parquet)",
                f"events {ui.integer(files['events_rows'].sum() or 0)} rows",
                f"quarantine {ui.integer(files['quarantine_rows'].sum() or 0)} rows",
                ui.mebibytes(parquet_bytes),
            ]
        ),
    }
    for schema, tables in catalog.group_by("schema", maintain_order=True):
        lines = [f"{schema[0]} (DuckDB)"] + [
            f"{r['name']}  {ui.integer(r['rows'])}" for r in tables.iter_rows(named=True)
        ]
        nodes[str(schema[0])] = label(lines)
    body = [
        "rankdir=LR;",
        'node [shape=box, style="rounded,filled", fillcolor="#f4f6fb", fontname="Helvetica", '
        "fontsize=10];",
    ]
    body += [f'"{name}" [label="{text}"];' for name, text in nodes.items()]
    body += [f'"{a}" -> "{b}";' for a, b in FLOW if a in nodes and b in nodes]
    return "digraph {\n" + "\n".join(body) + "\n}"


def layout() -> None:
    st.subheader("How the pipeline is laid out")
    st.markdown(
        "Monthly raw files are validated into the Parquet lake (rejected rows to its "
        "quarantine), loaded into `core` and derived into the star schema, then the "
        "behavioural `analytics`, the `ml` models (registry, scores, recommendations) and the "
        "`experiments` plans. Every table below is a Dagster asset; row counts are DuckDB's "
        "estimates."
    )
    catalog = data.query("catalog")
    st.graphviz_chart(_dot(catalog, data.storage_files()))
    with st.expander(f"Warehouse tables ({catalog.height})"):
        st.dataframe(
            catalog,
            hide_index=True,
            column_config={"rows": st.column_config.NumberColumn(format="localized")},
        )


def render() -> None:
    st.title("Customer Intelligence Platform")
    head = headline()
    st.caption(
        f"REES46 e-commerce clickstream from {ui.when(head['first_day'])} to "
        f"{ui.when(head['last_day'])}."
    )
    with ui.section("Data freshness"):
        freshness()
    with ui.section("Pipeline layout"):
        layout()


if __name__ == "__main__":
    render()
