"""Experiment planning from the data: A/B power tables, per-segment test plans, and a
clearly labelled simulated reactivation test. The statistics are cip_pipeline.stats."""

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from cip_pipeline import sql, stats
from cip_pipeline.assets.analytics import RFM_SEGMENTS, rfm_segments_query
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
# A stated spend lift past +10,000% is no plausible test; far past it revenue overflows to inf.
MAX_SPEND_LIFT = 100.0
# A segment's figures each plan shows (see `_segments`).
PLAN_FIGURES = (
    "segment",
    "users",
    "active_users",
    "baseline_conversion",
    "revenue_per_user",
    "window_days",
    "members_reached_by_day",
    "new_members_per_day_latest_week",
)
TARGET_SEGMENT = "Cant Lose Them"
WELCH = "Welch t-test"
CUPED = "CUPED (pre-period revenue)"


class ExperimentConfig(dg.Config):
    window_days: int = Field(
        default=14,
        ge=1,
        description="the 'next window' segment_outcomes measures each segment over; the "
        "planning tables read the window stored with the outcomes",
    )
    # The simulation adds conversions among treated non-buyers; it cannot take any away.
    simulated_conversion_lift: float = Field(
        default=0.20,
        ge=0.0,
        allow_inf_nan=False,
        description="relative lift on the treated users' conversion rate, as extra "
        "conversions among non-buyers; no more than takes the rate to 100% (what is injected "
        "is recorded)",
    )
    simulated_spend_lift: float = Field(
        default=0.15,
        gt=-1.0,
        le=MAX_SPEND_LIFT,
        allow_inf_nan=False,
        description="multiplies every treated user's spend, the new buyers' included: on top "
        "of the conversion lift, revenue per user rises by (1 + conversion lift) x (1 + this) - 1 "
        "(none when no at-risk visitor spent anything: what is injected is recorded)",
    )
    seed: int = Field(default=2019, ge=0, description="the simulation's random assignment")


OUTCOMES_KEY = dg.AssetKey(["experiments", "segment_outcomes"])


def window_label(cutoff: datetime, end: datetime) -> str:
    """The window [cutoff, end) by its first and last day (`end` is exclusive)."""
    last = end - timedelta(days=1)
    return f"{cutoff:%Y-%m-%d} to {last:%Y-%m-%d} ({(end - cutoff).days} days, last day included)"


@dg.asset(
    key=OUTCOMES_KEY,
    deps=[RFM_SEGMENTS],
    group_name="experiments",
    kinds={"duckdb"},
    io_manager_key="sql_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Per buyer: the RFM segment as of one window before the end of the data, and "
    "what they did in that last window (bought, revenue, day of their first visit) with their "
    "revenue before it. The power tables, test plans and simulation all read it.",
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
    segments = rfm_segments_query(before)
    query = sql.statement(
        "experiments",
        "segment_outcomes",
        segments=segments,
        cutoff=sql.timestamp(cutoff),
        end=sql.timestamp(end),
    )
    yield dg.Output(SqlQuery(query), metadata={"window": window_label(cutoff, end)})


def _load_outcomes(warehouse: WarehouseResource, outcomes: SqlTable) -> pl.DataFrame:
    # In user order: the simulation's seeded assignment must meet the same users every build.
    with warehouse.connect(read_only=True) as con:
        return con.sql(f"SELECT * FROM {outcomes.select()} ORDER BY user_id").pl()


@dataclass(frozen=True)
class Segments:
    """Each segment's figures (`segment_figures` in experiments.sql, plus its arrival curve)
    and the window [cutoff, window_end) they were measured over, as the outcomes store it."""

    cutoff: datetime
    window_end: datetime
    figures: pl.DataFrame
    reached: dict[str, list[int]]  # distinct members who had visited by the end of each day
    people: dict[str, int]  # the segment's members: the most a test can ever enrol

    def enrolment(self, segment: str, total: int) -> stats.Enrolment:
        """Days for `total` members (both arms) of the segment to have visited."""
        return stats.days_to_enrol(total, self.reached[segment], people=self.people[segment])


def _segments(warehouse: WarehouseResource, outcomes: SqlTable) -> Segments | None:
    """The segments' figures, aggregated inside DuckDB (per segment and day, small); None
    when the outcomes hold no buyer."""
    table = outcomes.select()
    with warehouse.connect(read_only=True) as con:
        cutoff, end, buyers = con.execute(
            sql.statement("experiments", "outcome_window", outcomes=table)
        ).fetchall()[0]
        if not buyers:
            return None
        figures = con.sql(sql.statement("experiments", "segment_figures", outcomes=table)).pl()
        arrivals = con.sql(sql.statement("experiments", "segment_arrivals", outcomes=table)).pl()
    curves = arrivals.group_by("segment").agg(
        pl.col("members_reached").sort_by("day").alias("members_reached_by_day")
    )
    reached = dict(zip(curves["segment"], curves["members_reached_by_day"].to_list(), strict=True))
    figures = (
        figures.join(curves, on="segment", how="left")
        .sort("segment")
        .with_columns(
            pl.lit((end - cutoff).days).alias("window_days"),
            pl.col("segment")
            .replace_strict(
                {s: float(stats.recent_arrival_rate(r)) for s, r in reached.items()},
                return_dtype=pl.Float64,
            )
            .alias("new_members_per_day_latest_week"),
        )
    )
    people = dict(zip(figures["segment"], figures["users"], strict=True))
    return Segments(cutoff, end, figures, reached, people)


NOT_ENOUGH = "not enough data: needs buyers before a cutoff one window before the end"
NO_BUYERS = "no buyers before the cutoff one window before the end: no segment to plan for"
POWER_KEY = dg.AssetKey(["experiments", "ab_power_tables"])
PLANS_KEY = dg.AssetKey(["experiments", "segment_test_plans"])
SIM_KEY = dg.AssetKey(["experiments", "reactivation_simulation"])


NO_VISITOR = "no member visited in the window: no purchase rate or revenue per visitor"


def _rate_reason(p: float | None) -> str | None:
    """Why a purchase rate cannot be planned on at all; None when it can."""
    if p is None:
        return NO_VISITOR
    if p <= 0:
        return "no visitor bought in the window: a relative lift on a 0% rate is still 0%"
    if p >= 1:
        return "every visitor bought in the window: a 100% rate leaves no room for a lift"
    return None


def _past_100(lift: float, p: float) -> str:
    # six significant digits: a rate of 99.9999% is not printed as 100%
    return f"+{lift:.0%} on a {p * 100:.6g}% rate would pass 100%"


def _revenue_reason(mean: float | None, sd: float | None) -> str | None:
    """Why revenue per visitor cannot be planned on (a t-test needs a mean and variance)."""
    if mean is None:
        return NO_VISITOR
    if sd is None or math.isnan(sd):
        return "a single visitor: revenue per visitor has no sample SD"
    if sd == 0:
        if mean == 0:
            return "no visitor spent anything: revenue per visitor is 0, with no variance"
        return "every visitor spent the same: revenue per visitor has no variance"
    if mean == 0:
        return "revenue per visitor is 0: a relative lift on 0 is still 0"
    return None


def _left_out(
    source: str,
    metric: str,
    reason: str,
    relative_lift: float | None = None,
    sample_size: int | None = None,
    test: tuple[float, float, str] | None = None,
) -> dict[str, object]:
    """A `not_planned` entry: the whole metric, one lift's grid rows (`relative_lift`; only
    the (alpha, power, alternative) of `test` when the others have sizes) or one empty MDE
    row (`sample_size`) of a baseline source, and why."""
    alpha, power, alternative = test or (None, None, None)
    return {
        "baseline_source": source,
        "metric": metric,
        "relative_lift": relative_lift,
        "alpha": alpha,
        "power": power,
        "alternative": alternative,
        "sample_size": sample_size,
        "reason": reason,
    }


def _rows(
    metric: str,
    source: str,
    baseline: float,
    size: Callable[[float, float, float, str], int | str],
    mde: Callable[[int], float | str],
    enrol: Callable[[int], stats.Enrolment] | None,
    left_out: list[dict[str, object]],
) -> list[dict[str, object]]:
    """One baseline's rows: the sample per arm over lift x alpha x power x sidedness
    (`size(lift, alpha, power, alternative)`, or why there is none), then the MDE at alpha
    0.05, power 0.8, two-sided for each of MDE_SAMPLE_SIZES per arm (or why it is empty); the
    days both arms take to enrol from `enrol` (none for a standard baseline: no traffic).
    Each lift without sizes and each empty MDE goes to `left_out` with its reason."""

    def days(per_arm: int) -> dict[str, object]:
        e = enrol(2 * per_arm) if enrol else stats.Enrolment(None, False)
        return {"days_needed": e.days, "days_extrapolated": e.extrapolated if e.days else None}

    rows: list[dict[str, object]] = []
    why_not: dict[float, dict[tuple[float, float, str], str]] = {}
    for lift, alpha, power, alt in itertools.product(LIFTS, ALPHAS, POWERS, ALTERNATIVES):
        n = size(lift, alpha, power, alt)
        if isinstance(n, str):
            why_not.setdefault(lift, {})[(alpha, power, alt)] = n
            continue
        rows.append(
            {
                "table": f"{metric}_sample_size",
                "baseline_source": source,
                "baseline": baseline,
                "relative_lift": lift,
                "alpha": alpha,
                "power": power,
                "alternative": alt,
                "n_per_arm": n,
                "sample_size": None,
                **days(n),
            }
        )
    every_test = len(ALPHAS) * len(POWERS) * len(ALTERNATIVES)
    for lift, failed in why_not.items():
        reasons = set(failed.values())
        if len(failed) == every_test and len(reasons) == 1:  # the whole lift, one reason
            left_out.append(_left_out(source, metric, reasons.pop(), relative_lift=lift))
            continue
        left_out += [
            _left_out(source, metric, why, relative_lift=lift, test=test)
            for test, why in failed.items()
        ]
    for n_arm in MDE_SAMPLE_SIZES:
        found = mde(n_arm)
        if isinstance(found, str):
            left_out.append(_left_out(source, metric, found, sample_size=n_arm))
        rows.append(
            {
                "table": f"{metric}_mde",
                "baseline_source": source,
                "baseline": baseline,
                "relative_lift": None if isinstance(found, str) else found,
                "alpha": 0.05,
                "power": 0.8,
                "alternative": "two-sided",
                "n_per_arm": None,
                "sample_size": n_arm,
                **days(n_arm),
            }
        )
    return rows


def _conversion_rows(
    source: str,
    p: float,
    enrol: Callable[[int], stats.Enrolment] | None,
    left_out: list[dict[str, object]],
) -> list[dict[str, object]]:
    def size(lift: float, alpha: float, power: float, alt: str) -> int | str:
        if p * (1 + lift) >= 1:
            return _past_100(lift, p)
        try:
            return stats.sample_size_two_proportions(
                p, lift, alpha=alpha, power=power, alternative=alt
            ).n_control
        except ValueError as e:  # e.g. a sample past any real one: named, not a failed build
            return str(e)

    def mde(n_arm: int) -> float | str:
        try:
            return stats.mde_two_proportions(p, n_arm, alpha=0.05, power=0.8).relative_lift
        except ValueError:  # a baseline near 1
            return f"no lift up to 100% reaches power 0.8 with {n_arm:,} per arm on {p * 100:.6g}%"

    return _rows("conversion", source, p, size, mde, enrol, left_out)


def _revenue_rows(
    source: str,
    mean: float,
    sd: float,
    enrol: Callable[[int], stats.Enrolment],
    left_out: list[dict[str, object]],
) -> list[dict[str, object]]:
    def size(lift: float, alpha: float, power: float, alt: str) -> int | str:
        try:
            return stats.sample_size_continuous(
                mean, sd, lift, alpha=alpha, power=power, alternative=alt
            ).n_control
        except ValueError as e:  # e.g. a sample past any real one: named, not a failed build
            return str(e)

    def mde(n_arm: int) -> float | str:
        try:
            return stats.mde_continuous(mean, sd, n_arm, alpha=0.05, power=0.8).relative_lift
        except ValueError as e:
            return str(e)

    return _rows("revenue", source, mean, size, mde, enrol, left_out)


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
    "x power x sidedness, and the MDE for given sample sizes; the same for revenue per "
    "visiting user from its observed variance. A segment's days needed are read off how many "
    "distinct members had visited by each day of the window, past it extrapolated at the "
    "latest week's new arrivals (days_extrapolated); none when the segment has fewer members "
    "than the test needs, or none new lately. What is not planned (a segment without "
    "visitors, at 0% or 100%, revenue without variance, a lift past 100%, an empty MDE) is "
    "listed with its reason in the metadata's not_planned.",
)
def ab_power_tables(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, outcomes: SqlTable
) -> Iterator[dg.Output | dg.AssetObservation]:
    segments = _segments(warehouse, outcomes)
    if segments is None:
        yield skipped(POWER_KEY, NO_BUYERS)
        return
    rows: list[dict[str, object]] = []
    left_out: list[dict[str, object]] = []
    for p in STANDARD_BASELINES:
        rows += _conversion_rows("standard", p, None, left_out)
    for r in segments.figures.iter_rows(named=True):
        source = f"segment: {r['segment']}"
        enrol = partial(segments.enrolment, r["segment"])
        p = r["baseline_conversion"]
        if why := _rate_reason(p):
            left_out.append(_left_out(source, "conversion", why))
        else:
            rows += _conversion_rows(source, p, enrol, left_out)
        mean, sd = r["revenue_per_user"], r["revenue_sd"]
        if why := _revenue_reason(mean, sd):
            left_out.append(_left_out(source, "revenue", why))
        else:
            rows += _revenue_rows(source, mean, sd, enrol, left_out)
    table = pl.DataFrame(
        rows,
        schema_overrides={
            "n_per_arm": pl.Int64,
            "sample_size": pl.Int64,
            "days_needed": pl.Int64,
            "days_extrapolated": pl.Boolean,
        },
    )
    yield dg.Output(
        table,
        metadata={
            "rows": table.height,
            "segments": segments.figures.height,
            "window": window_label(segments.cutoff, segments.window_end),
            "segment_baselines": dg.MetadataValue.json(segments.figures.to_dicts()),
            "not_planned": dg.MetadataValue.json(left_out),
        },
    )


@dg.asset(
    key=PLANS_KEY,
    ins={"outcomes": dg.AssetIn(OUTCOMES_KEY)},
    group_name="experiments",
    kinds={"polars", "duckdb"},
    io_manager_key="polars_io_manager",
    pool=WAREHOUSE_POOL,
    output_required=False,
    description="Per RFM segment (the at-risk high-value 'Cant Lose Them' first): the purchase "
    "rate of its members who visited in the next window, the distinct members reached by each "
    "day of it, the sample needed per arm for +20% and +50%, and the days until that many "
    "members (both arms) have visited: read off those counts, past the window extrapolated at "
    "the latest week's new arrivals and marked so; reason_lift_20/50 say why a plan is not "
    "feasible.",
)
def segment_test_plans(
    warehouse: WarehouseResource, outcomes: SqlTable
) -> Iterator[dg.Output | dg.AssetObservation]:
    segments = _segments(warehouse, outcomes)
    if segments is None:
        yield skipped(PLANS_KEY, NO_BUYERS)
        return
    rows = []
    for r in segments.figures.iter_rows(named=True):
        p = r["baseline_conversion"]
        plan = {k: r[k] for k in PLAN_FIGURES}
        for lift in (0.2, 0.5):
            why = _rate_reason(p)
            if why is None and p * (1 + lift) >= 1:
                why = _past_100(lift, p)
            n = None if why else stats.sample_size_two_proportions(p, lift).n_control
            e = segments.enrolment(r["segment"], 2 * n) if n else stats.Enrolment(None, False)
            if why is None:
                why = e.why_not
            if why is None and e.days is not None and e.days > MAX_PLAN_DAYS:
                why = f"takes {e.days} days, past the {MAX_PLAN_DAYS} days a plan may run"
            tag = int(lift * 100)
            plan[f"n_per_arm_lift_{tag}"] = n
            plan[f"days_lift_{tag}"] = e.days
            plan[f"extrapolated_lift_{tag}"] = e.extrapolated if e.days else None
            plan[f"feasible_lift_{tag}"] = e.days is not None and e.days <= MAX_PLAN_DAYS
            plan[f"reason_lift_{tag}"] = why  # why not feasible; None when it is
        rows.append(plan)
    table = pl.DataFrame(
        rows,
        schema_overrides={
            f"{column}_lift_{tag}": dtype
            for tag in (20, 50)
            for column, dtype in (
                ("n_per_arm", pl.Int64),
                ("days", pl.Int64),
                ("extrapolated", pl.Boolean),
                ("reason", pl.String),
            )
        },
    ).sort(pl.col("segment") != TARGET_SEGMENT, "segment")
    yield dg.Output(
        table,
        metadata={
            "segments": table.height,
            "window": window_label(segments.cutoff, segments.window_end),
            "plans": dg.MetadataValue.json(table.to_dicts()),
        },
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
    "50/50 with a stated effect injected into the treatment's real next-window outcomes: "
    "extra conversions (the lift injected, capped below 100%, is recorded) spending like real "
    "buyers, then a spend lift on every treated user; the revenue-per-user lift both make "
    "is recorded too. Analysed with and without CUPED, with SRM and significance.",
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
    # buyer of the window spent (drawn at random), then every treated user's spend scaled.
    base_rate = float(bought.mean())
    lift, injection_note = injected_conversion_lift(base_rate, config.simulated_conversion_lift)
    # each non-buyer converts with this probability: b + (1 - b) x it = b x (1 + lift)
    convert = rng.random(users.height) < (
        base_rate * lift / (1 - base_rate) if base_rate < 1 else 0.0
    )
    converted = treated & ~bought & convert
    bought_sim = bought | converted
    revenue_sim = revenue.copy()
    if converted.any():
        revenue_sim[converted] = rng.choice(revenue[bought], size=int(converted.sum()))
    # Scaling spend when no at-risk visitor spent anything injects nothing: recorded as 0.
    spend_lift, spend_note = config.simulated_spend_lift, None
    if spend_lift != 0 and not revenue.any():
        spend_lift, spend_note = 0.0, NO_SPEND
    revenue_sim = np.where(treated, revenue_sim * (1 + spend_lift), revenue_sim)
    # New buyers spend like the real ones (revenue per user x (1 + lift) in expectation), and
    # the spend lift applies on top of that; on no revenue at all, neither adds any.
    revenue_lift = (1 + lift) * (1 + spend_lift) - 1 if revenue.any() else 0.0
    notes = [n for n in (injection_note, spend_note) if n]
    injection_note = "; ".join(notes) if notes else None
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
        pl.lit(config.simulated_conversion_lift).alias("requested_conversion_lift"),
        pl.lit(lift).alias("injected_conversion_lift"),
        pl.lit(config.simulated_spend_lift).alias("requested_spend_lift"),
        pl.lit(spend_lift).alias("injected_spend_lift"),
        pl.lit(revenue_lift).alias("injected_revenue_per_user_lift"),
        pl.lit(injection_note, dtype=pl.String).alias("injection_note"),
    )
    yield dg.Output(
        table,
        metadata={
            "SIMULATED": "effects are injected, not observed",
            "users": users.height,
            "injected_conversion_lift": lift,
            "requested_spend_lift": config.simulated_spend_lift,
            "injected_spend_lift": spend_lift,
            "injected_revenue_per_user_lift": revenue_lift,
            "injection_note": injection_note,
            "cuped_variance_reduction": cuped.variance_reduction if cuped else None,
            "srm_p_value": srm.p_value,
            "not_tested": dg.MetadataValue.json(not_tested),
        },
    )


NO_SPEND = "no at-risk visitor spent anything in the window: a spend lift on 0 adds nothing"


def injected_conversion_lift(base_rate: float, requested: float) -> tuple[float, str | None]:
    """The relative conversion lift the simulation can inject on `base_rate` by converting
    non-buyers, and why it is not `requested` when it is not: no more than takes the rate to
    100%, and nothing on a rate of 0."""
    if requested == 0:
        return 0.0, None
    if base_rate <= 0:
        return 0.0, "no at-risk visitor bought in the window: a relative lift on 0% adds nothing"
    most = (1 - base_rate) / base_rate  # every treated non-buyer converts
    if requested > most:
        return most, (
            f"+{requested:.1%} on a {base_rate:.2%} conversion rate would pass 100%: "
            f"+{most:.1%} injected (every treated non-buyer converts)"
        )
    return requested, None


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
