"""Experiment planning from the data: A/B power tables, per-segment test plans, and a
clearly labelled simulated reactivation test. The statistics are cip_pipeline.stats."""

import math
from collections.abc import Iterator
from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from cip_pipeline import sql, stats
from cip_pipeline.assets.analytics import RFM_SEGMENTS, rfm_rules
from cip_pipeline.assets.common import skipped
from cip_pipeline.io_managers import SqlQuery, SqlTable
from cip_pipeline.partitions import WAREHOUSE_POOL
from cip_pipeline.resources import WarehouseResource

STANDARD_BASELINES = (0.01, 0.02, 0.05, 0.10, 0.20)
LIFTS = (0.05, 0.10, 0.20, 0.50)
ALPHAS = (0.10, 0.05, 0.01)
POWERS = (0.8, 0.9)
ALTERNATIVES = ("two-sided", "one-sided")
MDE_SAMPLE_SIZES = (1_000, 5_000, 10_000, 50_000, 100_000, 500_000)
MAX_PLAN_DAYS = 60  # a plan that needs longer is marked infeasible
TARGET_SEGMENT = "Cant Lose Them"
WELCH = "Welch t-test"
CUPED = "CUPED (pre-period revenue)"


class ExperimentConfig(dg.Config):
    window_days: int = Field(
        default=14, ge=1, description="the 'next window' a segment's outcomes are measured over"
    )
    # The simulation adds conversions among treated non-buyers; it cannot take any away.
    simulated_conversion_lift: float = Field(default=0.20, ge=0.0)
    simulated_revenue_lift: float = Field(default=0.15, gt=-1.0)
    seed: int = 2019


OUTCOMES_KEY = dg.AssetKey(["experiments", "segment_outcomes"])


@dg.asset(
    key=OUTCOMES_KEY,
    deps=[RFM_SEGMENTS],
    group_name="experiments",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Per buyer: the RFM segment as of one window before the end of the data, and "
    "what they did in that last window (bought, revenue) with their revenue before it. The "
    "power tables, test plans and simulation all read it.",
)
def segment_outcomes(
    config: ExperimentConfig, warehouse: WarehouseResource
) -> Iterator[dg.Output | dg.AssetObservation]:
    with warehouse.connect(read_only=True) as con:
        first, last = con.execute(sql.statement("ml", "data_range")).fetchall()[0]
    if first is None:
        yield skipped(OUTCOMES_KEY, NOT_ENOUGH)
        return
    end = datetime(last.year, last.month, last.day) + timedelta(days=1)
    cutoff = end - timedelta(days=config.window_days)
    if cutoff <= first:
        yield skipped(OUTCOMES_KEY, NOT_ENOUGH)
        return
    before = f"(SELECT * FROM core.events WHERE event_time < {sql.timestamp(cutoff)})"
    segments = sql.statement("analytics", "rfm_segments", events=before, rules=rfm_rules())
    query = sql.statement(
        "experiments",
        "segment_outcomes",
        segments=segments,
        cutoff=sql.timestamp(cutoff),
        end=sql.timestamp(end),
    )
    yield dg.Output(SqlQuery(query), metadata={"window": f"{cutoff:%Y-%m-%d} to {end:%Y-%m-%d}"})


def _load_outcomes(warehouse: WarehouseResource, outcomes: SqlTable) -> pl.DataFrame:
    # In user order: the simulation's seeded assignment must meet the same users every build.
    with warehouse.connect(read_only=True) as con:
        return con.sql(f"SELECT * FROM {outcomes.select()} ORDER BY user_id").pl()


def _segment_figures(frame: pl.DataFrame, window_days: int) -> pl.DataFrame:
    """Per segment, what a test that enrols its members as they visit would meet: the members
    active in the window arrive at `daily_eligible_users` a day and convert (spend) as those
    did; `users`, the whole segment, is the most it can ever enrol. No member active: no rate."""
    active = pl.col("active")
    visitors = active.sum()
    return (
        frame.group_by("segment")
        .agg(
            pl.len().alias("users"),
            visitors.alias("active_users"),
            pl.when(visitors > 0)
            .then(pl.col("bought").filter(active).mean())
            .alias("baseline_conversion"),
            pl.col("revenue").filter(active).mean().alias("revenue_per_user"),
            pl.col("revenue").filter(active).std().alias("revenue_sd"),
            (visitors / window_days).alias("daily_eligible_users"),
        )
        .sort("segment")
    )


NOT_ENOUGH = "not enough data: needs buyers before a cutoff one window before the end"
NO_BUYERS = "no buyers before the cutoff one window before the end: no segment to plan for"
POWER_KEY = dg.AssetKey(["experiments", "ab_power_tables"])
PLANS_KEY = dg.AssetKey(["experiments", "segment_test_plans"])
SIM_KEY = dg.AssetKey(["experiments", "reactivation_simulation"])


@dg.asset(
    key=POWER_KEY,
    ins={"outcomes": dg.AssetIn(OUTCOMES_KEY)},
    group_name="experiments",
    kinds={"polars", "duckdb"},
    io_manager_key="polars_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Sample size per arm over baseline (standard grid and each RFM segment's real "
    "purchase rate among its members who visited in the next window) x relative lift x alpha "
    "x power x sidedness; the MDE for given sample sizes; revenue per visiting user from its "
    "observed variance; test duration from each segment's daily visitors, none when the "
    "segment has fewer members than the test needs.",
)
def ab_power_tables(
    context: dg.AssetExecutionContext,
    config: ExperimentConfig,
    warehouse: WarehouseResource,
    outcomes: SqlTable,
) -> Iterator[dg.Output | dg.AssetObservation]:
    frame = _load_outcomes(warehouse, outcomes)
    if frame.is_empty():
        yield skipped(POWER_KEY, NO_BUYERS)
        return
    segments = _segment_figures(frame, config.window_days)
    baselines = [("standard", p, None, None) for p in STANDARD_BASELINES] + [
        (
            f"segment: {r['segment']}",
            r["baseline_conversion"],
            r["daily_eligible_users"],
            r["users"],
        )
        for r in segments.iter_rows(named=True)
        if r["baseline_conversion"] is not None and 0 < r["baseline_conversion"] < 1
    ]
    rows = []
    for source, p, daily, people in baselines:
        for lift in LIFTS:
            if p * (1 + lift) >= 1:
                continue
            for alpha in ALPHAS:
                for power in POWERS:
                    for alt in ALTERNATIVES:
                        n = stats.sample_size_two_proportions(
                            p, lift, alpha=alpha, power=power, alternative=alt
                        )
                        rows.append(
                            {
                                "table": "conversion_sample_size",
                                "baseline_source": source,
                                "baseline": p,
                                "relative_lift": lift,
                                "alpha": alpha,
                                "power": power,
                                "alternative": alt,
                                "n_per_arm": n.n_control,
                                "sample_size": None,
                                "days_needed": _days(2 * n.n_control, daily, people),
                            }
                        )
        for n_arm in MDE_SAMPLE_SIZES:
            try:
                mde_lift = stats.mde_two_proportions(p, n_arm, alpha=0.05, power=0.8).relative_lift
            except ValueError:  # a baseline near 1: no lift up to 100% is detectable
                mde_lift = None
            rows.append(
                {
                    "table": "conversion_mde",
                    "baseline_source": source,
                    "baseline": p,
                    "relative_lift": mde_lift,
                    "alpha": 0.05,
                    "power": 0.8,
                    "alternative": "two-sided",
                    "n_per_arm": None,
                    "sample_size": n_arm,
                    "days_needed": _days(2 * n_arm, daily, people),
                }
            )
    for r in segments.iter_rows(named=True):
        mean, sd = r["revenue_per_user"], r["revenue_sd"]
        if not mean or not sd or math.isnan(sd):
            continue
        for lift in LIFTS:
            n = stats.sample_size_continuous(mean, sd, lift, alpha=0.05, power=0.8)
            rows.append(
                {
                    "table": "revenue_sample_size",
                    "baseline_source": f"segment: {r['segment']}",
                    "baseline": mean,
                    "relative_lift": lift,
                    "alpha": 0.05,
                    "power": 0.8,
                    "alternative": "two-sided",
                    "n_per_arm": n.n_control,
                    "sample_size": None,
                    "days_needed": _days(2 * n.n_control, r["daily_eligible_users"], r["users"]),
                }
            )
    table = pl.DataFrame(
        rows,
        schema_overrides={"n_per_arm": pl.Int64, "sample_size": pl.Int64, "days_needed": pl.Int64},
    )
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "segments": segments.height,
            "window": f"{frame['cutoff'][0]:%Y-%m-%d} to {frame['window_end'][0]:%Y-%m-%d}",
            "segment_baselines": dg.MetadataValue.json(segments.to_dicts()),
        },
    )


def _days(total_users: int, daily: float | None, people: int | None) -> int | None:
    """Days for `total_users` to arrive at `daily` a day. None without traffic, or when the
    segment, a fixed set of `people`, holds fewer than the test needs at any speed."""
    if not daily or (people is not None and total_users > people):
        return None
    return stats.experiment_duration_days(total_users, daily)


@dg.asset(
    key=PLANS_KEY,
    ins={"outcomes": dg.AssetIn(OUTCOMES_KEY)},
    group_name="experiments",
    kinds={"polars", "duckdb"},
    io_manager_key="polars_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Per RFM segment (the at-risk high-value 'Cant Lose Them' first): the purchase "
    "rate of its members who visited in the next window, the sample needed per arm for +20% "
    "and +50%, and "
    "the days its daily eligible users need to reach it.",
)
def segment_test_plans(
    config: ExperimentConfig, warehouse: WarehouseResource, outcomes: SqlTable
) -> Iterator[dg.Output | dg.AssetObservation]:
    rows = []
    frame = _load_outcomes(warehouse, outcomes)
    if frame.is_empty():
        yield skipped(PLANS_KEY, NO_BUYERS)
        return
    for r in _segment_figures(frame, config.window_days).iter_rows(named=True):
        p, daily = r["baseline_conversion"], r["daily_eligible_users"]
        plan = {
            "segment": r["segment"],
            "users": r["users"],
            "active_users": r["active_users"],
            "baseline_conversion": p,
            "revenue_per_user": r["revenue_per_user"],
            "daily_eligible_users": daily,
        }
        for lift in (0.2, 0.5):
            ok = p is not None and p > 0 and p * (1 + lift) < 1
            n = stats.sample_size_two_proportions(p, lift).n_control if ok else None
            days = _days(2 * n, daily, r["users"]) if n else None
            plan[f"n_per_arm_lift_{int(lift * 100)}"] = n
            plan[f"days_lift_{int(lift * 100)}"] = days
            plan[f"feasible_lift_{int(lift * 100)}"] = days is not None and days <= MAX_PLAN_DAYS
        rows.append(plan)
    table = pl.DataFrame(rows).sort(pl.col("segment") != TARGET_SEGMENT, "segment")
    yield dg.Output(
        table, metadata={"segments": table.height, "plans": dg.MetadataValue.json(table.to_dicts())}
    )


@dg.asset(
    key=SIM_KEY,
    ins={"outcomes": dg.AssetIn(OUTCOMES_KEY)},
    group_name="experiments",
    kinds={"polars", "duckdb"},
    io_manager_key="polars_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="SIMULATED: real at-risk users (Cant Lose Them and At Risk) randomly assigned "
    "50/50 with a stated effect injected into the treatment's real next-window "
    "outcomes; analysed with and without CUPED, with SRM and significance.",
)
def reactivation_simulation(
    config: ExperimentConfig, warehouse: WarehouseResource, outcomes: SqlTable
) -> Iterator[dg.Output | dg.AssetObservation]:
    # The members who visited in the window, as the plans enrol them.
    users = _load_outcomes(warehouse, outcomes).filter(
        pl.col("segment").is_in([TARGET_SEGMENT, "At Risk"]), pl.col("active")
    )
    if users.height < 20:
        yield skipped(
            SIM_KEY, "fewer than 20 at-risk buyers (Cant Lose Them, At Risk) visited in the window"
        )
        return
    rng = np.random.default_rng(config.seed)
    treated = rng.random(users.height) < 0.5
    bought = users["bought"].to_numpy().astype(bool)
    revenue = users["revenue"].to_numpy().astype(float)
    pre = users["pre_revenue"].to_numpy().astype(float)
    # Injected effect: extra conversions among treated non-buyers, each spending what a real
    # buyer of the window spent (drawn at random), and more revenue per treated user.
    base_rate = float(bought.mean())
    convert = rng.random(users.height) < (
        base_rate * config.simulated_conversion_lift / max(1 - base_rate, 1e-9)
    )
    converted = treated & ~bought & convert
    bought_sim = bought | converted
    revenue_sim = revenue.copy()
    if converted.any():
        revenue_sim[converted] = rng.choice(revenue[bought], size=int(converted.sum()))
    revenue_sim = np.where(treated, revenue_sim * (1 + config.simulated_revenue_lift), revenue_sim)
    c, t = ~treated, treated
    z = stats.two_proportion_ztest(
        int(bought_sim[c].sum()), int(c.sum()), int(bought_sim[t].sum()), int(t.sum())
    )
    # Revenue that varies in neither arm (nobody bought in the window, say) has no t
    # statistic, nor a covariate that does not vary a CUPED adjustment: named, not run.
    not_tested: dict[str, str] = {}
    welch = cuped = None
    if np.ptp(revenue_sim[c]) == 0 and np.ptp(revenue_sim[t]) == 0:
        reason = "revenue does not vary in either arm (no visitor bought, or all spent alike)"
        not_tested = {WELCH: reason, CUPED: reason}
    else:
        welch = stats.welch_ttest(revenue_sim[c], revenue_sim[t])
        if np.ptp(pre) == 0:
            not_tested[CUPED] = "the pre-period revenue, its covariate, does not vary"
        else:
            cuped = stats.cuped_effect(revenue_sim[c], pre[c], revenue_sim[t], pre[t])
    srm = stats.sample_ratio_mismatch([int(c.sum()), int(t.sum())])
    bayes = stats.beta_binomial_ab(
        int(bought_sim[c].sum()), int(c.sum()), int(bought_sim[t].sum()), int(t.sum())
    )
    rows = [
        _result(
            "conversion",
            "two-proportion z-test",
            z.difference,
            (z.ci_low, z.ci_high),
            z.p_value,
            z.p_value < 0.05,
        ),
        _result(
            "conversion",
            "beta-binomial P(B>A)",
            bayes.prob_treatment_better,
            significant=bayes.prob_treatment_better > 0.95,
        ),
        _result(
            "assignment",
            "sample-ratio mismatch chi-square",
            float(t.sum()) / users.height,
            p_value=srm.p_value,
            significant=srm.mismatch,
        ),
    ]
    # A revenue test not run is a row with its reason and no figures.
    for method, figures in (
        (WELCH, welch and (welch.difference, (welch.ci_low, welch.ci_high), welch.p_value, None)),
        (
            CUPED,
            cuped and (cuped.effect, cuped.ci, cuped.adjusted.p_value, cuped.variance_reduction),
        ),
    ):
        if figures is None:
            rows.append(_result("revenue_per_user", method, note=not_tested.get(method)))
        else:
            estimate, ci, p, reduction = figures
            rows.append(_result("revenue_per_user", method, estimate, ci, p, p < 0.05, reduction))
    table = pl.DataFrame(rows, schema_overrides={"note": pl.String}).with_columns(
        pl.lit(True).alias("simulated"),
        pl.lit(users.height).alias("users"),
        pl.lit(config.simulated_conversion_lift).alias("injected_conversion_lift"),
        pl.lit(config.simulated_revenue_lift).alias("injected_revenue_lift"),
    )
    yield dg.Output(
        table,
        metadata={
            "SIMULATED": "effects are injected, not observed",
            "users": users.height,
            "cuped_variance_reduction": cuped.variance_reduction if cuped else None,
            "srm_p_value": srm.p_value,
            "not_tested": dg.MetadataValue.json(not_tested),
        },
    )


def _result(
    metric: str,
    method: str,
    estimate: float | None = None,
    ci: tuple[float, float] | tuple[None, None] = (None, None),
    p_value: float | None = None,
    significant: bool | None = None,
    variance_reduction: float | None = None,
    note: str | None = None,
) -> dict[str, object]:
    """One row of the simulation's table; `note` says why a test was not run."""
    return {
        "metric": metric,
        "method": method,
        "estimate": estimate,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "p_value": p_value,
        "significant": significant,
        "variance_reduction": variance_reduction,
        "note": note,
    }


ASSETS = [segment_outcomes, ab_power_tables, segment_test_plans, reactivation_simulation]
