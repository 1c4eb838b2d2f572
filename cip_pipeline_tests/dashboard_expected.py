"""What the dashboard should show, computed independently of it: straight from core.events,
core.fact_sessions, the pipeline's model and experiment tables and the raw files (the
pipeline's own rule for which is read), never through `sql/dashboard.sql` or the dashboard's
code."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import polars as pl

from cip_pipeline.resources import LakeResource
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


@dataclass(frozen=True)
class SegmentBaseline:
    rate: float  # purchase rate of the members active in the next window
    reached: list[int]  # distinct members who had visited by the end of each day of it
    people: int  # the segment's members

    @property
    def latest_week(self) -> Fraction:
        """New members per day over the window's last 7 days."""
        return Fraction(self.reached[-1] - self.reached[-8], 7)

    def days(self, total: int) -> tuple[int, bool] | None:
        """Days until `total` members have visited (and whether past the window, at the
        latest week's rate); None past the segment's size or without new arrivals."""
        for day, have in enumerate(self.reached, start=1):
            if have >= total:
                return day, False
        if total > self.people or not self.latest_week:
            return None
        extra = math.ceil((total - self.reached[-1]) / self.latest_week)
        return len(self.reached) + extra, True

    def enrolled_by(self, days: int) -> float:
        if days <= len(self.reached):
            return float(self.reached[days - 1])
        more = self.reached[-1] + self.latest_week * (days - len(self.reached))
        return float(min(more, self.people))


def segment_baselines(root: Path) -> dict[str, SegmentBaseline]:
    """Each RFM segment's purchase rate among its members active in the next window, the
    members who had first visited by each day of it (counted from core.events) and its
    members."""
    frame = read_warehouse(
        root,
        """WITH o AS (SELECT * FROM experiments.segment_outcomes),
           first AS (
               SELECT o.user_id, date_diff('day', o.cutoff, min(e.event_time)::DATE) + 1 AS day
               FROM o JOIN core.events AS e ON e.user_id = o.user_id
                   AND e.event_time >= o.cutoff AND e.event_time < o.window_end
               GROUP BY o.user_id, o.cutoff
           )
           SELECT segment, avg(bought::INT) FILTER (WHERE active) AS rate,
                  count(*) AS people, list(day) FILTER (WHERE day IS NOT NULL) AS days,
                  max(date_diff('day', cutoff, window_end)) AS window_days
           FROM o LEFT JOIN first USING (user_id)
           GROUP BY segment""",
    )
    return {
        r["segment"]: SegmentBaseline(
            r["rate"],
            [sum(1 for d in r["days"] or [] if d <= k) for k in range(1, r["window_days"] + 1)],
            r["people"],
        )
        for r in frame.iter_rows(named=True)
    }


def recommendations(root: Path, product: int) -> list[tuple[int, str]]:
    frame = read_warehouse(
        root,
        f"SELECT recommended_product_id, source FROM ml.recommendations "
        f"WHERE product_id = {int(product)} ORDER BY rank",
    )
    return [(r["recommended_product_id"], r["source"]) for r in frame.iter_rows(named=True)]


def raw_files(root: Path) -> list[Path]:
    """The raw file the pipeline reads for each month (its own rule, LakeResource.raw_file),
    of the months from 2019-10, the first partition, to the present one."""
    lake = LakeResource(raw_dir=str(root / "raw"), lake_dir=str(root / "lake"))
    months = [m for m in lake.raw_months() if "2019-10" <= m <= f"{date.today():%Y-%m}"]
    return [f for m in months if (f := lake.raw_file(m)) is not None]


def raw_mebibytes(root: Path) -> float:
    return sum(f.stat().st_size for f in raw_files(root)) / 2**20


def hourly_events(root: Path, day: date) -> dict[str, list[int]]:
    """Events per hour of `day` (UTC) for every event type seen in the day's month, 0 where
    there is none."""
    start = day.replace(day=1)
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    events = read_warehouse(
        root,
        f"SELECT event_time, event_type::VARCHAR AS event_type FROM core.events "
        f"WHERE event_time >= DATE '{start}' AND event_time < DATE '{end}'",
    )
    on_day = events.filter(pl.col("event_time").dt.date() == day)
    counts = on_day.group_by(pl.col("event_time").dt.hour().alias("hour"), "event_type").len()
    found = {(r["hour"], r["event_type"]): r["len"] for r in counts.iter_rows(named=True)}
    return {
        kind: [found.get((h, kind), 0) for h in range(24)]
        for kind in events["event_type"].unique().to_list()
    }


def cohort_cells(root: Path, kind: str) -> dict[tuple[date, int], tuple[float, bool]]:
    """Per weekly cohort (weeks begin on Monday) and weeks since: the retention rate, and
    whether each of that week's seven days has an event. Cohorts: activity (first event; any
    event later) or purchase (first purchase; a purchase later)."""
    events = read_warehouse(
        root,
        "SELECT DISTINCT user_id, event_time::DATE AS day, event_type = 'purchase' AS bought "
        "FROM core.events",
    )
    days = set(events["day"].to_list())
    if kind == "purchase":
        events = events.filter("bought")
    weeks = events.select("user_id", pl.col("day").dt.truncate("1w").alias("week")).unique()
    weeks = weeks.with_columns(pl.col("week").min().over("user_id").alias("cohort"))
    weeks = weeks.with_columns(
        ((pl.col("week") - pl.col("cohort")).dt.total_days() // 7).alias("since")
    )
    sizes = weeks.filter(pl.col("since") == 0).group_by("cohort").len("users")
    active = weeks.group_by("cohort", "since").len("active")
    cells: dict[tuple[date, int], tuple[float, bool]] = {}
    for r in sizes.iter_rows(named=True):
        for k in range((weeks["week"].max() - r["cohort"]).days // 7 + 1):
            start = r["cohort"] + timedelta(days=7 * k)
            hit = active.filter((pl.col("cohort") == r["cohort"]) & (pl.col("since") == k))
            rate = (hit["active"].sum() if hit.height else 0) / r["users"]
            cells[(r["cohort"], k)] = (
                rate,
                all(start + timedelta(days=d) in days for d in range(7)),
            )
    return cells


def rfm_segment_names(root: Path) -> list[str]:
    """The RFM segments in the order of their rules."""
    frame = read_warehouse(
        root, "SELECT segment FROM analytics.rfm_segment_summary ORDER BY rule_order"
    )
    return frame["segment"].to_list()


def zero_spend_buyers(root: Path) -> set[int]:
    """Buyers whose purchases add up to 0 (items priced 0)."""
    frame = read_warehouse(
        root,
        "SELECT user_id FROM core.events WHERE event_type = 'purchase' "
        "GROUP BY user_id HAVING sum(price) = 0",
    )
    return set(frame["user_id"].to_list())


def rule_explanations(root: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (antecedent, consequent) the rule row that ranks it: of the basket kinds, the one
    with the highest confidence x lift (the recommender's score), ties by kind name."""
    rules = read_warehouse(root, "SELECT * FROM ml.product_affinity")
    best = (
        rules.sort([pl.col("confidence") * pl.col("lift"), "basket_kind"], descending=[True, False])
        .group_by("antecedent", "consequent", maintain_order=True)
        .first()
    )
    return {(r["antecedent"], r["consequent"]): r for r in best.iter_rows(named=True)}


def mixed_kind_products(root: Path) -> list[int]:
    """Products with a consequent that both basket kinds have a rule for."""
    rules = read_warehouse(
        root, "SELECT basket_kind, antecedent, consequent FROM ml.product_affinity"
    )
    both = rules.group_by("antecedent", "consequent").agg(pl.col("basket_kind").n_unique() > 1)
    return sorted(set(both.filter("basket_kind")["antecedent"].to_list()))
