"""The REES46 reference figures, computed from CSV files with Polars alone: an oracle that
knows nothing of the generator's internals."""

from __future__ import annotations

from pathlib import Path

import polars as pl

SCHEMA = {
    "event_time": pl.String,
    "event_type": pl.String,
    "product_id": pl.Int64,
    "category_id": pl.Int64,
    "category_code": pl.String,
    "brand": pl.String,
    "price": pl.Float64,
    "user_id": pl.Int64,
    "user_session": pl.String,
}


def read_month(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, schema=SCHEMA)
    return df.with_columns(
        pl.col("event_time").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S UTC")
    )


def auc(score: pl.Series, label: pl.Series) -> float:
    """ROC-AUC by the rank-sum formula (ties get average ranks)."""
    ranks = score.rank("average")
    pos = label.cast(pl.Boolean)
    n_pos = int(pos.sum())
    n_neg = label.len() - n_pos
    return float((ranks.filter(pos).sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def month_stats(df: pl.DataFrame) -> dict[str, float]:
    rows = df.height
    dedup = df.unique(maintain_order=True)
    counts = dict(df.group_by("event_type").len().iter_rows())
    sessions = (
        dedup.filter(pl.col("user_session").is_not_null())
        .group_by("user_session")
        .agg(
            pl.len().alias("events"),
            (pl.col("event_time").max() - pl.col("event_time").min())
            .dt.total_seconds()
            .alias("duration"),
            (pl.col("event_type") == "purchase").any().alias("bought"),
        )
    )
    dup_groups = df.group_by(df.columns).len().filter(pl.col("len") > 1)
    purchases = df.filter(pl.col("event_type") == "purchase")
    users = df["user_id"].n_unique()
    code_by_product = df.group_by("product_id").agg(
        pl.col("category_code").is_null().n_unique().alias("kinds")
    )
    return {
        "rows": rows,
        "view_share": counts.get("view", 0) / rows,
        "cart_share": counts.get("cart", 0) / rows,
        "purchase_share": counts.get("purchase", 0) / rows,
        "view_to_cart": counts.get("cart", 0) / counts.get("view", 1),
        "cart_to_purchase": counts.get("purchase", 0) / max(counts.get("cart", 0), 1),
        "users": users,
        "sessions": sessions.height,
        "events_per_session_mean": float(sessions["events"].mean()),
        "events_per_session_median": float(sessions["events"].median()),
        "session_duration_median": float(sessions["duration"].median()),
        "session_purchase_share": float(sessions["bought"].mean()),
        "buyer_share": purchases["user_id"].n_unique() / users,
        "products": df["product_id"].n_unique(),
        "brands": df["brand"].drop_nulls().n_unique(),
        "category_ids": df["category_id"].n_unique(),
        "code_missing_share": df["category_code"].null_count() / rows,
        "brand_missing_share": df["brand"].null_count() / rows,
        "products_with_mixed_code": int((code_by_product["kinds"] > 1).sum()),
        "price_mean": float(df["price"].mean()),
        "price_median": float(df["price"].median()),
        "price_std": float(df["price"].std()),
        "price_max": float(df["price"].max()),
        "zero_price_share": float((df["price"] == 0).mean()),
        "revenue": float(purchases["price"].sum()),
        "duplicate_share": (rows - dedup.height) / rows,
        "duplicate_max_copies": int(dup_groups["len"].max() or 0),
        "duplicate_cart_share": float((dup_groups["event_type"] == "cart").mean())
        if dup_groups.height
        else 0.0,
        "null_sessions": df["user_session"].null_count(),
        "top_product_view_share": float(
            df.filter(pl.col("event_type") == "view")["product_id"].value_counts(sort=True)[
                "count"
            ][0]
            / max(counts.get("view", 1), 1)
        ),
    }


def daily(df: pl.DataFrame) -> pl.DataFrame:
    return (
        df.group_by(pl.col("event_time").dt.day().alias("day"))
        .agg(
            (pl.col("event_type") == "view").sum().alias("views"),
            (pl.col("event_type") == "purchase").sum().alias("purchases"),
        )
        .sort("day")
    )


def purchases_between(df: pl.DataFrame, start: str, end: str) -> int:
    fmt = "%Y-%m-%d %H:%M"
    return df.filter(
        (pl.col("event_type") == "purchase")
        & (pl.col("event_time") >= pl.lit(start).str.strptime(pl.Datetime("us"), fmt))
        & (pl.col("event_time") < pl.lit(end).str.strptime(pl.Datetime("us"), fmt))
    ).height


def cross_month(first: pl.DataFrame, second: pl.DataFrame) -> dict[str, float]:
    u1 = first["user_id"].unique()
    u2 = second["user_id"].unique()
    p1 = first["product_id"].unique()
    p2 = second["product_id"].unique()
    carted = first.filter(pl.col("event_type") == "cart")["user_id"].unique()
    bought_next = second.filter(pl.col("event_type") == "purchase")["user_id"].unique()
    users = pl.DataFrame({"user_id": u1}).with_columns(
        pl.col("user_id").is_in(carted.implode()).cast(pl.Int8).alias("carted"),
        pl.col("user_id").is_in(bought_next.implode()).cast(pl.Int8).alias("bought_next"),
    )
    return {
        "users_both_share_of_first": u1.is_in(u2.implode()).mean(),
        "users_union": pl.concat([u1, u2]).n_unique(),
        "products_union": pl.concat([p1, p2]).n_unique(),
        "products_both": int(p1.is_in(p2.implode()).sum()),
        "products_new_in_second": int((~p2.is_in(p1.implode())).sum()),
        "carted_auc_next_purchase": auc(users["carted"], users["bought_next"]),
    }
