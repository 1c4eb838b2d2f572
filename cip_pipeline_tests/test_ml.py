"""Models and experiments on a generated sample, run through `cip run`, checked against
independent computations."""

from __future__ import annotations

import io
import json
import math
import shutil
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
import scipy.stats

from cip_pipeline import definitions, stats
from cip_pipeline.assets import core, experiments, ml
from cip_pipeline.assets.common import recorded
from cip_pipeline.assets.core import user_days_chunks
from cip_pipeline.assets.ml import FEATURES_KEY, snapshot_selects
from cip_pipeline.automation import ALL_MONTHS_JOB, MONTHLY_JOB
from cip_pipeline.budget import day_chunks
from cip_pipeline.generator import generate
from cip_pipeline.io_managers import SqlTable
from cip_pipeline.io_managers.tables import CHUNKS
from cip_pipeline.ml import propensity as prop
from cip_pipeline.runner import execute, run_pipeline
from cip_pipeline_tests import warehouse_oracle
from cip_pipeline_tests.warehouse_sample import hand_made_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ml")
    mp = pytest.MonkeyPatch()
    mp.setenv("CIP_DATA_DIR", str(root))
    try:
        generate(2_000_000, seed=42, out=root / "raw")
        out = io.StringIO()
        code = run_pipeline(out=out)
        assert code == 0, out.getvalue()
    finally:
        mp.undo()
    return root / "warehouse" / "cip.duckdb"


def _query(db: Path, query: str) -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(query).pl()
    finally:
        con.close()


def test_snapshot_windows_never_overlap_validation() -> None:
    plan = prop.plan_snapshots(datetime(2019, 10, 1), datetime(2019, 11, 30, 23, 59))
    assert plan.validation == datetime(2019, 11, 12)  # its label window ends Nov 26
    assert plan.train == [datetime(2019, 10, 15), datetime(2019, 10, 22), datetime(2019, 10, 29)]
    assert plan.score == datetime(2019, 12, 1)
    short = prop.plan_snapshots(datetime(2019, 10, 1), datetime(2019, 10, 31))
    assert not short.usable  # one month: no training snapshot before the validation one


def test_day_chunks_pack_whole_days_under_the_event_cap() -> None:
    d = [datetime(2019, 10, day) for day in (1, 2, 3, 4, 5)]
    end = datetime(2019, 10, 6)
    days = list(zip(d, [4, 5, 12, 1, 2], strict=True))
    assert day_chunks(days, 10, end) == [(d[0], d[2]), (d[2], d[3]), (d[3], end)]
    assert day_chunks(days, 100, end) == [(d[0], end)]
    assert day_chunks([], 10, end) == []


def test_model_beats_the_best_baseline_and_is_registered(warehouse: Path) -> None:
    registry = _query(warehouse, "SELECT * FROM ml.model_registry ORDER BY version")
    assert registry.height >= 1
    latest = registry.row(-1, named=True)
    metrics = json.loads(latest["metrics"])
    model = metrics["lightgbm"]
    baselines = {k: v for k, v in metrics.items() if k != "lightgbm"}
    assert set(baselines) == {
        "logistic_regression",
        "rule_carted_last_7d",
        "rule_purchased_before",
        "rule_recency",
    }
    assert model["pr_auc"] > max(b["pr_auc"] for b in baselines.values())
    assert 0.6 < model["roc_auc"] < 0.98  # learnable, not trivial
    low, high = model["intervals"]["pr_auc"]
    assert low <= model["pr_auc"] <= high
    windows = json.loads(latest["windows"])
    roles = windows["snapshots"]
    assert sorted(roles.values()).count("validation") == 1
    # The booster is LightGBM's text format and loads back.
    booster = lgb.Booster(model_str=latest["booster"])
    assert booster.feature_name() == prop.FEATURES
    assert latest["booster"].startswith("tree")


def test_scores_cover_every_user_with_deciles(warehouse: Path) -> None:
    scores = _query(warehouse, "SELECT * FROM ml.propensity_scores")
    users = _query(warehouse, "SELECT DISTINCT user_id FROM core.events")
    assert sorted(scores["user_id"].to_list()) == sorted(users["user_id"].to_list())
    # Deciles by rank, ties sharing the first one's, computed again here.
    expected = scores.select(
        "user_id",
        (1 + 10 * (pl.col("score").rank("min", descending=True) - 1) // pl.len()).alias("want"),
    )
    joined = scores.join(expected, on="user_id")
    assert (joined["decile"] == joined["want"]).all()
    assert scores.group_by("score").agg(pl.col("decile").n_unique())["decile"].max() == 1
    bounds = scores.group_by("decile").agg(pl.col("score").min(), pl.col("score").max().alias("hi"))
    bounds = bounds.sort("decile")
    assert (bounds["score"].head(-1) > bounds["hi"].tail(-1)).all()  # strictly ordered
    assert bounds["decile"].to_list()[0] == 1
    # the batches' staging table is gone once the scores are stored
    ml_tables = _query(
        warehouse, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ml'"
    )
    assert "propensity_scores" in ml_tables["table_name"].to_list()
    assert "scoring_staging" not in ml_tables["table_name"].to_list()


def test_scores_refuse_a_model_trained_on_other_features(warehouse: Path) -> None:
    """A registered model whose feature list differs from what the features asset builds
    (an older definition) fails the scoring step by name, instead of scoring by position."""
    from cip_pipeline.assets.ml import propensity_scores
    from cip_pipeline.io_managers.model_io_manager import RegisteredModel
    from cip_pipeline.resources import WarehouseResource

    older = [f if f != "session_products_w" else "product_days_w" for f in prop.FEATURES]
    model = RegisteredModel(
        booster=lgb.Booster(
            model_str=_query(
                warehouse, "SELECT booster FROM ml.model_registry ORDER BY version DESC LIMIT 1"
            )["booster"][0]
        ),
        params={},
        features=older,
        windows={},
        metrics={},
        encodings={"preferred_brand": {}},
        name="ml/propensity_model",
        version=41,
    )
    with (
        dg.build_asset_context() as context,
        pytest.raises(dg.Failure, match="version 41 was trained on features") as failure,
    ):
        propensity_scores(context, model=model, warehouse=WarehouseResource(path=str(warehouse)))
    assert "product_days_w" in str(failure.value)


@pytest.mark.parametrize("role", ["train", "validation"])
def test_features_match_an_independent_computation(warehouse: Path, role: str) -> None:
    """The first training snapshot's window covers all earlier data; the validation one's does
    not, so its users idle in the window must be there with zero window counts."""
    events = _query(
        warehouse,
        "SELECT user_id, product_id, event_time, event_type::VARCHAR AS event_type, price,"
        " user_session::VARCHAR AS user_session, category_code, brand FROM core.events",
    )
    features = _query(warehouse, f"SELECT * FROM ml.propensity_features WHERE role = '{role}'")
    snap = features["snapshot"].min()
    mine = features.filter(pl.col("snapshot") == snap).sort("user_id")
    before = events.filter(pl.col("event_time") < snap)
    window = before.filter(pl.col("event_time") >= snap - pl.duration(days=28))
    window_counts = window.group_by("user_id").agg(
        pl.len().alias("events_w"), (pl.col("event_type") == "cart").sum().alias("carts_w")
    )
    sessions = (  # started in the window, each as far as it went before the cutoff
        warehouse_oracle.fact_sessions(
            before.with_columns(pl.col("category_code").str.split(".").list.first().alias("l1"))
        )
        .filter(pl.col("start_time") >= snap - pl.duration(days=28))
        .group_by("user_id")
        .agg(
            pl.len().alias("sessions_w"),
            pl.col("duration_seconds").mean().alias("avg_session_seconds"),
            pl.col("distinct_products").sum().alias("session_products_w"),
        )
    )
    views = window.filter(pl.col("event_type") == "view").with_columns(
        pl.col("event_time").dt.date().alias("day"),
        pl.col("category_code").str.split(".").list.first().alias("category"),
    )
    day_views = views.group_by("user_id", "day").agg(pl.len().alias("views"))

    def preferred(col: str, name: str) -> pl.DataFrame:
        """The day's most viewed value (ties: alphabetically last), taken from the window's
        day with most views (then the latest) among days that have one."""
        day_top = (
            views.filter(pl.col(col).is_not_null())
            .group_by("user_id", "day", col)
            .len()
            .sort(["len", col], descending=True)
            .group_by("user_id", "day", maintain_order=True)
            .first()
        )
        return (
            day_top.join(day_views, on=["user_id", "day"])
            .sort(["views", "day"], descending=True)
            .group_by("user_id", maintain_order=True)
            .agg(pl.col(col).first().alias(name))
        )

    oracle = (
        before.group_by("user_id")
        .agg(
            ((snap - pl.col("event_time").max()).dt.total_seconds() / 86400).alias("recency_days"),
            (pl.col("event_type") == "purchase").any().alias("prior_purchase"),
        )
        .join(window_counts, on="user_id", how="left")
        .join(sessions, on="user_id", how="left")
        .join(preferred("category", "primary_category"), on="user_id", how="left")
        .join(preferred("brand", "preferred_brand"), on="user_id", how="left")
        .with_columns(
            pl.col("events_w", "carts_w", "sessions_w", "session_products_w").fill_null(0)
        )
        .join(
            events.filter(
                (pl.col("event_time") >= snap)
                & (pl.col("event_time") < snap + pl.duration(days=14))
                & (pl.col("event_type") == "purchase")
            )
            .select("user_id")
            .unique()
            .with_columns(pl.lit(True).alias("label")),
            on="user_id",
            how="left",
        )
        .with_columns(pl.col("label").fill_null(False))
        .sort("user_id")
    )
    assert mine["user_id"].to_list() == oracle["user_id"].to_list()
    for col in (
        "events_w",
        "carts_w",
        "sessions_w",
        "session_products_w",
        "prior_purchase",
        "label",
    ):
        assert mine[col].cast(oracle[col].dtype).to_list() == oracle[col].to_list(), col
    seconds = mine["avg_session_seconds"].to_numpy(), oracle["avg_session_seconds"].to_numpy()
    assert np.allclose(*seconds, equal_nan=True)
    # sessions going on past the cutoff are there, with their part before it
    assert (
        _query(
            warehouse,
            "SELECT count(*) AS n FROM core.fact_sessions "
            f"WHERE start_time < TIMESTAMP '{snap}' AND end_time >= TIMESTAMP '{snap}'",
        )["n"][0]
        > 0
    )
    for col in ("primary_category", "preferred_brand"):
        assert oracle[col].null_count() < oracle.height, col
        assert mine[col].to_list() == oracle[col].to_list(), col
    assert np.allclose(mine["recency_days"].to_numpy(), oracle["recency_days"].to_numpy())
    if role == "validation":
        assert (mine["events_w"] == 0).sum() > 0  # the case this role is here for


def test_model_metadata_gives_each_snapshots_share_of_users_idle_in_the_window(
    warehouse: Path,
) -> None:
    """Recounted from the stored features: no event in the 28-day window before the cutoff.
    With two months no training snapshot has any, the score snapshot has about a third."""
    with dg.DagsterInstance.from_config(str(warehouse.parent.parent / "dagster_home")) as home:
        event = home.get_latest_materialization_event(ml.MODEL_KEY)
    assert event is not None and event.asset_materialization is not None
    reported = event.asset_materialization.metadata["idle_in_window_share"].value
    features = _query(warehouse, "SELECT snapshot, role FROM ml.propensity_features")
    events = _query(warehouse, "SELECT user_id, event_time FROM core.events")
    expected = {}
    for (snap, role), users in features.group_by("snapshot", "role"):
        # every user with an event in the window is one of the snapshot's users
        active = events.filter(
            pl.col("event_time") < snap, pl.col("event_time") >= snap - pl.duration(days=28)
        )["user_id"].n_unique()
        n = users.height
        expected[f"{snap:%Y-%m-%d} ({role})"] = round((n - active) / n, 4)
    assert reported == expected
    assert all(v == 0 for k, v in reported.items() if k.endswith("(train)"))
    assert 0.2 < reported[max(reported)] < 0.4 and max(reported).endswith("(score)")


def test_feature_phases_are_timed_per_snapshot(warehouse: Path) -> None:
    home = warehouse.parent.parent / "dagster_home"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(FEATURES_KEY)
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    labels, chunks = metadata["snapshots"].value, metadata[CHUNKS].value
    sizes = _query(
        warehouse,
        "SELECT snapshot, role, count(*) AS users FROM ml.propensity_features "
        "GROUP BY ALL ORDER BY snapshot",
    )
    assert labels == [f"{s:%Y-%m-%d} ({r})" for s, r, _ in sizes.iter_rows()]
    assert [c["label"] for c in chunks] == labels
    assert [c["rows"] for c in chunks] == sizes["users"].to_list()
    assert all(c["seconds"] > 0 and not c["kept"] for c in chunks)


def test_model_scores_and_simulation_are_rebuilt_identically(
    warehouse: Path, tmp_path: Path
) -> None:
    """Materializing again on the same warehouse gives the same booster, scores and simulated
    experiment (row order of the tables they read varies between builds; they must not)."""
    rebuilt, defs = _warehouse_copy(warehouse, tmp_path)
    with duckdb.connect(str(rebuilt)) as con:  # forget the inputs: the model is trained again
        con.execute("UPDATE ml.model_registry SET inputs = NULL")
    again = [
        ml.propensity_features,
        ml.propensity_model,
        ml.propensity_scores,
        experiments.reactivation_simulation,
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "again", assets=again)
    assert summary.success, summary.failures
    boosters = "SELECT version, booster FROM ml.model_registry ORDER BY version DESC LIMIT 1"
    before, after = _query(warehouse, boosters).row(0), _query(rebuilt, boosters).row(0)
    assert after[0] == before[0] + 1  # a new version, trained again
    assert after[1] == before[1]
    for query in (
        "SELECT * EXCLUDE (model_version) FROM ml.propensity_scores",
        "SELECT * FROM experiments.reactivation_simulation",
    ):
        first, second = _query(warehouse, query), _query(rebuilt, query)
        assert first.height > 0
        assert first.sort(first.columns).equals(second.sort(second.columns)), query


def test_the_model_is_reused_while_its_samples_are_unchanged(
    warehouse: Path, tmp_path: Path
) -> None:
    """Features rebuilt over the same data leave the training samples as they were: the model
    step hands back the newest version instead of fitting again. A change to a training
    snapshot fits and registers a new version."""
    rebuilt, defs = _warehouse_copy(warehouse, tmp_path)
    steps = [ml.propensity_features, ml.propensity_model, ml.propensity_scores]
    registry = "SELECT version, booster, inputs FROM ml.model_registry ORDER BY version"
    scores = "SELECT * FROM ml.propensity_scores"
    with duckdb.connect(str(rebuilt)) as con:  # as if trained when the data ended earlier
        trained_windows = json.loads(
            con.execute(
                "SELECT windows FROM ml.model_registry ORDER BY version DESC LIMIT 1"
            ).fetchone()[0]
        )
        stale = {**trained_windows, "ranges": trained_windows["ranges"][:-1], "snapshots": {}}
        con.execute(
            "UPDATE ml.model_registry SET windows = ? WHERE version = "
            "(SELECT max(version) FROM ml.model_registry)",
            [json.dumps(stale)],
        )
    before = _query(rebuilt, registry)
    with dg.DagsterInstance.ephemeral() as instance:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "again", assets=steps)
        assert summary.success, summary.failures
        model = recorded(instance, ml.MODEL_KEY)
    assert model["trained"] is False and model["registered"] == "no: this version was reused"
    assert model["model_version"] == before["version"][-1]
    assert _query(rebuilt, registry).equals(before)
    # the windows shown are the features' now (the score snapshot's included), with what the
    # reused version was refit on
    assert model["windows"] == trained_windows
    first, second = _query(warehouse, scores), _query(rebuilt, scores)
    assert first.sort("user_id").equals(second.sort("user_id"))

    with duckdb.connect(str(rebuilt)) as con:  # a training snapshot changes
        con.execute(
            "UPDATE ml.propensity_features SET events_w = events_w + 1 "
            "WHERE snapshot = TIMESTAMP '2019-10-15'"
        )
    with dg.DagsterInstance.ephemeral() as instance:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "changed", assets=[ml.propensity_model])
        assert summary.success, summary.failures
        model = recorded(instance, ml.MODEL_KEY)
    after = _query(rebuilt, registry)
    assert model["trained"] is True and model["registered"] == "yes"
    assert after.height == before.height + 1
    assert after["version"][-1] == model["model_version"] == before["version"][-1] + 1
    assert after["inputs"][-1] != before["inputs"][-1]


def test_no_feature_sees_events_at_or_after_its_cutoff(warehouse: Path, tmp_path: Path) -> None:
    """Rewrite every event at or after a cutoff (type, price, product, later time), and make
    sessions that ended in the cutoff's last hour go on past it (an event after the cutoff in
    the same session): no feature of that snapshot changes; only the label may."""
    db = tmp_path / "copy.duckdb"
    db.write_bytes(warehouse.read_bytes())
    cutoff = datetime(2019, 10, 29)
    plan = prop.SnapshotPlan([], cutoff, datetime(2019, 12, 1), 14, 28)
    validation = snapshot_selects(plan)[f"{cutoff:%Y-%m-%d} (validation)"]
    con = duckdb.connect(str(db))
    try:
        before = con.sql(validation).pl()
        con.execute(
            """
            UPDATE core.events
            SET event_type = CASE event_type WHEN 'view' THEN 'purchase' ELSE 'view' END,
                price = price * 3 + 1, product_id = product_id + 7,
                event_time = event_time + INTERVAL 2 HOUR
            WHERE event_time >= $cutoff""",
            {"cutoff": cutoff},
        )
        continued = con.execute(
            """
            INSERT INTO core.events
            SELECT $cutoff + INTERVAL 30 MINUTE, 'purchase', product_id + 1, category_id,
                   category_code, brand, price, user_id, user_session
            FROM core.events
            WHERE event_time >= $cutoff - INTERVAL 1 HOUR AND event_time < $cutoff
              AND user_session IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY user_session ORDER BY event_time DESC,
                                       product_id) = 1""",
            {"cutoff": cutoff},
        ).fetchall()[0][0]
        assert continued > 10
        # every session with an event at or after the cutoff as core.fact_sessions has it
        con.execute(
            """
            UPDATE core.fact_sessions AS s
            SET end_time = a.end_time,
                duration_seconds = date_diff('second', s.start_time, a.end_time),
                distinct_products = a.products
            FROM (SELECT user_session, max(event_time) AS end_time,
                         count(DISTINCT product_id) AS products
                  FROM core.events GROUP BY ALL HAVING max(event_time) >= $cutoff) AS a
            WHERE s.user_session = a.user_session""",
            {"cutoff": cutoff},
        )
        con.execute("DELETE FROM core.fact_user_days")  # built again from the rewritten events
        for chunk in user_days_chunks(con, SqlTable("core", "events"), datetime(2020, 1, 1), 10**5):
            con.execute(f"INSERT INTO core.fact_user_days BY NAME {chunk.select}")
        after = con.sql(validation).pl()
    finally:
        con.close()
    columns = [c for c in before.columns if c != "label"]
    assert before.height > 1000
    b, a = before.sort("user_id"), after.sort("user_id")
    changed = [c for c in columns if not b[c].equals(a[c])]
    assert changed == []
    assert not before["label"].equals(after["label"])  # the label does look ahead


HORIZON_SECONDS = 86400 * 14


@pytest.mark.parametrize("kind", ["session", "user_horizon"])
def test_rules_equal_an_independent_polars_computation(warehouse: Path, kind: str) -> None:
    rules = _query(warehouse, f"SELECT * FROM ml.product_affinity WHERE basket_kind = '{kind}'")
    purchases = _query(
        warehouse,
        "SELECT user_session::VARCHAR AS session, user_id, product_id, event_time "
        "FROM core.events WHERE event_type = 'purchase'",
    )
    if kind == "session":  # a session's purchases
        baskets = purchases.filter(pl.col("session").is_not_null()).select(
            pl.col("session").alias("basket"), "product_id"
        )
    else:  # a user's purchases within one horizon-long bucket of time
        bucket = pl.col("event_time").dt.epoch("s") // HORIZON_SECONDS
        baskets = purchases.select(
            pl.format("{}:{}", "user_id", bucket).alias("basket"), "product_id"
        )
    baskets = baskets.unique()
    baskets = baskets.filter(
        pl.col("basket").is_in(
            baskets.group_by("basket").len().filter(pl.col("len") <= 50)["basket"].implode()
        )
    )
    n = baskets["basket"].n_unique()
    items = baskets.group_by("product_id").agg(pl.len().alias("n_a"))
    pairs = (
        baskets.join(baskets, on="basket", suffix="_b")
        .filter(pl.col("product_id") != pl.col("product_id_b"))
        .group_by("product_id", "product_id_b")
        .agg(pl.len().alias("n_ab"))
        .filter(pl.col("n_ab") >= 5)
        .join(items, on="product_id")
        .join(items.rename({"product_id": "product_id_b", "n_a": "n_b"}), on="product_id_b")
        .with_columns(
            (pl.col("n_ab") / n).alias("support"),
            (pl.col("n_ab") / pl.col("n_a")).alias("confidence"),
            (pl.col("n_ab") * n / (pl.col("n_a") * pl.col("n_b"))).alias("lift"),
        )
        .filter(pl.col("lift") >= 1.2)
        .sort("product_id", "product_id_b")
    )
    mine = rules.sort("antecedent", "consequent")
    assert pairs.height > 0
    assert mine["antecedent"].to_list() == pairs["product_id"].to_list()
    assert mine["consequent"].to_list() == pairs["product_id_b"].to_list()
    for col in ("support", "confidence", "lift"):
        assert np.allclose(mine[col].to_numpy(), pairs[col].to_numpy(), rtol=1e-9), col


def test_recommendations_cover_cold_start_and_never_self(warehouse: Path) -> None:
    recs = _query(warehouse, "SELECT * FROM ml.recommendations")
    products = _query(
        warehouse,
        "SELECT product_id, min(event_time) AS first_seen, "
        "count(*) FILTER (WHERE event_type = 'purchase') AS bought "
        "FROM core.events GROUP BY ALL",
    )
    assert (recs["product_id"] != recs["recommended_product_id"]).all()
    per = recs.group_by("product_id").agg(pl.len().alias("n"), pl.col("rank").max().alias("r"))
    assert per["n"].max() <= 10 and (per["n"] == per["r"]).all()
    assert set(recs["source"].unique()) <= {"rule", "co-view", "fallback"}
    cold = products.filter(
        (pl.col("first_seen") >= datetime(2019, 11, 1)) & (pl.col("bought") == 0)
    )
    assert cold.height > 0
    covered = cold.join(per, on="product_id", how="left")["n"].fill_null(0)
    assert (covered > 0).mean() > 0.95  # a product alone in its category has no peer


def test_co_view_recommendations_equal_an_independent_count(warehouse: Path) -> None:
    """Each product's co-view tier, recounted in Polars from the events: pairs viewed in one
    session among the sessions started in the last 28 days that viewed 2 to max_session_views
    products, seen in at least two such sessions, most often first (then the lower id), after
    the product's rules."""
    from cip_pipeline.assets.ml import AffinityConfig

    config = AffinityConfig()
    events = _query(
        warehouse,
        "SELECT user_session::VARCHAR AS s, product_id, event_type, event_time "
        "FROM core.events WHERE user_session IS NOT NULL",
    )
    end = _query(warehouse, "SELECT max(event_time) AS m FROM core.events")["m"][0]
    since = end - timedelta(days=28)
    views = (
        events.filter(pl.col("event_time").min().over("s") >= since)
        .filter(pl.col("event_type") == "view")
        .select("s", "product_id")
        .unique()
        .filter(pl.len().over("s").is_between(2, config.max_session_views))
    )
    top = (
        views.join(views, on="s", suffix="_b")
        .filter(pl.col("product_id") != pl.col("product_id_b"))
        .group_by("product_id", "product_id_b")
        .len()
        .filter(pl.col("len") >= 2)
        .sort(["product_id", "len", "product_id_b"], descending=[False, True, False])
        .group_by("product_id", maintain_order=True)
        .head(10)
    )
    rules = _query(
        warehouse,
        "SELECT DISTINCT antecedent AS product_id, consequent AS product_id_b, true AS rule "
        "FROM ml.product_affinity",
    )
    n_rules = rules.group_by("product_id").agg(pl.len().clip(upper_bound=10).alias("r"))
    expected = (
        top.join(rules, on=["product_id", "product_id_b"], how="anti")
        .join(n_rules, on="product_id", how="left")
        .with_columns(pl.col("r").fill_null(0))
        .sort(["product_id", "len", "product_id_b"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("product_id") < 10 - pl.col("r"))
    )
    recs = _query(
        warehouse,
        "SELECT product_id, recommended_product_id AS product_id_b, score FROM ml.recommendations "
        "WHERE source = 'co-view' ORDER BY product_id, rank",
    )
    assert expected.height > 1000
    assert recs["product_id"].to_list() == expected["product_id"].to_list()
    assert recs["product_id_b"].to_list() == expected["product_id_b"].to_list()
    assert recs["score"].to_list() == expected["len"].cast(pl.Float64).to_list()


def test_co_view_top_ten_by_hand() -> None:
    """The co-view tier on hand-made sessions, against a count of pairs in Python. The SQL
    sorts only the pairs at or above a lower bound of each product's 10th count, so the
    sessions give products whose bound is 32, 3 and 0, eleven partners tied at the 10th
    place (the lower ids win, negative ones and Int32's minimum among them), a partner just
    below the bound, a 10th partner below the count of the other nine, and pairs seen in a
    single session (never recommended)."""
    low = -(2**31)
    sessions: list[list[int]] = []
    sessions += [[1, low, -5, *range(100, 109), 110] for _ in range(33)]  # 11 partners, n = 33
    sessions += [[1, 111] for _ in range(31)]  # below product 1's bound of 32
    sessions += [[2, p] for p in range(200, 210) for _ in range(3)]  # 10 partners, n = 3
    sessions += [[2, 210], [2, 210], [2, 211]]  # n = 2, below the bound, and n = 1
    sessions += [[3, 300], [3, 300], [3, 301], [3, 301], [3, 302]]  # bound 0
    sessions += [[4, p] for p in range(400, 409) for _ in range(4)] + [[4, 409]] * 3  # bound 3
    con = hand_made_events()
    con.execute(
        "CREATE TABLE core.fact_sessions (start_time TIMESTAMP, end_time TIMESTAMP,"
        " viewed_products INTEGER[])"
    )
    products = sorted({p for s in sessions for p in s})
    con.executemany(
        "INSERT INTO core.events (event_time, event_type, product_id, category_id)"
        " VALUES (TIMESTAMP '2019-11-30 12:00', 'view', $1, $1)",
        [(p,) for p in products],  # each product alone in its category: no fallback
    )
    con.executemany(
        "INSERT INTO core.fact_sessions VALUES (TIMESTAMP '2019-11-20 10:00',"
        " TIMESTAMP '2019-11-20 10:30', list_sort($1))",
        [(s,) for s in sessions],
    )
    no_rules = (
        "(SELECT 0 AS antecedent, 0 AS consequent, 0.0 AS confidence, 0.0 AS lift WHERE false)"
    )
    got = con.execute(
        "SELECT product_id, recommended_product_id, score, rank "
        f"FROM ({ml.recommendations_sql(ml.AffinityConfig(), no_rules)}) "
        "WHERE source = 'co-view' ORDER BY product_id, rank"
    ).fetchall()

    counts: dict[tuple[int, int], int] = {}
    for s in sessions:
        for a in s:
            for b in s:
                if a != b:
                    counts[a, b] = counts.get((a, b), 0) + 1
    expected = []
    for p in products:
        seen = sorted((-n, b) for (a, b), n in counts.items() if a == p and n >= 2)
        expected += [(p, b, float(-m), i) for i, (m, b) in enumerate(seen[:10], start=1)]
    assert got == expected
    top_of_1 = [b for p, b, _, _ in got if p == 1]
    assert top_of_1 == [low, -5, *range(100, 108)]
    assert [b for p, b, _, _ in got if p == 2] == list(range(200, 210))
    assert [(b, n) for p, b, n, _ in got if p == 3] == [(300, 2.0), (301, 2.0)]
    assert [b for p, b, _, _ in got if p == 4] == list(range(400, 410))


def test_power_tables_equal_the_stats_module(warehouse: Path) -> None:
    table = _query(warehouse, "SELECT * FROM experiments.ab_power_tables")
    sizes = table.filter(pl.col("table") == "conversion_sample_size")
    assert sizes.filter(pl.col("baseline_source").str.starts_with("segment")).height > 0
    for row in sizes.sample(20, seed=1).iter_rows(named=True):
        want = stats.sample_size_two_proportions(
            row["baseline"],
            row["relative_lift"],
            alpha=row["alpha"],
            power=row["power"],
            alternative=row["alternative"],
        ).n_control
        assert row["n_per_arm"] == want
    # Revenue per user: the same grid as conversion, from each segment's mean and SD.
    figures = {
        f"segment: {r['segment']}": r
        for r in _query(
            warehouse,
            "SELECT segment, avg(revenue) AS mean, stddev_samp(revenue) AS sd "
            "FROM experiments.segment_outcomes WHERE active GROUP BY segment",
        ).iter_rows(named=True)
    }
    revenue = table.filter(pl.col("table") == "revenue_sample_size")
    grid = len(experiments.LIFTS) * len(experiments.ALPHAS) * len(experiments.POWERS) * 2
    assert revenue.group_by("baseline_source").len()["len"].to_list() == [grid] * len(
        revenue["baseline_source"].unique()
    )
    for row in revenue.sample(20, seed=1).iter_rows(named=True):
        seg = figures[row["baseline_source"]]
        assert row["baseline"] == pytest.approx(seg["mean"], rel=1e-9)
        want = stats.sample_size_continuous(
            seg["mean"],
            seg["sd"],
            row["relative_lift"],
            alpha=row["alpha"],
            power=row["power"],
            alternative=row["alternative"],
        ).n_control
        assert abs(row["n_per_arm"] - want) <= 1
    plans = _query(warehouse, "SELECT * FROM experiments.segment_test_plans")
    assert plans["segment"][0] == "Cant Lose Them"
    sim = _query(warehouse, "SELECT * FROM experiments.reactivation_simulation")
    assert sim["simulated"].all()
    cuped = sim.filter(pl.col("method").str.starts_with("CUPED")).row(0, named=True)
    assert 0 < cuped["variance_reduction"] < 1


def test_experiment_tables_equal_independent_figures(warehouse: Path) -> None:
    """segment_outcomes' next window against core.events; the plans' and power tables'
    segment baselines, sample sizes and durations from those outcomes by hand; the SRM row
    from scipy's chi-square on the arm sizes it reports."""
    outcomes = _query(warehouse, "SELECT * FROM experiments.segment_outcomes")
    cutoff, end = outcomes["cutoff"][0], outcomes["window_end"][0]
    window = _query(
        warehouse,
        "SELECT user_id, event_type::VARCHAR AS event_type, price::DOUBLE AS price, "
        f"event_time FROM core.events WHERE event_time >= TIMESTAMP '{cutoff}' "
        f"AND event_time < TIMESTAMP '{end}'",
    )
    bought = pl.col("event_type") == "purchase"
    per_user = window.group_by("user_id").agg(
        bought.any().alias("bought_i"),
        pl.col("price").filter(bought).sum().alias("revenue_i"),
        pl.col("event_time").min().dt.date().alias("first_i"),
    )
    joined = outcomes.join(per_user, on="user_id", how="left")
    assert joined["first_active_day"].equals(joined["first_i"], check_names=False)
    assert (joined["bought"] == joined["bought_i"].fill_null(False)).all()
    assert (joined["active"] == joined["bought_i"].is_not_null()).all()
    assert np.allclose(joined["revenue"], joined["revenue_i"].fill_null(0.0), rtol=1e-9)

    window_days = (end - cutoff).days
    segments = {
        r["segment"]: r
        for r in outcomes.group_by("segment")
        .agg(
            pl.len().alias("users"),
            # the members who visited in the window: every buyer is one of them
            (pl.col("bought").sum() / pl.col("active").sum()).alias("p"),
            pl.col("active").sum().alias("active"),
        )
        .iter_rows(named=True)
    }
    # distinct members who had visited by the end of each day of the window
    for name, seg in segments.items():
        firsts = joined.filter(pl.col("segment") == name)["first_i"].drop_nulls()
        seg["reached"] = [
            int((firsts <= (cutoff + timedelta(days=d)).date()).sum()) for d in range(window_days)
        ]

    def days_to_reach(total: int, seg: dict[str, Any]) -> tuple[int | None, bool | None]:
        """Read off the curve; past it at the last 7 days' new arrivals, exactly; none past
        the segment's size or without new arrivals."""
        reached = seg["reached"]
        for day, have in enumerate(reached, start=1):
            if have >= total:
                return day, False
        lately = Fraction(reached[-1] - reached[-8], 7)
        if total > seg["users"] or not lately:
            return None, None
        return window_days + math.ceil((total - reached[-1]) / lately), True

    plans = _query(warehouse, "SELECT * FROM experiments.segment_test_plans")
    assert set(plans["segment"]) == set(segments)
    for row in plans.iter_rows(named=True):
        seg = segments[row["segment"]]
        assert row["users"] == seg["users"]
        assert row["baseline_conversion"] == pytest.approx(seg["p"], rel=1e-12)
        assert row["members_reached_by_day"] == seg["reached"]
        if seg["p"] > 0 and seg["p"] * 1.2 < 1:
            n = stats.sample_size_two_proportions(seg["p"], 0.2).n_control
            assert row["n_per_arm_lift_20"] == n
            want = days_to_reach(2 * n, seg)
            assert (row["days_lift_20"], row["extrapolated_lift_20"]) == want
    power = _query(
        warehouse,
        "SELECT DISTINCT baseline_source, baseline FROM experiments.ab_power_tables "
        "WHERE \"table\" = 'conversion_sample_size' AND baseline_source LIKE 'segment: %'",
    )
    assert power.height > 0
    for source, baseline in power.iter_rows():
        assert baseline == pytest.approx(segments[source.removeprefix("segment: ")]["p"])
    days = _query(
        warehouse,
        "SELECT baseline_source, coalesce(n_per_arm, sample_size) AS n, days_needed, "
        "days_extrapolated FROM experiments.ab_power_tables "
        "WHERE baseline_source LIKE 'segment: %'",
    )
    for source, n, needed, extrapolated in days.iter_rows():
        seg = segments[source.removeprefix("segment: ")]
        assert (needed, extrapolated) == days_to_reach(2 * n, seg), source

    sim = _query(warehouse, "SELECT * FROM experiments.reactivation_simulation")
    srm = sim.filter(pl.col("metric") == "assignment").row(0, named=True)
    # the at-risk members who visited in the window are the simulated test's users
    at_risk = sum(segments[s]["active"] for s in ("Cant Lose Them", "At Risk") if s in segments)
    treated = round(srm["estimate"] * at_risk)
    expected = scipy.stats.chisquare([at_risk - treated, treated]).pvalue
    assert srm["p_value"] == pytest.approx(expected, rel=1e-9)


def test_recommendation_offline_evaluation_equals_an_independent_count(warehouse: Path) -> None:
    """The hit rate and recall at 10 the recommendations asset reports, recounted in Polars
    from the events and the recommendations as of the same cutoff, on the next window's
    purchases other than the user's anchor (both methods), with the purchases and users that
    leaves out. Buying the anchor again used to count against the recommendations alone."""
    from cip_pipeline.assets.ml import AffinityConfig, recommendations_sql, rules_sql

    home = warehouse.parent.parent / "dagster_home"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["ml", "recommendations"]))
    assert event is not None and event.asset_materialization is not None
    reported = event.asset_materialization.metadata["offline_evaluation"].value
    cutoff = datetime.fromisoformat(reported["cutoff"])
    config = AffinityConfig()
    as_of = f"{cutoff:%Y-%m-%d %H:%M:%S}"
    recs = _query(
        warehouse, recommendations_sql(config, f"({rules_sql(config, as_of)})", as_of)
    ).select(pl.col("product_id").alias("anchor"), "recommended_product_id")
    events = _query(
        warehouse,
        "SELECT user_id, product_id, event_type::VARCHAR AS t, event_time FROM core.events",
    )
    horizon = cutoff + timedelta(days=config.horizon_days)
    before = events.filter(pl.col("event_time") < cutoff)
    nxt = (
        events.filter(
            pl.col("t") == "purchase",
            pl.col("event_time") >= cutoff,
            pl.col("event_time") < horizon,
        )
        .select("user_id", "product_id")
        .unique()
    )
    last = before.filter(pl.col("user_id").is_in(nxt["user_id"].implode()))
    # several products at the user's last second: the highest id, as the SQL breaks ties
    assert (last["event_time"].dt.microsecond() == 0).all()
    latest = last.group_by("user_id").agg(pl.col("event_time").max().alias("latest"))
    at_latest = last.join(latest, on="user_id").filter(pl.col("event_time") == pl.col("latest"))
    anchors = at_latest.group_by("user_id").agg(pl.col("product_id").max().alias("anchor"))
    bought = nxt.join(anchors, on="user_id")
    # the anchor is never recommended for itself: neither method is scored on buying it again
    targets = bought.filter(pl.col("product_id") != pl.col("anchor"))
    again = bought.filter(pl.col("product_id") == pl.col("anchor"))
    only_anchor = again.join(targets, on="user_id", how="anti")
    # popularity's 10 for a user: the most bought other than the user's anchor (which is
    # never a target), so that it offers 10 possible targets as recs do
    ranked = (
        before.filter(pl.col("t") == "purchase")
        .group_by("product_id")
        .len()
        .sort(["len", "product_id"], descending=[True, False])["product_id"]
        .to_list()
    )
    popular_for = {
        anchor: set([p for p in ranked if p != anchor][:10]) for anchor in anchors["anchor"]
    }
    assert any(a in ranked[:10] for a in popular_for)  # the case the rule is for occurs
    per_user = (
        targets.join(
            recs.with_columns(pl.lit(True).alias("hit")),
            left_on=["anchor", "product_id"],
            right_on=["anchor", "recommended_product_id"],
            how="left",
        )
        .with_columns(
            pl.struct("anchor", "product_id")
            .map_elements(
                lambda r: r["product_id"] in popular_for[r["anchor"]], return_dtype=pl.Boolean
            )
            .alias("is_popular")
        )
        .group_by("user_id")
        .agg(
            pl.len().alias("bought"),
            pl.col("hit").fill_null(False).sum().alias("hits"),
            pl.col("is_popular").fill_null(False).sum().alias("popular_hits"),
        )
    )
    users = per_user.height
    assert reported["users"] == users > 100
    assert reported["anchor_purchases_excluded"] == again.height > 0
    assert reported["users_only_anchor_excluded"] == only_anchor.height > 0
    assert users + only_anchor.height == bought["user_id"].n_unique()
    # buyers of the window with no event before the cutoff have no anchor
    no_anchor = nxt["user_id"].n_unique() - anchors.height
    assert reported["users_without_anchor_excluded"] == no_anchor > 0
    for name, hits in (("", "hits"), ("popular_", "popular_hits")):
        assert reported[f"{name}hit_rate_at_10"] == pytest.approx(
            (per_user[hits] > 0).mean(), rel=1e-12
        )
        assert reported[f"{name}recall_at_10"] == pytest.approx(
            per_user[hits].sum() / per_user["bought"].sum(), rel=1e-12
        )


def _warehouse_copy(warehouse: Path, tmp_path: Path) -> tuple[Path, dg.Definitions]:
    """A copy of the module's data directory (without its Dagster home), and definitions
    over it."""
    root = tmp_path / "data"
    shutil.copytree(
        warehouse.parent.parent, root, ignore=shutil.ignore_patterns("spill", "dagster_home")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIP_DATA_DIR", str(root))
        defs = definitions.build_definitions()
    return root / "warehouse" / "cip.duckdb", defs


def _materialize(
    defs: dg.Definitions, asset: dg.AssetsDefinition, instance: dg.DagsterInstance
) -> dict[str, Any]:
    """Materialize `asset` alone (November, if partitioned) as `cip run` does; its metadata."""
    job = ALL_MONTHS_JOB if asset.partitions_def is None else MONTHLY_JOB
    partition = None if asset.partitions_def is None else "2019-11-01"
    summary = execute(defs, job, instance, "alone", partition, [asset])
    assert summary.success, summary.failures
    return recorded(instance, asset.key)


def test_offline_evaluation_is_reused_only_while_what_it_reads_is_unchanged(
    warehouse: Path, tmp_path: Path
) -> None:
    copy, defs = _warehouse_copy(warehouse, tmp_path)
    with dg.DagsterInstance.from_config(str(warehouse.parent.parent / "dagster_home")) as home:
        original = home.get_latest_materialization_event(ml.recommendations.key)
    assert original is not None and original.asset_materialization is not None
    expected = original.asset_materialization.metadata[ml.EVALUATION].value
    until = datetime.fromisoformat(expected["cutoff"]) + timedelta(days=14)

    def build(instance: dg.DagsterInstance) -> tuple[dict, bool]:
        summary = execute(defs, ALL_MONTHS_JOB, instance, "recs", assets=[ml.recommendations])
        assert summary.success, summary.failures
        event = instance.get_latest_materialization_event(ml.recommendations.key)
        assert event is not None and event.asset_materialization is not None
        reused = any(
            "offline evaluation reused" in (entry.user_message or "")
            for entry in instance.all_logs(summary.run_id)
        )
        return event.asset_materialization.metadata[ml.EVALUATION].value, reused

    def change_one_purchase(where: str) -> None:
        with duckdb.connect(str(copy)) as con:
            con.execute(
                "UPDATE core.events SET price = price + 1 WHERE rowid = (SELECT min(rowid) "
                f"FROM core.events WHERE event_type = 'purchase' AND {where})",
                {"until": until},
            )

    with dg.DagsterInstance.ephemeral() as instance:
        assert build(instance) == (expected, False)  # nothing recorded yet: computed
        assert build(instance) == (expected, True)
        change_one_purchase("event_time >= $until")  # after the window: not read
        assert build(instance) == (expected, True)
        change_one_purchase("event_time < $until")  # read, though the figures do not move
        evaluation, reused = build(instance)
        assert not reused and evaluation == expected


def test_late_rows_rebuild_only_the_user_day_chunks_and_snapshots_that_read_them(
    warehouse: Path, tmp_path: Path
) -> None:
    """The nightly case: a late purchase on the month's last day. Of November's user-days only
    the chunk holding that day is built again, of the propensity snapshots only the score
    snapshot (the labelled ones read no day that late); what is stored equals a full build."""
    copy, defs = _warehouse_copy(warehouse, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        # about a week of the sample's events per user-day chunk
        patch.setattr(core, "BYTES_PER_EVENT", 5_000)

        def build(asset: dg.AssetsDefinition, instance: dg.DagsterInstance) -> list[bool]:
            return [c["kept"] for c in _materialize(defs, asset, instance)[CHUNKS]]

        def stored(query: str) -> pl.DataFrame:
            return _query(copy, query).sort(pl.all())

        def full_build(selects: list[str]) -> pl.DataFrame:
            con = duckdb.connect(str(copy), read_only=True)
            try:
                return pl.concat([con.sql(s).pl() for s in selects]).sort(pl.all())
            finally:
                con.close()

        user_days = "SELECT * FROM core.fact_user_days WHERE day >= DATE '2019-11-01'"
        features = "SELECT * FROM ml.propensity_features"
        with dg.DagsterInstance.ephemeral() as instance:
            first = build(core.fact_user_days, instance)
            assert len(first) >= 3 and not any(first)
            assert build(core.fact_user_days, instance) == [True] * len(first)
            snapshots = build(ml.propensity_features, instance)
            assert not any(snapshots)
            assert build(ml.propensity_features, instance) == [True] * len(snapshots)

            with duckdb.connect(str(copy)) as con:
                con.execute(
                    "UPDATE core.events SET price = price + 1 WHERE rowid = (SELECT min(rowid) "
                    "FROM core.events WHERE event_type = 'purchase' "
                    "AND event_time >= TIMESTAMP '2019-11-30')"
                )
            assert build(core.fact_user_days, instance) == [True] * (len(first) - 1) + [False]
            assert build(ml.propensity_features, instance) == [True] * (len(snapshots) - 1) + [
                False
            ]
            con = duckdb.connect(str(copy), read_only=True)
            try:
                november = SqlTable("core", "events", "event_time >= TIMESTAMP '2019-11-01'")
                chunks = user_days_chunks(con, november, datetime(2019, 12, 1), 1_000_000)
            finally:
                con.close()
            assert stored(user_days).equals(full_build([c.select for c in chunks]))
            plan = prop.plan_snapshots(
                *_query(copy, "SELECT min(event_time), max(event_time) FROM core.events").row(0)
            )
            assert stored(features).equals(full_build(list(snapshot_selects(plan).values())))


def test_score_snapshot_reads_its_all_time_figures_from_dim_users_of_the_same_user_days(
    warehouse: Path, tmp_path: Path
) -> None:
    """The score snapshot's cutoff follows every user-day, so the all-time figures that
    core.dim_users adds up are the same, row for row, as those grouped from the user-days. The
    snapshot reads them there only while dim_users' last build added up the user-days there
    are now (a digest of their content, not which was built last)."""
    copy, defs = _warehouse_copy(warehouse, tmp_path)
    first, last = _query(copy, "SELECT min(event_time), max(event_time) FROM core.events").row(0)
    plan = prop.plan_snapshots(first, last)
    score = f"{plan.score:%Y-%m-%d} (score)"
    of_users, of_days = snapshot_selects(plan, users_current=True), snapshot_selects(plan)
    assert "FROM core.dim_users" in of_users[score]
    assert "FROM core.dim_users" not in of_days[score]
    assert {k: v for k, v in of_users.items() if k != score} == {
        k: v for k, v in of_days.items() if k != score
    }
    from_users, from_days = (_query(copy, q[score]).sort("user_id") for q in (of_users, of_days))
    users = _query(copy, "SELECT count(*) AS n FROM core.dim_users")["n"][0]
    assert from_users.height == users and from_users.equals(from_days)
    assert from_users.schema == from_days.schema

    source = "score_snapshot_all_time_from"
    score_rows = "SELECT * FROM ml.propensity_features WHERE role = 'score'"
    with dg.DagsterInstance.ephemeral() as instance:
        _materialize(defs, core.fact_user_days, instance)
        meta = _materialize(defs, ml.propensity_features, instance)
        assert "not built from" in str(meta[source])  # no dim_users recorded
        _materialize(defs, core.dim_users, instance)
        assert _materialize(defs, ml.propensity_features, instance)[source] == "core.dim_users"
        stored = _query(copy, "SELECT * FROM ml.propensity_features").sort(pl.all())
        # The user-days built again to the same rows: dim_users still adds them up, and every
        # snapshot keeps its rows.
        _materialize(defs, core.fact_user_days, instance)
        meta = _materialize(defs, ml.propensity_features, instance)
        assert meta[source] == "core.dim_users"
        assert all(c["kept"] for c in meta[CHUNKS])
        assert _query(copy, "SELECT * FROM ml.propensity_features").sort(pl.all()).equals(stored)
        # A purchase added to a user-day behind dim_users' back (say, a build of the user-days
        # stopped after its commit): dim_users no longer adds the user-days up.
        con = duckdb.connect(str(copy))
        try:
            con.execute(
                "UPDATE core.fact_user_days SET purchases = purchases + 1, revenue = revenue + 10 "
                "WHERE (user_id, day) = (SELECT (user_id, day) FROM core.fact_user_days "
                "WHERE purchases = 0 ORDER BY user_id, day LIMIT 1)"
            )
        finally:
            con.close()
        meta = _materialize(defs, ml.propensity_features, instance)
        assert str(meta[source]).startswith("core.fact_user_days (core.dim_users was not built")
        changed = _query(copy, score_rows).drop("role", "label").sort("user_id")
        assert changed.equals(_query(copy, of_days[score]).drop("role", "label").sort("user_id"))
        stale = _query(copy, of_users[score]).drop("role", "label").sort("user_id")
        assert not changed.equals(stale)  # what the stale dim_users would have given


def test_dim_users_is_not_read_for_other_user_days_or_any_past_the_score_cutoff() -> None:
    plan = prop.plan_snapshots(datetime(2019, 10, 1), datetime(2019, 11, 30, 23, 59))
    days = [(datetime(2019, 11, 29), 10, 123), (datetime(2019, 11, 30), 12, 456)]
    inputs = [("user_days", *day) for day in days] + [("sessions", days[0][0], 7, 89)]
    with dg.DagsterInstance.ephemeral() as instance:

        def dim_users_built_from(read: list[tuple[datetime, int, int]]) -> None:
            digest = core.user_days_digest(read)
            instance.report_runless_asset_event(
                dg.AssetMaterialization(core.DIM_USERS, metadata={core.USER_DAYS_READ: digest})
            )

        assert "not built from" in str(ml.dim_users_unusable(instance, plan, inputs))
        dim_users_built_from(days)
        assert ml.dim_users_unusable(instance, plan, inputs) is None
        other = [("user_days", days[0][0], 10, 124), inputs[1]]
        assert "not built from" in str(ml.dim_users_unusable(instance, plan, other))
        # the same user-days, one of them on the score cutoff: dim_users has no cutoff
        late = [*days[:1], (plan.score, 12, 456)]
        dim_users_built_from(late)
        inputs_late = [("user_days", *day) for day in late]
        assert ml.dim_users_unusable(instance, plan, inputs_late) == (
            "user-days on or after the score cutoff"
        )


CATEGORY_CODES = {1: "sport.bike", 2: "kids.toys", 3: "auto.parts"}
MONTHS = (
    (datetime(2019, 10, 1), datetime(2019, 11, 1)),
    (datetime(2019, 11, 1), datetime(2019, 12, 1)),
)


def _hand_warehouse(
    rows: list[tuple[str, str, int, int, str | None, int, str]], path: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """core.events of hand-made rows (time, type, product, category id, brand, user, session
    name) in October and November 2019, with core.fact_user_days and core.fact_sessions built
    from them by the warehouse's own SQL."""
    con = duckdb.connect(str(path) if path else ":memory:")
    con.execute(
        "CREATE SCHEMA core; CREATE SCHEMA ml; CREATE TABLE core.events (event_time TIMESTAMP,"
        " event_type VARCHAR, product_id INTEGER, category_id BIGINT, category_code VARCHAR,"
        " brand VARCHAR, price DECIMAL(9, 2), user_id INTEGER, user_session UUID)"
    )
    if rows:
        con.executemany(
            "INSERT INTO core.events VALUES"
            " ($1::TIMESTAMP, $2, $3, $4, $5, $6, 5, $7, md5($8)::UUID)",
            [(t, e, p, c, CATEGORY_CODES[c], b, u, s) for t, e, p, c, b, u, s in rows],
        )
    events = SqlTable("core", "events")
    user_days = user_days_chunks(con, events, datetime(2020, 1, 1), 10**9)
    sessions = [
        c for start, end in MONTHS for c in core.session_chunks(con, events, start, end, end, None)
    ]
    for table, parts in (("fact_user_days", user_days), ("fact_sessions", sessions)):
        con.execute(f"CREATE TABLE core.{table} AS {parts[0].select}")
        for part in parts[1:]:
            con.execute(f"INSERT INTO core.{table} BY NAME {part.select}")
    return con


def test_a_session_going_on_past_the_cutoff_gives_the_features_its_part_before_it() -> None:
    """A session from 23:50 to 23:55 before the cutoff, and a purchase in it at 00:05 after:
    the purchase moves the label, no feature. By hand: session s0 lasts 600 s over products
    1 and 2, s1 before the cutoff 300 s over product 3."""
    cutoff = datetime(2019, 10, 29)
    base = [
        ("2019-10-20 10:00:00", "view", 1, 1, "acme", 1, "s0"),
        ("2019-10-20 10:10:00", "view", 2, 1, "acme", 1, "s0"),
        ("2019-10-28 23:50:00", "view", 3, 1, "acme", 1, "s1"),
        ("2019-10-28 23:55:00", "cart", 3, 1, "acme", 1, "s1"),
    ]
    later = [("2019-10-29 00:05:00", "purchase", 4, 1, "acme", 1, "s1")]
    plan = prop.SnapshotPlan([], cutoff, datetime(2019, 12, 1), 14, 28)
    select = snapshot_selects(plan)[f"{cutoff:%Y-%m-%d} (validation)"]
    expected = {"sessions_w": 2, "avg_session_seconds": 450.0, "session_products_w": 3}
    labels = []
    for rows in (base, base + later):
        row = _hand_warehouse(rows).sql(select).pl().row(0, named=True)
        assert {k: float(row[k]) for k in expected} == expected
        labels.append(row["label"])
    assert labels == [False, True]


def test_the_plan_lists_the_labelled_cutoffs_it_leaves_out_and_the_days_it_needs() -> None:
    first = datetime(2019, 10, 1)
    plan = prop.plan_snapshots(first, datetime(2019, 11, 30, 23, 59))
    # By hand: weekly cutoffs from Oct 15 are labelled while cutoff + 14 days <= Dec 1 (Oct 15
    # to Nov 12); Nov 5's label window runs past the validation cutoff, Nov 12.
    assert plan.not_built == [datetime(2019, 11, 5)]
    described = plan.describe()
    assert described["ranges"][0] == {
        "cutoff": "2019-10-15",
        "role": "train",
        "window_from": "2019-09-17",
        "features_before": "2019-10-15",
        "label_from": "2019-10-15",
        "label_before": "2019-10-29",
    }
    assert [r["cutoff"] for r in described["labelled_not_built"]] == ["2019-11-05"]
    # 41 days: Oct 15 and Oct 22 labelled, Oct 15's window runs past Oct 22: no training one
    short = prop.plan_snapshots(first, datetime(2019, 11, 10, 23))
    assert short.validation == datetime(2019, 10, 22) and short.train == []
    assert short.not_built == [datetime(2019, 10, 15)]
    # 14 days' warm-up, two weeks to a validation cutoff a horizon later, its own horizon
    assert prop.min_days_of_data(14) == 42
    for horizon in (5, 7, 10, 14, 21):
        needed = next(
            days
            for days in range(1, 100)
            if prop.plan_snapshots(
                first, first + timedelta(days=days - 1, hours=23), horizon
            ).usable
        )
        assert prop.min_days_of_data(horizon) == needed, horizon


def test_too_little_data_skips_the_ml_assets_with_their_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty core.events: the features and the recommendations say why they were not built,
    in cip run's summary, and the model and scores wait for them; nothing fails."""
    from cip_pipeline.runner import print_summary

    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    (tmp_path / "warehouse").mkdir()
    _hand_warehouse([], tmp_path / "warehouse" / "cip.duckdb").close()
    assets = [
        ml.propensity_features,
        ml.propensity_model,
        ml.propensity_scores,
        ml.product_affinity,
        ml.recommendations,
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        summary = execute(
            definitions.build_definitions(), ALL_MONTHS_JOB, instance, "x", None, assets
        )
    out = io.StringIO()
    print_summary(summary, out)
    assert summary.success and summary.failures == [], out.getvalue()
    assert "skipped ml/propensity_features: core.events is empty" in out.getvalue()
    assert "skipped ml/recommendations: core.events is empty" in out.getvalue()
    assert any(s.startswith("ml__propensity_model") for s in summary.skipped), summary.skipped


def _model_skip_reason(db: Path) -> str:
    from cip_pipeline.assets.common import SKIPPED
    from cip_pipeline.resources import WarehouseResource

    with dg.build_asset_context() as context:
        events = list(ml.propensity_model(context, warehouse=WarehouseResource(path=str(db))))
    [observation] = [e for e in events if isinstance(e, dg.AssetObservation)]
    return str(observation.metadata[SKIPPED].value)


def test_the_model_says_whether_history_or_buyers_are_missing(tmp_path: Path) -> None:
    def features(db: Path, last: str, snapshots: list[tuple[str, str]], users: int) -> None:
        # an event every day from Oct 1 to `last`: a day without one would leave cutoffs out
        days = (datetime.fromisoformat(last) - datetime(2019, 10, 1)).days + 1
        con = _hand_warehouse(
            [
                (f"{datetime(2019, 10, 1, 10) + timedelta(days=n)}", "view", 1, 1, None, 1, "a")
                for n in range(days)
            ],
            db,
        )
        con.execute(
            "CREATE TABLE ml.propensity_features AS SELECT s.snapshot::TIMESTAMP AS snapshot,"
            " s.role, 14 AS horizon_days, 28 AS window_days, u::INTEGER AS user_id,"
            " 1 AS events_w, CASE WHEN s.role = 'score' THEN NULL ELSE false END AS label"
            f" FROM (VALUES {', '.join(str(s) for s in snapshots)}) AS s(snapshot, role),"
            f" range({users}) AS t(u)"
        )
        con.close()

    # Oct 1 to Nov 10, 41 days: one labelled snapshot short of a training one (42 days)
    short = tmp_path / "short.duckdb"
    features(
        short, "2019-11-10 10:00:00", [("2019-10-22", "validation"), ("2019-11-11", "score")], 10
    )
    reason = _model_skip_reason(short)
    assert reason.startswith("not enough history for an out-of-time split")
    assert "needs 42 days of data with a 14-day horizon" in reason
    assert reason.endswith("core.events spans 41"), reason
    # two months, no buyer in any of the four labelled snapshots of 5,000 users
    no_buyers = tmp_path / "no_buyers.duckdb"
    snapshots = [
        ("2019-10-15", "train"),
        ("2019-10-22", "train"),
        ("2019-10-29", "train"),
        ("2019-11-12", "validation"),
        ("2019-12-01", "score"),
    ]
    features(no_buyers, "2019-11-30 10:00:00", snapshots, 5000)
    assert _model_skip_reason(no_buyers).startswith(
        "no buyer in any labelled snapshot (20000 users in the training and validation"
    )
    # the features never built (their run skipped on empty events): a reason, not a crash
    never_built = tmp_path / "never_built.duckdb"
    _hand_warehouse([("2019-10-01 10:00:00", "view", 1, 1, None, 1, "a")], never_built).close()
    assert _model_skip_reason(never_built) == (
        "ml.propensity_features does not exist: materialize it first"
    )


def _recommendations_metadata(db: Path, instance: dg.DagsterInstance) -> dict[str, Any]:
    from cip_pipeline.resources import WarehouseResource

    with dg.build_asset_context(instance=instance) as context:
        outputs = list(
            ml.recommendations(
                context, config=ml.AffinityConfig(), warehouse=WarehouseResource(path=str(db))
            )
        )
    [output] = [o for o in outputs if isinstance(o, dg.Output)]
    return {k: v.value for k, v in output.metadata.items()}


def test_an_offline_evaluation_of_no_user_leaves_the_rates_undefined(tmp_path: Path) -> None:
    """Oct 2 to Oct 31: the validation cutoff is Oct 16 (14 days in), and its window's only
    buyer has no event before it: no user to evaluate, so no rate (not 0)."""
    db = tmp_path / "cip.duckdb"
    _hand_warehouse(
        [
            ("2019-10-02 10:00:00", "view", 1, 1, "acme", 1, "a"),
            ("2019-10-20 10:00:00", "purchase", 2, 1, "acme", 2, "b"),
            ("2019-10-31 10:00:00", "view", 3, 1, "acme", 3, "c"),
        ],
        db,
    ).close()
    with dg.DagsterInstance.ephemeral() as instance:
        evaluation = _recommendations_metadata(db, instance)[ml.EVALUATION]
    assert evaluation["cutoff"] == "2019-10-16 00:00:00"
    assert evaluation["users"] == 0 and evaluation["users_without_anchor_excluded"] == 1
    for rate in (
        "hit_rate_at_10",
        "recall_at_10",
        "popular_hit_rate_at_10",
        "popular_recall_at_10",
    ):
        assert evaluation[rate] is None, rate
    assert "no user to evaluate" in evaluation["undefined"]


def test_the_offline_evaluation_uses_the_published_rules_settings(tmp_path: Path) -> None:
    """Products 1 and 2 (other categories: no fallback between them) are bought together in
    two sessions of three, a rule only with a pair support of 2 (lift 2 * 3 / (2 * 2) = 1.5).
    User 20 last touches 1 before the cutoff (Oct 17) and buys 2 after it: a hit only for
    rules made as ml/product_affinity's were (support 2), not with the default 5."""
    db = tmp_path / "cip.duckdb"
    _hand_warehouse(
        [
            ("2019-10-03 10:00:00", "purchase", 1, 1, None, 11, "s1"),
            ("2019-10-03 10:01:00", "purchase", 2, 2, None, 11, "s1"),
            ("2019-10-04 10:00:00", "purchase", 1, 1, None, 12, "s2"),
            ("2019-10-04 10:01:00", "purchase", 2, 2, None, 12, "s2"),
            ("2019-10-05 10:00:00", "purchase", 9, 3, None, 13, "s3"),
            ("2019-10-10 10:00:00", "view", 1, 1, None, 20, "s4"),
            ("2019-10-20 10:00:00", "purchase", 2, 2, None, 20, "s5"),
            ("2019-10-31 10:00:00", "view", 9, 3, None, 30, "s6"),
        ],
        db,
    ).close()
    published = ml.product_affinity(config=ml.AffinityConfig(min_pair_support=2))
    assert published.metadata[ml.RULE_SETTINGS_KEY].value["min_pair_support"] == 2
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(ml.AFFINITY_KEY, metadata=published.metadata)
        )
        metadata = _recommendations_metadata(db, instance)
    evaluation = metadata[ml.EVALUATION]
    assert evaluation["cutoff"] == "2019-10-17 00:00:00" and evaluation["users"] == 1
    assert evaluation["hit_rate_at_10"] == 1.0 and evaluation["recall_at_10"] == 1.0
    assert evaluation["rule_settings"]["min_pair_support"] == 2
    assert "product_affinity" in metadata[ml.RULE_SETTINGS_FROM]
    with dg.DagsterInstance.ephemeral() as instance:  # nothing published: its own settings
        metadata = _recommendations_metadata(db, instance)
    assert metadata[ml.EVALUATION]["hit_rate_at_10"] == 0.0
    assert "own config" in metadata[ml.RULE_SETTINGS_FROM]


def test_fallback_never_takes_two_products_without_a_brand_for_one_brand() -> None:
    """One category: 10 and 11 without a brand (a view; a purchase), 12 and 13 of acme (three
    purchases; a view). Popularity = purchases + views / 100: 12 3.0, 11 1.0, 10 and 13 0.01.
    Only 13 shares a brand (12's); the others go by popularity alone (ties: lower id)."""
    con = hand_made_events()
    rows = [(10, None, "view"), (11, None, "purchase"), (13, "acme", "view")]
    rows += [(12, "acme", "purchase")] * 3
    con.executemany(
        "INSERT INTO core.events (event_time, event_type, product_id, category_id, brand)"
        " VALUES (TIMESTAMP '2019-11-20 12:00', $3, $1, 1, $2)",
        rows,
    )
    con.execute(
        "CREATE TABLE core.fact_sessions (start_time TIMESTAMP, end_time TIMESTAMP,"
        " viewed_products INTEGER[])"
    )
    no_rules = (
        "(SELECT 0 AS antecedent, 0 AS consequent, 0.0 AS confidence, 0.0 AS lift WHERE false)"
    )
    got = con.execute(
        "SELECT product_id, list(recommended_product_id ORDER BY rank) "
        f"FROM ({ml.recommendations_sql(ml.AffinityConfig(), no_rules)}) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == [(10, [12, 11, 13]), (11, [12, 10, 13]), (12, [13, 11, 10]), (13, [12, 11, 10])]


def test_scores_refuse_a_model_trained_with_other_categories(tmp_path: Path) -> None:
    """encode numbers the primary categories alphabetically from the current list: a model
    registered with another list fails the scoring step by name."""
    from cip_pipeline.assets.ml import propensity_scores
    from cip_pipeline.io_managers.model_io_manager import RegisteredModel
    from cip_pipeline.resources import WarehouseResource

    older = sorted(set(prop.CATEGORY_NAMES) - {"kids"})
    model = RegisteredModel(
        booster=lgb.Booster(model_str=_booster_text()),
        params={},
        features=prop.FEATURES,
        windows={},
        metrics={},
        encodings={"preferred_brand": {}, "primary_category": older},
        name="ml/propensity_model",
        version=7,
    )
    warehouse = WarehouseResource(path=str(tmp_path / "cip.duckdb"))
    with (
        dg.build_asset_context() as context,
        pytest.raises(dg.Failure, match="version 7 was trained with primary categories"),
    ):
        propensity_scores(context, model=model, warehouse=warehouse)


def _booster_text() -> str:
    rng = np.random.default_rng(3)
    x = rng.random((100, len(prop.FEATURES)))
    data = lgb.Dataset(x, (x[:, 0] > 0.5).astype(int), feature_name=prop.FEATURES)
    return lgb.train({"objective": "binary", "verbose": -1}, data, 2).model_to_string()


def test_the_registry_records_each_snapshots_windows_and_what_the_refit_used(
    warehouse: Path,
) -> None:
    """Two months (Oct 1 to Nov 30), by hand: training cutoffs Oct 15, 22 and 29, validation
    Nov 12, scoring Dec 1; windowed features over the 28 days before each cutoff, the label
    over the 14 days from it; Nov 5 labelled but in neither."""
    latest = _query(
        warehouse, "SELECT windows, encodings FROM ml.model_registry ORDER BY version DESC LIMIT 1"
    ).row(0, named=True)
    windows = json.loads(latest["windows"])
    assert (windows["horizon_days"], windows["window_days"], windows["step_days"]) == (14, 28, 7)
    expected = [
        ("2019-10-15", "train", "2019-09-17", "2019-10-29"),
        ("2019-10-22", "train", "2019-09-24", "2019-11-05"),
        ("2019-10-29", "train", "2019-10-01", "2019-11-12"),
        ("2019-11-12", "validation", "2019-10-15", "2019-11-26"),
        ("2019-12-01", "score", "2019-11-03", None),
    ]
    assert windows["ranges"] == [
        {
            "cutoff": cutoff,
            "role": role,
            "window_from": since,
            "features_before": cutoff,
            "label_from": cutoff if label_before else None,
            "label_before": label_before,
        }
        for cutoff, role, since, label_before in expected
    ]
    assert windows["refit_on"] == [f"{c} ({r})" for c, r, _, _ in expected[:4]]
    assert [(r["cutoff"], r["label_before"]) for r in windows["labelled_not_built"]] == [
        ("2019-11-05", "2019-11-19")
    ]
    assert windows["snapshots"] == {c: r for c, r, _, _ in expected}  # what the dashboard reads
    assert json.loads(latest["encodings"])["primary_category"] == sorted(prop.CATEGORY_NAMES)
