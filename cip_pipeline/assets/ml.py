"""Machine learning assets: propensity features, model (in the registry), scores."""

import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import sklearn
from pydantic import Field

from cip_pipeline import sql
from cip_pipeline.assets.analytics import rfm_scored
from cip_pipeline.assets.common import SKIPPED, recorded, skipped
from cip_pipeline.assets.core import (
    DIM_USERS,
    FACT_SESSIONS,
    FACT_USER_DAYS,
    USER_DAYS_READ,
    user_days_digest,
)
from cip_pipeline.budget import Budget
from cip_pipeline.io_managers import Chunk, SqlQuery, TableName, fingerprint
from cip_pipeline.io_managers.model_io_manager import (
    RegisteredModel,
    TrainedModel,
    registered_from,
)
from cip_pipeline.ml import propensity as prop
from cip_pipeline.partitions import WAREHOUSE_POOL
from cip_pipeline.resources import WarehouseResource

FEATURES_KEY = dg.AssetKey(["ml", "propensity_features"])
MODEL_KEY = dg.AssetKey(["ml", "propensity_model"])
# ml/recommendations metadata: the offline evaluation, and what it was computed from.
EVALUATION = "offline_evaluation"
EVALUATION_FINGERPRINT = "offline_evaluation_fingerprint"
# Rows of each snapshot that reach Python: a uniform hash sample keeps metrics unbiased.
MAX_ROWS_PER_SNAPSHOT = 100_000
SCORING_BATCH_ROWS = 250_000  # users in Python at a time
# Below this many buyers (or non-buyers) per side, PR-AUC comparisons are noise.
MIN_BUYERS = 200


class PropensityConfig(dg.Config):
    horizon_days: int = Field(
        default=14, ge=1, description="label window: purchases in the days from the cutoff"
    )
    window_days: int = Field(
        default=28, ge=14, description="feature window; holds the 7-day and prior 7-day features"
    )


def _plan(
    con: duckdb.DuckDBPyConnection, horizon_days: int, window_days: int
) -> prop.SnapshotPlan | None:
    """The snapshots the data holds now: from its first and last event, leaving out the
    cutoffs whose windows hold a day without user-days (a missing month); None when empty."""
    first, last = con.execute(sql.statement("ml", "data_range")).fetchall()[0]
    if first is None:
        return None
    days = [day for (day,) in con.execute(sql.statement("ml", "event_days")).fetchall()]
    return prop.plan_snapshots(first, last, horizon_days, window_days, days_with_events=days)


@dg.asset(
    key=FEATURES_KEY,
    deps=[FACT_USER_DAYS, FACT_SESSIONS, DIM_USERS],
    group_name="ml",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Per user and weekly snapshot cutoff: behaviour strictly before the cutoff, "
    "and the label 'purchases in the next H days'. The last snapshot (end of the "
    "data) is unlabelled and is what the scores use.",
)
def propensity_features(
    context: dg.AssetExecutionContext, config: PropensityConfig, warehouse: WarehouseResource
) -> Iterator[dg.Output[SqlQuery] | dg.AssetObservation]:
    with warehouse.connect(read_only=True) as con:
        plan = _plan(con, config.horizon_days, config.window_days)
        if plan is None:
            reason = "core.events is empty: no snapshot to build"
            context.log.info(f"skipped: {reason}")
            yield skipped(FEATURES_KEY, reason)
            return
        if plan.left_out:
            context.log.warning(
                f"{len(plan.left_out)} labelled snapshots left out: their windows hold days "
                f"without events ({prop.describe_runs(plan.missing_days)})"
            )
        inputs = con.execute(
            sql.statement(
                "ml",
                "snapshot_input_days",
                user_days_content=sql.statement("core", "user_days_content"),
            )
        ).fetchall()
        inputs += straddling_inputs(con, plan)
        split = "possible" if plan.usable else f"not possible: {split_shortfall(plan, con)}"
    unusable = dim_users_unusable(context.instance, plan, inputs)
    chunks = snapshot_chunks(plan, inputs, users_current=unusable is None)
    yield dg.Output(
        SqlQuery.chunked(chunks),
        metadata={
            "windows": dg.MetadataValue.json(plan.describe()),
            "out_of_time_split": split,
            "score_snapshot_all_time_from": "core.dim_users"
            if unusable is None
            else f"core.fact_user_days ({unusable})",
            # in the order of the IO manager's chunks
            "snapshots": dg.MetadataValue.json([c.label for c in chunks]),
        },
    )


def _data_days(con: duckdb.DuckDBPyConnection) -> int:
    """The whole days core.events spans, its first and last included (0 when empty)."""
    first, last = con.execute(sql.statement("ml", "data_range")).fetchall()[0]
    return 0 if first is None else (last.date() - first.date()).days + 1


def split_shortfall(plan: prop.SnapshotPlan, con: duckdb.DuckDBPyConnection) -> str:
    """Why the plan holds no out-of-time split: too short a history (days without events
    or not), or else the cutoffs that days without events left out."""
    days = _data_days(con)
    if not plan.left_out or days < prop.min_days_of_data(plan.horizon_days):
        return history_shortfall(plan.horizon_days, days)
    return (
        f"{len(plan.left_out)} labelled cutoffs ({plan.left_out[0]:%Y-%m-%d} to "
        f"{plan.left_out[-1]:%Y-%m-%d}) are left out, their feature or label windows holding "
        f"days without events in core.fact_user_days ({prop.describe_runs(plan.missing_days)});"
        " the cutoffs left give no training snapshot whose label window ends by a later "
        "validation cutoff"
    )


def history_shortfall(horizon_days: int, days: int) -> str:
    """Why the data holds no out-of-time split, from the plan's rules."""
    return (
        "a training snapshot whose label window ends by a later validation cutoff needs "
        f"{prop.min_days_of_data(horizon_days)} days of data with a {horizon_days}-day "
        f"horizon ({prop.WARMUP_DAYS} days before the first cutoff, cutoffs every "
        f"{prop.STEP_DAYS} days); core.events spans {days}"
    )


def straddling_inputs(
    con: duckdb.DuckDBPyConnection, plan: prop.SnapshotPlan
) -> list[tuple[str, datetime, int, int]]:
    """Per cutoff, what its snapshot reads of core.events: the events before the cutoff of
    the sessions going on past it (`straddling_input`), as rows for `snapshot_chunks`."""
    rows = []
    for cutoff, _, _ in plan.cutoffs():
        query = sql.statement("ml", "straddling_input", **_straddling(plan, cutoff))
        n, h = con.execute(query).fetchall()[0]
        rows.append(("straddling", cutoff, int(n), int(h)))
    return rows


def _straddling(plan: prop.SnapshotPlan, cutoff: datetime) -> dict[str, str]:
    """The sessions going on past `cutoff` and their events before it, as identifiers of
    the statements that read them."""
    at = f"{cutoff:%Y-%m-%d %H:%M:%S}"
    return {
        "straddling_sessions": sql.statement(
            "ml", "straddling_sessions", cutoff=at, window_days=str(plan.window_days)
        ),
        "straddling_events": sql.statement("ml", "straddling_events", cutoff=at),
    }


def dim_users_unusable(
    instance: dg.DagsterInstance,
    plan: prop.SnapshotPlan,
    inputs: list[tuple[str, datetime, int, int]],
) -> str | None:
    """Why the score snapshot cannot take its all-time figures from core.dim_users, or None
    when it can: dim_users' last build added up exactly the user-days there are now (its
    recorded digest of them), and none lies on or after the score cutoff (dim_users has no
    cutoff). `inputs` are the rows of `snapshot_input_days`."""
    days = [(day, n, h) for source, day, n, h in inputs if source == "user_days"]
    if recorded(instance, DIM_USERS).get(USER_DAYS_READ) != user_days_digest(days):
        return "core.dim_users was not built from the user-days there are now"
    if any(day >= plan.score for day, _, _ in days):
        return "user-days on or after the score cutoff"
    return None


def snapshot_selects(plan: prop.SnapshotPlan, users_current: bool = False) -> dict[str, str]:
    """One SELECT per snapshot of the plan (`propensity_snapshot` in ml.sql), by its label:
    stored one after the other, memory holds one snapshot's users at a time."""
    return {c.label: c.select for c in snapshot_chunks(plan, [], users_current)}


def snapshot_chunks(
    plan: prop.SnapshotPlan,
    inputs: list[tuple[str, datetime, int, int]],
    users_current: bool = False,
) -> list[Chunk]:
    """The snapshots as chunks of one build, each fingerprinted by its SQL and by the rows it
    reads (`snapshot_input_days`: user-days before the cutoff, or before the end of the label
    window, sessions started before the cutoff; `straddling_inputs`: the events before the
    cutoff of the sessions going on past it). Late rows for the last days of the data leave
    the earlier snapshots' stored rows in place. The score snapshot's cutoff follows every
    user-day: with `users_current` (see `dim_users_unusable`) its all-time figures are read
    from core.dim_users, and its fingerprint holds the SQL that adds them up there."""
    horizon = timedelta(days=plan.horizon_days)
    chunks = []
    for cutoff, role, labelled in plan.cutoffs():
        at = f"{cutoff:%Y-%m-%d %H:%M:%S}"
        of_users = users_current and cutoff == plan.score
        all_time = (
            sql.statement("ml", "snapshot_all_time_of_dim_users")
            if of_users
            else sql.statement("ml", "snapshot_all_time", cutoff=at)
        )
        select = sql.statement(
            "ml",
            "propensity_snapshot",
            all_time=all_time,
            cutoff=at,
            role=role,
            labelled=str(labelled).lower(),
            window_days=str(plan.window_days),
            horizon_days=str(plan.horizon_days),
            rfm_scored=rfm_scored("rfm_valued"),
            **_straddling(plan, cutoff),
        )
        reads_until = {"user_days": cutoff + horizon if labelled else cutoff, "sessions": cutoff}
        read = [
            (n, h)
            for source, day, n, h in inputs
            if (day == cutoff if source == "straddling" else day < reads_until[source])
        ]
        code = select + (sql.statement("core", "dim_users") if of_users else "")
        chunks.append(
            Chunk(
                select,
                label=f"{cutoff:%Y-%m-%d} ({role})",
                fingerprint=fingerprint(code, read),
                keep=f"snapshot = TIMESTAMP '{at}'",
            )
        )
    return chunks


def _sample_query(snapshot: datetime, users: int) -> str:
    per_million = min(1_000_000, int(1_000_000 * MAX_ROWS_PER_SNAPSHOT / max(users, 1)) + 1)
    return sql.statement(
        "ml",
        "feature_sample",
        snapshot=f"{snapshot:%Y-%m-%d %H:%M:%S}",
        per_million=str(per_million),
    )


def _training_inputs(con: duckdb.DuckDBPyConnection, samples: dict[str, str], threads: int) -> str:
    """A fingerprint of what one fit of the model reads and runs: each labelled snapshot's
    sample (by its role: rows and an order-free hash sum), the training code (this module and
    the model's, whole: any change there trains again), the libraries and the threads (they
    change LightGBM's sums)."""
    read = [
        f"{label} {n} {h}"
        for label, query in samples.items()
        for n, h in con.execute(
            f"SELECT count(*), coalesce(sum(hash(f)), 0) FROM ({query}) AS f"
        ).fetchall()
    ]
    code = [Path(__file__).read_text(), Path(prop.__file__).read_text()]
    versions = [lgb.__version__, sklearn.__version__, duckdb.__version__, str(threads)]
    return sql.digest(*read, *code, *versions)


def _skipped_model(
    context: dg.AssetExecutionContext, reason: str
) -> Iterator[dg.AssetObservation | dg.AssetCheckResult]:
    """No model this time: say why, and record the check as not evaluated (a warning, so
    the run does not fail on data that is merely too short)."""
    context.log.info(f"skipped: {reason}")
    yield skipped(MODEL_KEY, reason)
    yield dg.AssetCheckResult(
        check_name="beats_best_baseline",
        asset_key=MODEL_KEY,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={SKIPPED: reason},
    )


@dg.asset(
    key=MODEL_KEY,
    deps=[FEATURES_KEY],
    group_name="ml",
    kinds={"lightgbm"},
    io_manager_key="model_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    check_specs=[
        dg.AssetCheckSpec(
            "beats_best_baseline",
            asset=MODEL_KEY,
            blocking=True,
            description="On the untouched validation snapshot the model's PR-AUC beats the best "
            "simple rule and the logistic regression.",
        )
    ],
    description="LightGBM purchase propensity, validated out of time on the latest labelled "
    "snapshot against simple rules and a logistic regression, then refit on the training and "
    "validation snapshots together and registered in ml.model_registry. Labelled cutoffs "
    "between the last training one and the validation one (their label windows run past the "
    "validation cutoff) are in neither and not built: the metadata's windows list them.",
)
def propensity_model(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.Output | dg.AssetObservation | dg.AssetCheckResult]:
    t0 = time.perf_counter()
    threads = Budget.from_env().threads_per_run
    with warehouse.connect(read_only=True) as con:
        if not TableName.of(FEATURES_KEY).exists(con):
            # never built: its last run skipped (no events) or never ran
            yield from _skipped_model(
                context, "ml.propensity_features does not exist: materialize it first"
            )
            return
        sizes = con.sql(sql.statement("ml", "snapshot_sizes")).pl()
        roles = dict(zip(sizes["snapshot"].to_list(), sizes["role"].to_list(), strict=True))
        train_snaps = [s for s, r in roles.items() if r == "train"]
        val_snaps = [s for s, r in roles.items() if r == "validation"]
        labelled = sizes.filter(pl.col("role") != "score")
        positives = int(labelled["positives"].sum())
        reason = None
        # what the data holds now: which cutoffs its days without events leave out
        current = (
            None
            if sizes.is_empty()
            else _plan(con, int(sizes["horizon_days"].min()), int(sizes["window_days"].min()))
        )
        if sizes.is_empty():
            reason = "ml.propensity_features holds no snapshot"
        elif not train_snaps or not val_snaps:
            horizon = int(sizes["horizon_days"].min())
            history = history_shortfall(horizon, _data_days(con))
            gaps = split_shortfall(current, con) if current is not None else history
            reason = (
                f"not enough history for an out-of-time split: {history}"
                if gaps == history
                else f"no out-of-time split: {gaps}"
            )
        elif positives == 0:
            reason = (
                f"no buyer in any labelled snapshot ({int(labelled['users'].sum())} users "
                "in the training and validation snapshots): nothing to learn from or to "
                "validate on"
            )
        if reason is not None:
            yield from _skipped_model(context, reason)
            return
        plan = stored_plan(sizes, current)
        users = dict(zip(sizes["snapshot"].to_list(), sizes["users"].to_list(), strict=True))
        # training and scored users differ: none is idle in an early training window
        idle = {
            f"{snap:%Y-%m-%d} ({role})": round(k / n, 4)
            for snap, role, n, k in sizes.select("snapshot", "role", "users", "idle").rows()
        }
        samples = {
            f"{s:%Y-%m-%d} ({roles[s]})": _sample_query(s, users[s])
            for s in [*train_snaps, val_snaps[0]]
        }
        inputs = _training_inputs(con, samples, threads)
    windows = {**plan.describe(), "snapshots": {f"{s:%Y-%m-%d}": r for s, r in roles.items()}}
    reused = registered_from(warehouse, MODEL_KEY.to_user_string(), inputs)
    if reused is not None:
        # The nightly refresh adds late rows after the validation window: same fit, same model.
        context.log.info(
            f"version {reused.version} reused: it was trained on the same samples with the "
            "same code"
        )
        # its training windows are these (same samples); the score snapshot is today's
        now = {**reused.windows, **windows}
        yield from _model_outputs(reused, idle, time.perf_counter() - t0, now)
        return
    with warehouse.connect(read_only=True) as con:
        train = pl.concat([con.sql(samples[f"{s:%Y-%m-%d} (train)"]).pl() for s in train_snaps])
        val = con.sql(samples[f"{val_snaps[0]:%Y-%m-%d} (validation)"]).pl()
    buyers = [int(frame["label"].sum()) for frame in (train, val)]
    if min(buyers) < MIN_BUYERS or any(
        f.height - b < MIN_BUYERS for f, b in zip((train, val), buyers, strict=True)
    ):
        reason = (
            f"too few users to learn from or to validate on: {buyers[0]} buyers in the "
            f"training snapshots, {buyers[1]} in the validation one (at least "
            f"{MIN_BUYERS} each, and as many non-buyers)"
        )
        yield from _skipped_model(context, reason)
        return

    x_train, brand_codes = prop.encode(train)
    y_train = train["label"].cast(pl.Int8).to_numpy()
    x_val, _ = prop.encode(val, brand_codes)
    y_val = val["label"].cast(pl.Int8).to_numpy()
    booster = prop.train_booster(x_train, y_train, threads)
    scores = {"lightgbm": prop.booster_probabilities(booster, x_val, prop.LGB_PARAMS)}
    logistic = prop.fit_logistic(x_train, y_train)
    scores["logistic_regression"] = prop.logistic_scores(logistic, x_val)
    scores.update(prop.rule_scores(val))
    probabilistic = ("lightgbm", "logistic_regression")
    weights = prop.bootstrap_weights(len(y_val))
    metrics = {
        name: asdict(prop.evaluate(y_val, s, name in probabilistic, weights))
        for name, s in scores.items()
    }
    beats = metrics["lightgbm"]["pr_auc"] > max(
        m["pr_auc"] for k, m in metrics.items() if k != "lightgbm"
    )
    # Refit on the training and validation snapshots together for the registered model (the
    # labelled cutoffs between them are not built: `windows` lists them).
    final = prop.train_booster(
        np.vstack([x_train, x_val]), np.concatenate([y_train, y_val]), threads
    )
    trained = TrainedModel(
        booster=final,
        params={**prop.LGB_PARAMS, "num_threads": threads, "num_boost_round": prop.NUM_ROUNDS},
        features=prop.FEATURES,
        windows={
            **windows,
            "refit_on": list(samples),
            "rows_train": len(y_train),
            "rows_validation": len(y_val),
        },
        metrics=metrics,
        encodings={
            "preferred_brand": brand_codes,
            "no_brand": len(brand_codes) + 1,
            # in the order of their codes (encode numbers them alphabetically)
            "primary_category": sorted(prop.CATEGORY_NAMES),
        },
        validated=bool(beats),
        inputs=inputs,
    )
    yield from _model_outputs(trained, idle, time.perf_counter() - t0, trained.windows)


def stored_plan(sizes: pl.DataFrame, current: prop.SnapshotPlan | None = None) -> prop.SnapshotPlan:
    """The plan the stored snapshots were built by (`snapshot_sizes`: their cutoffs by role,
    and the horizon and window each records), for the windows the model registers, with the
    days without events of the `current` plan and the cutoffs they leave out (none stored)."""
    rows = sizes.select("snapshot", "role").rows()
    validation = max((s for s, r in rows if r == "validation"), default=None)
    stored = {s for s, _ in rows}
    return prop.SnapshotPlan(
        train=sorted(s for s, r in rows if r == "train"),
        validation=validation,
        score=max((s for s, r in rows if r == "score"), default=max(s for s, _ in rows)),
        horizon_days=int(sizes["horizon_days"].min()),
        window_days=int(sizes["window_days"].min()),
        missing_days=current.missing_days if current else (),
        left_out=tuple(c for c in current.left_out if c not in stored) if current else (),
    )


def _model_outputs(
    model: TrainedModel, idle: dict[str, float], seconds: float, windows: dict[str, Any]
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The model with its metadata, and its check: on the validation snapshot, the LightGBM
    fit's PR-AUC against the best baseline (as recorded in the model's metrics). `idle` and
    `windows`: of the features now (per snapshot, the share of users with no event in the
    window; the snapshots' windows)."""
    m = model.metrics["lightgbm"]
    baselines = {k: v for k, v in model.metrics.items() if k != "lightgbm"}
    best_name = max(baselines, key=lambda k: baselines[k]["pr_auc"])
    best = baselines[best_name]["pr_auc"]
    importance = model.booster.feature_importance("gain").round(2).tolist()
    table = "\n".join(
        ["| model | ROC-AUC | PR-AUC | lift@10% | precision@5% |", "|---|---|---|---|---|"]
        + [
            f"| {k} | {v['roc_auc']:.3f} | {v['pr_auc']:.3f} | {v['at_k']['10%']['lift']:.2f} | "
            f"{v['at_k']['5%']['precision']:.3f} |"
            for k, v in model.metrics.items()
        ]
    )
    yield dg.Output(
        model,
        metadata={
            "roc_auc": m["roc_auc"],
            "pr_auc": m["pr_auc"],
            "brier": m["brier"] or 0.0,
            "lift_at_10pct": m["at_k"]["10%"]["lift"],
            "base_rate": m["base_rate"],
            "best_baseline": best_name,
            "best_baseline_pr_auc": best,
            "comparison": dg.MetadataValue.md(table),
            "intervals": dg.MetadataValue.json(m["intervals"]),
            "feature_importance_gain": dg.MetadataValue.json(
                dict(zip(model.features, importance, strict=True))
            ),
            "windows": dg.MetadataValue.json(windows),
            "idle_in_window_share": dg.MetadataValue.json(idle),
            "trained": not isinstance(model, RegisteredModel),
            "seconds": round(seconds, 3),
        },
    )
    yield dg.AssetCheckResult(
        check_name="beats_best_baseline",
        passed=model.validated,
        asset_key=MODEL_KEY,
        metadata={
            "model_pr_auc": m["pr_auc"],
            "best_baseline": best_name,
            "best_baseline_pr_auc": best,
        },
    )


@dg.asset(
    key=["ml", "propensity_scores"],
    ins={"model": dg.AssetIn(key=MODEL_KEY)},
    deps=[FEATURES_KEY],
    group_name="ml",
    kinds={"lightgbm", "duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    description="Every user seen in any month, scored as of the end of the data: "
    "score, decile (1 = most likely to buy) and the model version.",
)
def propensity_scores(
    context: dg.AssetExecutionContext, model: RegisteredModel, warehouse: WarehouseResource
) -> SqlQuery:
    if model.features != prop.FEATURES:
        # The matrix is built by position: a model of other features would score garbage.
        raise dg.Failure(
            f"{model.name} version {model.version} was trained on features "
            f"{model.features}, but the features asset now builds {prop.FEATURES}: "
            "materialize ml/propensity_model again before scoring"
        )
    trained_categories = model.encodings.get("primary_category")
    if trained_categories is None or sorted(trained_categories) != sorted(prop.CATEGORY_NAMES):
        # encode numbers the categories alphabetically from the current list: codes of
        # another list would mean other categories to the booster.
        raise dg.Failure(
            f"{model.name} version {model.version} was trained with primary categories "
            f"{trained_categories}, but scoring now encodes {sorted(prop.CATEGORY_NAMES)}: "
            "materialize ml/propensity_model again before scoring"
        )
    brand_codes = {k: int(v) for k, v in model.encodings["preferred_brand"].items()}
    no_brand = prop.no_brand_code(brand_codes, model.encodings)
    users = 0
    with warehouse.connect() as con, con.cursor() as reader:
        con.execute(sql.statement("ml", "create_scoring_staging"))
        # One scan streamed in batches (a query per slice of users scanned the table each
        # time: 3.1 s of 12 at 110 M events); scores go in through the other cursor.
        batches = reader.sql(sql.statement("ml", "scoring_rows")).to_arrow_reader(
            SCORING_BATCH_ROWS
        )
        for batch in batches:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            x, _ = prop.encode(frame, brand_codes, no_brand)
            scored = frame.select("user_id", "snapshot").with_columns(
                pl.Series("score", prop.booster_probabilities(model.booster, x, model.params))
            )
            con.register("_scored", scored.to_arrow())
            con.execute("INSERT INTO ml.scoring_staging SELECT * FROM _scored")
            con.unregister("_scored")
            users += frame.height
    context.add_output_metadata({"model_version": model.version, "users_scored": users})
    return SqlQuery(
        sql.statement("ml", "scores_from_staging", version=str(model.version)),
        staging=("ml.scoring_staging",),
    )


class AffinityConfig(dg.Config):
    # 5: the seed's default
    min_pair_support: int = Field(default=5, ge=1, description="baskets holding both products")
    min_lift: float = Field(
        default=1.2, ge=0.0, allow_inf_nan=False, description="rules below this lift are dropped"
    )
    # a pair needs two products in a basket
    max_basket: int = Field(default=50, ge=2, description="larger baskets are left out")
    horizon_days: int = Field(
        default=14, ge=1, description="user baskets' bucket and the evaluation's label window"
    )
    # Co-views come from sessions viewing 2 to this many products. Long sessions add pairs
    # quadratically: at 110 M events, 10 made the offline evaluation 39.6 -> 24.1 s but hit
    # rate at 10 fell 0.0664 -> 0.0641 (14: 30.1 s, 0.0654).
    max_session_views: int = Field(
        default=20, ge=2, description="co-views come from sessions viewing 2 to this many"
    )


NO_CUTOFF = "9999-12-31 00:00:00"


def rules_sql(config: AffinityConfig, cutoff: str = NO_CUTOFF) -> str:
    baskets = sql.statement(
        "ml",
        "baskets",
        cutoff=cutoff,
        max_basket=str(config.max_basket),
        horizon_days=str(config.horizon_days),
    )
    return sql.statement(
        "ml",
        "rules",
        baskets=baskets,
        min_pair_support=str(config.min_pair_support),
        min_lift=str(config.min_lift),
    )


def recommendations_sql(config: AffinityConfig, rules: str, cutoff: str = NO_CUTOFF) -> str:
    return sql.statement(
        "ml",
        "recommendations",
        cutoff=cutoff,
        rules=rules,
        max_session_views=str(config.max_session_views),
    )


# AffinityConfig's settings that make the rules (the others are the recommendations' own),
# recorded by ml/product_affinity under this metadata key.
RULE_SETTINGS = ("min_pair_support", "min_lift", "max_basket", "horizon_days")
RULE_SETTINGS_KEY = "rule_settings"
# ml/recommendations metadata: where the settings of the rules it evaluated came from
RULE_SETTINGS_FROM = "rule_settings_from"
AFFINITY_KEY = dg.AssetKey(["ml", "product_affinity"])
RECOMMENDATIONS_KEY = dg.AssetKey(["ml", "recommendations"])


@dg.asset(
    key=AFFINITY_KEY,
    deps=[dg.AssetKey(["core", "events"])],
    group_name="ml",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    description="Association rules over purchase baskets (sessions, and each user's purchases "
    "in one fixed horizon-long bucket of time counted from the epoch): support, confidence "
    "and lift.",
)
def product_affinity(config: AffinityConfig) -> dg.Output[SqlQuery]:
    # the settings, so that ml/recommendations evaluates rules made as these were
    settings = {k: getattr(config, k) for k in RULE_SETTINGS}
    return dg.Output(
        SqlQuery(rules_sql(config)), metadata={RULE_SETTINGS_KEY: dg.MetadataValue.json(settings)}
    )


def published_rule_settings(
    instance: dg.DagsterInstance, config: AffinityConfig
) -> tuple[AffinityConfig, str]:
    """`config` with the rule settings ml.product_affinity was last built with, and where
    they come from: this asset's own when none are recorded."""
    published = recorded(instance, AFFINITY_KEY).get(RULE_SETTINGS_KEY)
    if isinstance(published, dict) and set(RULE_SETTINGS) <= published.keys():
        update = {k: published[k] for k in RULE_SETTINGS}
        return config.model_copy(update=update), "ml/product_affinity's last materialization"
    return config, "ml/recommendations' own config (ml/product_affinity recorded none)"


@dg.asset(
    key=RECOMMENDATIONS_KEY,
    deps=[AFFINITY_KEY, FACT_SESSIONS],
    group_name="ml",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Top 10 per product: from the rules, topped up from co-views, then topped up "
    "to 10 from the same category and brand by popularity, then the same category: that "
    "fallback is all a cold-start product (no rule, no co-view) gets, and it fills the rest "
    "of any product short of 10. Evaluated out of time against global popularity, on the "
    "next window's purchases other than the product each user last touched, with the rules "
    "made as ml/product_affinity's were. The metadata counts the products, those with no "
    "recommendation (alone in their category, with no rule or co-view) and those with 1 to 9.",
)
def recommendations(
    context: dg.AssetExecutionContext, config: AffinityConfig, warehouse: WarehouseResource
) -> Iterator[dg.Output[SqlQuery] | dg.AssetObservation]:
    metadata: dict[str, dg.MetadataValue] = {}
    with warehouse.connect(read_only=True) as con:
        first, last = con.execute(sql.statement("ml", "data_range")).fetchall()[0]
        if first is None:
            reason = "core.events is empty: nothing to recommend from"
            context.log.info(f"skipped: {reason}")
            yield skipped(RECOMMENDATIONS_KEY, reason)
            return
        plan = prop.plan_snapshots(first, last, config.horizon_days)
        if plan.validation is not None:
            rules_config, source = published_rule_settings(context.instance, config)
            evaluation, inputs = _offline_evaluation(
                context, con, config, rules_config, plan.validation
            )
            metadata[EVALUATION] = dg.MetadataValue.json(evaluation)
            metadata[RULE_SETTINGS_FROM] = dg.MetadataValue.text(source)
            metadata[EVALUATION_FINGERPRINT] = dg.MetadataValue.text(inputs)
        else:
            metadata[EVALUATION] = dg.MetadataValue.text("skipped: no labelled window")
    # products, products_without_recommendations, products_short_of_10: counted on the rows
    # written (recommendations_headline)
    query = SqlQuery(
        recommendations_sql(config, "ml.product_affinity"),
        headline=sql.statement("ml", "recommendations_headline"),
    )
    yield dg.Output(query, metadata=metadata)


def _offline_evaluation(
    context: dg.AssetExecutionContext,
    con: duckdb.DuckDBPyConnection,
    config: AffinityConfig,
    rules_config: AffinityConfig,
    validation: datetime,
) -> tuple[dict[str, object], str]:
    """Hit rate and recall at 10 of the recommendations made at the validation cutoff, against
    popularity, on the next window's purchases other than each user's anchor (with how many
    purchases, users who bought only their anchor and buyers with no anchor that leaves out),
    with the fingerprint of what they were computed from: the evaluation query (code,
    settings, cutoff) and every event it reads. The rules are made with `rules_config` (the
    published ones' settings). With no user to evaluate, the rates are None. The last build's
    figures are reused when that fingerprint is unchanged (the nightly refresh adds late rows
    after the window)."""
    cutoff = f"{validation:%Y-%m-%d %H:%M:%S}"
    recs = recommendations_sql(config, f"({rules_sql(rules_config, cutoff)})", cutoff)
    query = sql.statement(
        "ml",
        "recommendation_eval",
        cutoff=cutoff,
        recs=f"({recs})",
        horizon_days=str(config.horizon_days),
    )
    until = validation + timedelta(days=config.horizon_days)
    read = con.execute(
        sql.statement("ml", "evaluation_input_fingerprint", until=f"{until:%Y-%m-%d %H:%M:%S}")
    ).fetchall()
    inputs = fingerprint(query, read)
    previous = recorded(context.instance, context.asset_key)
    if previous.get(EVALUATION_FINGERPRINT) == inputs:
        reused = previous.get(EVALUATION)
        if isinstance(reused, dict):
            context.log.info("offline evaluation reused: its events and code are unchanged")
            return reused, inputs
    result = con.execute(query)
    names = [d[0] for d in result.description]
    row = result.fetchall()[0]
    counts = (
        "users",
        "anchor_purchases_excluded",
        "users_only_anchor_excluded",
        "users_without_anchor_excluded",
    )
    # A rate over no user is undefined (NULL in SQL), not 0: it stays None.
    evaluation: dict[str, object] = {
        k: int(v or 0) if k in counts else None if v is None else float(v)
        for k, v in zip(names, row, strict=True)
    }
    if evaluation["users"] == 0:
        evaluation["undefined"] = (
            "no user to evaluate: none of the next window's buyers both had an event before "
            "the cutoff and bought a product other than the last one they touched"
        )
    evaluation["cutoff"] = cutoff
    evaluation["rule_settings"] = {k: getattr(rules_config, k) for k in RULE_SETTINGS}
    return evaluation, inputs


ASSETS = [
    propensity_features,
    propensity_model,
    propensity_scores,
    product_affinity,
    recommendations,
]
