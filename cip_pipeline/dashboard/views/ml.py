"""ML engine: the propensity model's card from the registry, its feature importance, the score
distribution, and the recommendations of a product with why each was made."""

from __future__ import annotations

from typing import Any

import plotly.express as px
import polars as pl
import streamlit as st

from cip_pipeline.dashboard import data, ui

MODEL = "lightgbm"  # the registered model's own entry in its metrics; the rest are baselines
SOURCES = {
    "rule": "association rules (bought together)",
    "co-view": "co-views (viewed in the same sessions)",
    "fallback": "fallback (popular in the category; all a cold-start product gets)",
}
# ml.product_affinity's basket kinds: one session's purchases, or one user's purchases within a
# fixed span of days (AffinityConfig.horizon_days).
BASKET_KINDS = {
    "session": "session baskets",
    "user_horizon": "user-horizon baskets (one user's purchases in a span of days)",
}


def pick_version() -> data.ModelCard | None:
    cards = data.models()
    if not cards:
        st.info(
            "No model is registered yet: `cip run` trains one once there are about five "
            "weeks of history."
        )
        return None
    names = sorted({c.name for c in cards})
    left, right = st.columns(2)
    name = left.selectbox("Model", names, key="ml_model")
    versions = [c for c in cards if c.name == name]
    card = right.selectbox(
        "Version",
        versions,
        format_func=lambda c: f"v{c.version} ({ui.when(c.created_at)})",
        key="ml_version",
    )
    return card


def _interval(metrics: dict[str, Any], name: str, digits: int = 3) -> str:
    lo_hi = metrics.get("intervals", {}).get(name)
    if not lo_hi:
        return ""
    return f"95% interval {lo_hi[0]:.{digits}f} to {lo_hi[1]:.{digits}f}"


def model_card(card: data.ModelCard) -> None:
    st.subheader(f"Model card: {card.name} v{card.version}")
    metrics = card.metrics.get(MODEL)
    if metrics is None:
        st.warning(f"The registry entry has no `{MODEL}` metrics.")
        return
    baselines = {k: v for k, v in card.metrics.items() if k != MODEL}
    best = max(baselines, key=lambda k: baselines[k]["pr_auc"]) if baselines else None
    cols = st.columns(5)
    for col, (label, key) in zip(
        cols, (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc")), strict=False
    ):
        delta = None
        if best is not None:
            delta = f"{metrics[key] - baselines[best][key]:+.3f} vs baseline"
        col.metric(
            label,
            ui.decimal(metrics[key]),
            delta=delta,
            help=_interval(metrics, key),
            border=True,
        )
    cols[2].metric(
        "Lift at top 10%",
        ui.decimal(metrics["at_k"]["10%"]["lift"], 2),
        help=_interval(metrics, "lift_10%", 2),
        border=True,
    )
    cols[3].metric("Brier score", ui.decimal(metrics.get("brier"), 4), border=True)
    cols[4].metric("Base rate", ui.percent(metrics["base_rate"]), border=True)
    st.caption(
        "Measured out of time on the validation snapshot, before the final refit on every "
        "labelled snapshot; intervals from a Poisson bootstrap over users. "
        f"Best baseline on PR-AUC: {best}."
    )

    rows = []
    for name, m in card.metrics.items():
        intervals = m.get("intervals", {})
        rows.append(
            {
                "model": name,
                "ROC-AUC": m["roc_auc"],
                "ROC-AUC 95%": _pair(intervals.get("roc_auc")),
                "PR-AUC": m["pr_auc"],
                "PR-AUC 95%": _pair(intervals.get("pr_auc")),
                "lift@10%": m["at_k"]["10%"]["lift"],
                "precision@5%": m["at_k"]["5%"]["precision"],
                "recall@10%": m["at_k"]["10%"]["recall"],
                "Brier": m.get("brier"),
            }
        )
    st.dataframe(
        pl.DataFrame(rows),
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in ("ROC-AUC", "PR-AUC", "lift@10%", "precision@5%", "recall@10%", "Brier")
        },
    )
    windows = card.windows
    snapshots = pl.DataFrame(
        {
            "cutoff": list(windows.get("snapshots", {})),
            "role": list(windows.get("snapshots", {}).values()),
        }
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Windows** (weekly snapshots, features strictly before each cutoff)")
        st.dataframe(snapshots, hide_index=True)
        st.caption(
            f"Rows sampled: {ui.integer(windows.get('rows_train'))} training, "
            f"{ui.integer(windows.get('rows_validation'))} validation. "
            f"Registered {ui.when(card.created_at)}; {len(card.features)} features."
        )
    with right:
        st.markdown("**Parameters**")
        params = pl.DataFrame(
            {"parameter": list(card.params), "value": [str(v) for v in card.params.values()]}
        )
        st.dataframe(params, hide_index=True)


def _pair(values: list[float] | None) -> str:
    return f"{values[0]:.3f} to {values[1]:.3f}" if values else ""


def importance(card: data.ModelCard) -> None:
    st.subheader("Feature importance")
    frame = data.feature_importance(card)
    total = frame["gain"].sum()
    frame = frame.with_columns((pl.col("gain") / total if total else pl.lit(0.0)).alias("share"))
    fig = px.bar(frame, x="share", y="feature", orientation="h", hover_data=["gain", "splits"])
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_layout(xaxis_tickformat=".0%", xaxis_title="share of total gain", height=560)
    ui.chart(fig, key="importance")


def scores(card: data.ModelCard) -> None:
    st.subheader("Score distribution")
    hist = data.query("score_histogram").with_columns(((pl.col("bin") + 0.5) / 50).alias("score"))
    deciles = data.query("score_deciles")
    if deciles.height == 0:
        st.info("No user has been scored yet.")
        return
    version = deciles["model_version"][0]
    users = int(deciles["users"].sum())
    st.caption(
        f"{ui.integer(users)} users scored as of {ui.when(deciles['scored_as_of'][0])} by "
        f"version {version}" + ("" if version == card.version else " (not the version above)")
    )
    left, right = st.columns([3, 2])
    with left:
        fig = px.bar(hist, x="score", y="users")
        fig.update_traces(width=0.02)
        fig.update_layout(xaxis_title="purchase propensity (bins of 0.02)", bargap=0)
        ui.chart(fig, key="scores")
    with right:
        st.dataframe(
            deciles.select("decile", "users", "min_score", "mean_score", "max_score"),
            hide_index=True,
            column_config={
                "users": st.column_config.NumberColumn(format="localized"),
                "min_score": st.column_config.NumberColumn(format="%.4f"),
                "mean_score": st.column_config.NumberColumn(format="%.4f"),
                "max_score": st.column_config.NumberColumn(format="%.4f"),
            },
        )
        st.caption("Decile 1 = the tenth of users most likely to buy.")


def _why(r: dict[str, Any]) -> str:
    if r["source"] == "rule":
        kind = BASKET_KINDS.get(r["basket_kind"], r["basket_kind"])
        return (
            f"bought together in {ui.integer(r['pair_baskets'])} {kind}: confidence "
            f"{ui.percent(r['confidence'], 1)}, lift {ui.decimal(r['lift'], 2)}"
        )
    if r["source"] == "co-view":
        return f"viewed in the same session {ui.integer(r['score'])} times (last four weeks)"
    if r["same_category"] and r["same_brand"]:
        return "fallback: popular in the same category and brand"
    return "fallback: popular in the same category"


def recommendations() -> None:
    st.subheader("Recommendations")
    mix = data.query("recommendation_sources")
    cols = st.columns(len(mix) or 1)
    for col, r in zip(cols, mix.iter_rows(named=True), strict=False):
        col.metric(
            f"From {r['source']}",
            ui.integer(r["recommendations"]),
            delta=f"first choice for {ui.integer(r['products_led'])} products",
            delta_color="off",
            delta_arrow="off",
            border=True,
        )
    left, right = st.columns([1, 2])
    with left:
        source = st.radio(
            "Products whose best recommendation comes from",
            list(SOURCES),
            format_func=SOURCES.__getitem__,
            key="ml_source",
        )
        products = data.query("recommended_products", source=source)
        if products.height == 0:
            st.info("No product of that kind.")
            return
        labels = {r["product_id"]: _product_label(r) for r in products.iter_rows(named=True)}
        picked = st.selectbox(
            "Product", list(labels), format_func=labels.__getitem__, key=f"ml_product_{source}"
        )
        typed = st.number_input(
            "or any product id",
            min_value=0,
            value=0,
            step=1,
            key="ml_product_id",
            help="0: the product picked above",
        )
        product = int(typed) if typed else int(picked)
    with right:
        info = data.row("product", product=product)
        if not info:
            st.warning(f"Product {product} is not in core.dim_products.")
            return
        st.markdown(
            f"**{product}** · {info['category_code'] or 'no category code'} · "
            f"{info['brand'] or 'no brand'} · price {ui.money(info['price'])} · "
            f"{ui.integer(info['views'])} views, {ui.integer(info['purchases'])} purchases"
        )
        recs = data.query("recommendations_for", product=product)
        if recs.height == 0:
            st.info("No recommendation for this product.")
            return
        table = recs.with_columns(
            pl.Series("why", [_why(r) for r in recs.iter_rows(named=True)])
        ).select(
            "rank", "recommended_product_id", "category_code", "brand", "price", "source", "why"
        )
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                "recommended_product_id": st.column_config.NumberColumn("product", format="%d"),
                "price": st.column_config.NumberColumn(format="%.2f"),
                "why": st.column_config.TextColumn(width="large"),
            },
        )


def _product_label(r: dict[str, Any]) -> str:
    parts = [str(r["product_id"]), r["category_code"] or "no code", r["brand"] or "no brand"]
    return " · ".join(parts) + f" ({ui.integer(r['purchases'])} purchases)"


def render() -> None:
    st.title("ML engine")
    with ui.section("Model registry"):
        card = pick_version()
        if card is not None:
            model_card(card)
            with ui.section("Feature importance"):
                importance(card)
            with ui.section("Scores"):
                scores(card)
    with ui.section("Recommendations"):
        recommendations()


if __name__ == "__main__":
    render()
