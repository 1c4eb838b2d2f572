"""Formatting and layout shared by the pages."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data

MISSING = "–"
PLOTLY_CONFIG = {"displaylogo": False}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def integer(value: Any) -> str:
    """12,345"""
    return MISSING if _missing(value) else f"{round(value):,}"


def money(value: Any) -> str:
    """12,345.67 (the data gives no currency)"""
    return MISSING if _missing(value) else f"{value:,.2f}"


def percent(value: Any, digits: int = 2) -> str:
    """A share as 12.34%"""
    return MISSING if _missing(value) else f"{100 * value:.{digits}f}%"


def decimal(value: Any, digits: int = 3) -> str:
    return MISSING if _missing(value) else f"{value:,.{digits}f}"


def mebibytes(value: Any) -> str:
    return MISSING if _missing(value) else f"{value / 2**20:,.1f} MiB"


def when(value: datetime | date | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, datetime):
        suffix = " UTC" if value.tzinfo is not None else ""
        return f"{value:%Y-%m-%d %H:%M}{suffix}"
    return f"{value:%Y-%m-%d}"


def month_name(value: date | datetime) -> str:
    return f"{value:%B %Y}"


@contextmanager
def section(what: str) -> Iterator[None]:
    """One part of a page: a table the pipeline has not built yet (the model on too little
    history, say) becomes a note there instead of failing the page."""
    try:
        yield
    except data.NotBuilt as exc:
        st.info(f"{what}: not in the warehouse yet ({exc.detail}). `cip run` builds it.")


def small_multiples(
    frame: pl.DataFrame, x: str, facet: str, y: str = "value", height: int = 480
) -> go.Figure:
    """One line per value of `facet`, stacked, each on its own y scale (views outnumber
    purchases a hundredfold)."""
    fig = px.line(frame, x=x, y=y, facet_row=facet, color=facet, height=height)
    fig.update_yaxes(matches=None, title=None, rangemode="tozero")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(showlegend=False, xaxis_title=None)
    return fig


def chart(fig: go.Figure, key: str | None = None) -> None:
    fig.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10})
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key)
