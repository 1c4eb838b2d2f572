"""Optimization: what the storage formats cost (CSV, Parquet, the warehouse), the type chosen
for each column, and the figures of the last `cip bench` run."""

from __future__ import annotations

import statistics
from typing import Any

import plotly.express as px
import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data, ui

MIB = 2**20


def raw_label(files: pl.DataFrame) -> tuple[str, str]:
    """What the raw figures measure: the metric's label, and what "vs" compares with. A gzip
    file's bytes are compressed CSV (the pipeline records no uncompressed size)."""
    read = files.filter(pl.col("raw_file").is_not_null())
    gzip = int(read["raw_gzip"].sum())
    if gzip == 0:
        return "Raw CSV files", "raw CSV"
    if gzip == read.height:
        return "Raw CSV files (gzip)", "gzip CSV"
    return f"Raw CSV files ({gzip} of {read.height} gzip)", "raw files, partly gzip"


def sizes() -> pl.DataFrame:
    st.subheader("CSV vs Parquet vs warehouse")
    files = data.storage_files()
    wh_bytes = data.warehouse_bytes()
    raw, parquet = files["raw_bytes"].sum() or 0, files["events_bytes"].sum() or 0
    quarantine = files["quarantine_bytes"].sum() or 0
    rows = files["events_rows"].sum() or 0
    label, versus = raw_label(files)
    cols = st.columns(4)
    cols[0].metric(
        label,
        ui.mebibytes(raw),
        border=True,
        help="per month the one raw file the pipeline reads (a .csv shadows a .csv.gz), "
        "bytes on disk: " + ", ".join(files["raw_file"].drop_nulls()),
    )
    cols[1].metric(
        "Parquet (events)",
        ui.mebibytes(parquet),
        delta=f"-{ui.percent(1 - parquet / raw, 1)} vs {versus}" if raw and parquet else None,
        delta_color="inverse",
        border=True,
        help=f"plus {ui.mebibytes(quarantine)} of quarantine Parquet",
    )
    cols[2].metric(
        "Warehouse file",
        ui.mebibytes(wh_bytes),
        border=True,
        help="the whole DuckDB file: core.events and every derived table, model and plan",
    )
    cols[3].metric(
        "Parquet bytes per event",
        ui.decimal(parquet / rows, 1) if rows else ui.MISSING,
        delta=f"{versus}: {ui.decimal(raw / rows, 1)}" if rows and raw else None,
        delta_color="off",
        delta_arrow="off",
        border=True,
    )
    if files.height:
        raw_store = pl.when(pl.col("raw_gzip")).then(pl.lit("raw CSV (gzip)"))
        per_month = (
            files.select(
                "month",
                "raw_gzip",
                pl.col("raw_bytes").alias("raw"),
                pl.col("events_bytes").alias("events Parquet"),
                pl.col("quarantine_bytes").alias("quarantine Parquet"),
            )
            .unpivot(index=["month", "raw_gzip"], variable_name="store", value_name="bytes")
            .with_columns(
                pl.when(pl.col("store") == "raw")
                .then(raw_store.otherwise(pl.lit("raw CSV")))
                .otherwise(pl.col("store"))
                .alias("store")
            )
        )
        per_month = per_month.with_columns((pl.col("bytes") / MIB).alias("MiB"))
        fig = px.bar(per_month, x="month", y="MiB", color="store", barmode="group")
        fig.add_hline(
            y=wh_bytes / MIB,
            line_dash="dot",
            annotation_text=f"warehouse file (all months) {ui.mebibytes(wh_bytes)}",
        )
        fig.update_layout(xaxis_title=None, xaxis_type="category")
        ui.chart(fig, key="sizes")
    with ui.section("Database blocks"):
        size = data.row("database_size")
        if size:
            st.caption(
                f"DuckDB file: {ui.integer(size['used_blocks'])} blocks used and "
                f"{ui.integer(size['free_blocks'])} free of {ui.integer(size['block_size'])} "
                f"bytes each; WAL {size['wal_size']}."
            )
    return files


def column_types(files: pl.DataFrame) -> None:
    st.subheader("Types chosen per column")
    warehouse = data.query("events_columns").rename(
        {"column_name": "column", "data_type": "warehouse (core.events)"}
    )
    months = files.filter(pl.col("events_bytes") > 0)["month"].to_list()
    parquet = data.parquet_columns(months[-1]) if months else None
    if parquet is None:
        table = warehouse.with_columns(pl.lit("text").alias("CSV"))
    else:
        table = (
            parquet.rename({"arrow_type": "Parquet (Arrow type)"})
            .with_columns(
                pl.lit("text").alias("CSV"),
                (pl.col("compressed_bytes") / MIB).alias("Parquet MiB"),
                (pl.col("uncompressed_bytes") / pl.col("compressed_bytes")).alias(
                    "compression ratio"
                ),
            )
            .join(warehouse, on="column", how="full", coalesce=True)
        )
        st.caption(
            f"Parquet figures: the {months[-1]} events file ({parquet['compression'][0]}), "
            "per column over its row groups."
        )
    order = [
        "column",
        "CSV",
        "Parquet (Arrow type)",
        "parquet_physical",
        "Parquet MiB",
        "compression ratio",
        "warehouse (core.events)",
    ]
    st.dataframe(
        table.select([c for c in order if c in table.columns]),
        hide_index=True,
        column_config={
            "Parquet MiB": st.column_config.NumberColumn(format="%.2f"),
            "compression ratio": st.column_config.NumberColumn(format="%.1f x"),
        },
    )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def benchmark() -> None:
    st.subheader("Last benchmark run")
    report = data.latest_bench()
    if report is None:
        st.info(
            "No benchmark report yet. `cip bench --events 1e6` runs the whole pipeline into a "
            "fresh warehouse and writes one under `$CIP_DATA_DIR/bench/results`."
        )
        return
    fig: dict[str, Any] = report.figures
    st.caption(
        f"`{report.path.name}`: {ui.integer(fig['events'])} events, seed {fig['seed']}, "
        f"{fig['repeat']} run(s), started {fig['started']}."
    )
    cols = st.columns(4)
    cols[0].metric("Full run (median)", f"{ui.decimal(_median(fig['totals']), 1)} s", border=True)
    cols[1].metric("Peak RSS", ui.mebibytes(max(fig["peak_rss"], default=None)), border=True)
    cols[2].metric(
        "Parquet vs CSV",
        ui.percent(1 - fig["parquet_bytes"] / fig["raw_bytes"], 1) + " smaller"
        if fig["raw_bytes"]
        else ui.MISSING,
        border=True,
    )
    cols[3].metric(
        "Nightly refresh (median)",
        f"{ui.decimal(_median(fig['refresh_totals']), 1)} s" if fig["refresh_totals"] else "–",
        border=True,
    )
    assets = []
    for name, a in fig["assets"].items():
        med = _median(a["seconds"])
        assets.append(
            {
                "asset": name,
                "rows": a["rows"],
                "seconds (median)": med,
                "rows/s": (a["rows"] or 0) / med if med else None,
                "peak RSS MiB": max(a["peak_rss"], default=0) / MIB,
            }
        )
    frame = pl.DataFrame(assets).sort("seconds (median)", descending=True)
    left, right = st.columns([2, 3])
    with left:
        bars = px.bar(frame.head(12), x="seconds (median)", y="asset", orientation="h")
        bars.update_yaxes(autorange="reversed", title=None)
        ui.chart(bars, key="bench")
    with right:
        st.dataframe(
            frame,
            hide_index=True,
            column_config={
                "rows": st.column_config.NumberColumn(format="localized"),
                "seconds (median)": st.column_config.NumberColumn(format="%.2f"),
                "rows/s": st.column_config.NumberColumn(format="localized"),
                "peak RSS MiB": st.column_config.NumberColumn(format="%.0f"),
            },
        )


def render() -> None:
    st.title("Optimization")
    files = sizes()
    with ui.section("Column types"):
        column_types(files)
    benchmark()


if __name__ == "__main__":
    render()
