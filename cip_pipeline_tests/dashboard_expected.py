"""What the dashboard should show, computed independently of it: straight from core.events,
core.fact_sessions, the registry and the raw files, never through `sql/dashboard.sql`."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

from cip_pipeline_tests.warehouse_sample import read_warehouse


def number(text: str) -> float:
    """A figure as the dashboard prints it (`12,345.67`, `5.76%`, `19.8 MiB`, `103 days`)."""
    match = re.search(r"-?[\d,]+(?:\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group(0).replace(",", ""))


def headline(root: Path, month: date | None = None) -> dict[str, Any]:
    """Events, users, revenue, orders, buyers, session conversion and average DAU, over every
    month or one."""
    where = ""
    session_where = ""
    if month is not None:
        end = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        where = f"WHERE event_time >= DATE '{month}' AND event_time < DATE '{end}'"
        session_where = f"WHERE start_time >= DATE '{month}' AND start_time < DATE '{end}'"
    events = read_warehouse(
        root,
        f"""SELECT count(*) AS events,
                  count(DISTINCT user_id) AS users,
                  coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
                  count(*) FILTER (WHERE event_type = 'purchase') AS orders,
                  count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase') AS buyers
           FROM core.events {where}""",
    ).row(0, named=True)
    sessions = read_warehouse(
        root,
        f"""SELECT count(*) AS sessions,
                  count(*) FILTER (WHERE has_purchase) / count(*) AS conversion
           FROM core.fact_sessions {session_where}""",
    ).row(0, named=True)
    days = read_warehouse(
        root,
        f"""SELECT avg(users) AS average_dau, count(*) AS days
           FROM (SELECT event_time::DATE, count(DISTINCT user_id) AS users
                 FROM core.events {where} GROUP BY 1)""",
    ).row(0, named=True)
    return {**events, **sessions, **days}


def latest_model(root: Path) -> dict[str, Any]:
    row = read_warehouse(
        root,
        "SELECT version, metrics FROM ml.model_registry "
        "WHERE model_name = 'ml/propensity_model' ORDER BY version DESC LIMIT 1",
    ).row(0, named=True)
    return {"version": row["version"], "metrics": json.loads(row["metrics"])}


def segment_baselines(root: Path) -> dict[str, tuple[float, float]]:
    """Each RFM segment's next-window purchase rate and daily active buyers (the window is
    the experiments' default 14 days)."""
    frame = read_warehouse(
        root,
        "SELECT segment, avg(bought::INT) AS rate, sum(active::INT) / 14 AS daily "
        "FROM experiments.segment_outcomes GROUP BY segment",
    )
    return {r["segment"]: (r["rate"], r["daily"]) for r in frame.iter_rows(named=True)}


def recommendations(root: Path, product: int) -> list[tuple[int, str]]:
    frame = read_warehouse(
        root,
        f"SELECT recommended_product_id, source FROM ml.recommendations "
        f"WHERE product_id = {int(product)} ORDER BY rank",
    )
    return [(r["recommended_product_id"], r["source"]) for r in frame.iter_rows(named=True)]


def raw_mebibytes(root: Path) -> float:
    return sum(f.stat().st_size for f in (root / "raw").iterdir() if f.is_file()) / 2**20
