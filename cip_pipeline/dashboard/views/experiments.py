"""Experiment lab: plan an A/B test on a baseline from the warehouse with the project's own
statistics (cip_pipeline.stats), and the segment test plans and the simulated reactivation test
the pipeline computed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import plotly.graph_objects as go
import polars as pl
import streamlit as st
from scipy.stats import norm

from cip_pipeline import stats
from cip_pipeline.dashboard import data, ui

ALPHAS = [0.01, 0.05, 0.10]
POWERS = [0.7, 0.8, 0.9, 0.95]
ALTERNATIVES = ["two-sided", "one-sided"]
DEFAULT_LIFT_PERCENT = 10
DEFAULT_PLANNED_DAYS = 14


@dataclass(frozen=True)
class Baseline:
    label: str
    rate: float
    daily: float  # new eligible units per day (a segment: after its observed window)
    unit: str
    people: int | None = None  # a segment: the fixed set of people a test can ever enrol
    # A segment: distinct members who had visited by the end of each day of its window; a
    # test enrols them as they first visit, so its duration is read off this.
    reached: tuple[int, ...] | None = None


def baselines() -> tuple[list[Baseline], str | None]:
    """The overall session conversion, then each RFM segment's next-window purchase rate; and
    why the overall one is not among them, if it is not."""
    found: list[Baseline] = []
    missing: str | None = None
    overall = data.row("overall_baseline")
    if overall.get("baseline") is None:
        missing = "core.fact_daily_kpis has no sessions yet: `cip run` loads them."
    elif overall["baseline"] == 0:
        # A 0% rate gives no sample size: no lift of nothing is ever detectable.
        missing = (
            f"None of the {ui.integer(overall['sessions'])} sessions has converted yet: there "
            "is no session conversion to plan a test from (a 0% baseline cannot be planned on)."
        )
    else:
        found.append(
            Baseline(
                "All sessions: session conversion",
                overall["baseline"],
                overall["daily_units"],
                "sessions",
            )
        )
    try:
        plans = data.query("segment_test_plans")
    except data.NotBuilt:
        plans = pl.DataFrame()
    for r in plans.iter_rows(named=True):
        p, reached = r["baseline_conversion"], r["members_reached_by_day"]
        if p and 0 < p < 1 and reached:
            found.append(
                Baseline(
                    f"RFM segment: {r['segment']}",
                    p,
                    r["new_members_per_day_latest_week"],
                    "members",
                    r["users"],
                    tuple(reached),
                )
            )
    return found, missing


@dataclass(frozen=True)
class Inputs:
    baseline: float
    lift: float
    alpha: float
    power: float
    traffic: float
    alternative: str
    planned_days: int


def inputs(options: list[Baseline]) -> tuple[Baseline, Inputs]:
    source = st.selectbox(
        "Baseline from the warehouse",
        range(len(options)),
        format_func=lambda i: f"{options[i].label} ({ui.percent(options[i].rate)})",
        key="lab_source",
    )
    base = options[source]
    left, right = st.columns(2)
    with left:
        rate = st.slider(
            "Baseline conversion (%)",
            min_value=0.01,
            max_value=max(99.0, math.ceil(base.rate * 100)),
            value=base.rate * 100,
            step=0.01,
            format="%.2f",
            key=f"lab_baseline_{source}",  # a new source starts from its own rate
        )
        lift = st.slider(
            "Relative lift to detect (%)",
            min_value=1,
            max_value=100,
            value=DEFAULT_LIFT_PERCENT,
            key="lab_lift",
        )
        alpha = st.select_slider("Significance level α", ALPHAS, value=0.05, key="lab_alpha")
        power = st.select_slider("Power (1 − β)", POWERS, value=0.8, key="lab_power")
    with right:
        # Fractional: a segment may see 0.4 new buyers a day, and rounding it changes the
        # duration severalfold. The step is a tenth of the figure's leading digit's place.
        label = f"Traffic: new {base.unit} per day"
        if base.reached is not None:
            label = f"New {base.unit} per day after its {len(base.reached)}-day window"
        traffic = st.number_input(
            label,
            min_value=min(0.01, float(base.daily)),
            value=float(base.daily),
            step=max(0.01, 10.0 ** (math.floor(math.log10(base.daily)) - 1))
            if base.daily
            else 0.01,
            format="%.2f",
            key=f"lab_traffic_{source}",
            help=None
            if base.reached is None
            else "Within the window a test enrols members as they first visited then; past it, "
            "at this rate (by default the latest week's new arrivals)",
        )
        alternative = st.radio("Test", ALTERNATIVES, horizontal=True, key="lab_alternative")
        planned = st.slider(
            "Planned test length for the MDE (days)",
            min_value=1,
            max_value=90,
            value=DEFAULT_PLANNED_DAYS,
            key="lab_days",
        )
    return base, Inputs(rate / 100, lift / 100, alpha, power, traffic, alternative, planned)


def _per_day(traffic: float) -> str:
    return f"{traffic:,.2f}".rstrip("0").rstrip(".")


def duration(base: Baseline, x: Inputs, total: int) -> stats.Enrolment:
    """Days to enrol `total` (both arms): sessions at a steady daily rate; a segment's members
    as they first visit (its observed window, then `x.traffic` new members a day), never more
    than it holds."""
    if base.reached is None:
        return stats.Enrolment(stats.experiment_duration_days(total, x.traffic), False)
    return stats.days_to_enrol(total, base.reached, people=base.people, rate_after=x.traffic)


def enrolled_by(base: Baseline, x: Inputs) -> float:
    """Units enrolled (both arms) by the end of the planned days."""
    if base.reached is None:
        return x.traffic * x.planned_days
    return stats.members_enrolled_by(
        x.planned_days, base.reached, people=base.people, rate_after=x.traffic
    )


def plan(base: Baseline, x: Inputs) -> None:
    if x.baseline * (1 + x.lift) >= 1:
        st.warning("Baseline x (1 + lift) must stay below 100%: lower one of them.")
        return
    size = stats.sample_size_two_proportions(
        x.baseline, x.lift, alpha=x.alpha, power=x.power, alternative=x.alternative
    )
    enrol = duration(base, x, size.total)
    enrolled = enrolled_by(base, x)
    per_arm_planned = enrolled / 2
    cols = st.columns(4)
    cols[0].metric(
        "Sample size per arm",
        ui.integer(size.n_control),
        help=f"achieved power {ui.percent(size.achieved_power, 1)} (Cohen's h, normal approx.)",
        border=True,
    )
    cols[1].metric("Total sample", ui.integer(size.total), border=True)
    if enrol.days is None:
        too_small = base.people is not None and size.total > base.people
        cols[2].metric(
            "Duration",
            "segment too small" if too_small else "not reached",
            help=enrol.why_not,
            border=True,
        )
    elif base.reached is None:
        cols[2].metric(
            "Duration",
            f"{ui.integer(enrol.days)} days",
            help=f"both arms at {_per_day(x.traffic)} new {base.unit} per day, all enrolled",
            border=True,
        )
    else:
        observed = len(base.reached)
        cols[2].metric(
            "Duration",
            f"{ui.integer(enrol.days)} days" + (" (extrapolated)" if enrol.extrapolated else ""),
            help=f"until {ui.integer(size.total)} distinct members have visited: "
            + (
                f"{ui.integer(base.reached[-1])} did in the {observed}-day window, the rest "
                f"at {_per_day(x.traffic)} new {base.unit} per day after it"
                if enrol.extrapolated
                else f"as many did by day {enrol.days} of the {observed}-day window"
            ),
            border=True,
        )
    capped = " (all the segment)" if enrolled == base.people else ""
    try:
        mde = stats.mde_two_proportions(
            x.baseline, per_arm_planned, alpha=x.alpha, power=x.power, alternative=x.alternative
        )
        cols[3].metric(
            f"MDE in {x.planned_days} days",
            ui.percent(mde.relative_lift, 1),
            help=f"relative lift; absolute {ui.percent(mde.absolute_effect, 3)} with "
            f"{ui.integer(per_arm_planned)} per arm{capped}",
            border=True,
        )
    except ValueError:
        cols[3].metric(f"MDE in {x.planned_days} days", "not reachable", border=True)
    distributions(x, size)


def distributions(x: Inputs, size: stats.SampleSize) -> None:
    """The sampling distribution of the observed difference (treatment - control) at that
    size with no effect and with the lift; shaded, the share of tests under the lift that a
    pooled two-proportion z-test calls significant: its power."""
    n = size.n_control
    p_c, p_t = x.baseline, x.baseline * (1 + x.lift)
    delta = p_t - p_c
    pooled = (p_c + p_t) / 2  # equal arms
    se_0 = math.sqrt(2 * pooled * (1 - pooled) / n)  # the test's SE: pooled, under H0
    se_1 = math.sqrt((p_c * (1 - p_c) + p_t * (1 - p_t)) / n)
    sides = 2 if x.alternative == "two-sided" else 1
    critical = float(norm.ppf(1 - x.alpha / sides)) * se_0
    power = stats.power_two_proportions(
        x.baseline, x.lift, n, alpha=x.alpha, alternative=x.alternative, method="pooled"
    )
    low = min(-critical, -4 * se_0) if sides == 2 else -4 * se_0
    grid = np.union1d(np.linspace(low, delta + 4 * se_1, 600), [critical])
    if sides == 2:
        grid = np.union1d(grid, [-critical])
    alt = norm.pdf(grid, delta, se_1)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=grid, y=norm.pdf(grid, 0, se_0), name="no effect (H0)"))
    fig.add_trace(
        go.Scatter(x=grid, y=alt, name=f"treatment +{ui.percent(x.lift, 0)} ({ui.percent(p_t)})")
    )
    beyond = grid >= critical
    fig.add_trace(
        go.Scatter(
            x=grid[beyond],
            y=alt[beyond],
            fill="tozeroy",
            mode="none",
            name=f"significant: power {ui.percent(power, 1)}",
        )
    )
    for edge in [critical, -critical][:sides]:
        fig.add_vline(
            x=edge,
            line_dash="dash",
            annotation_text="significant beyond",
            annotation_position="top right" if edge > 0 else "top left",
        )
    fig.update_layout(
        title=f"Observed treatment - control with {ui.integer(n)} users per arm",
        xaxis_tickformat=".2%",
        yaxis_title="density",
        legend={"orientation": "h", "y": -0.2},
    )
    ui.chart(fig, key="lab_distributions")
    st.caption(
        "The sample size is solved on Cohen's h; the chart shows the pooled two-proportion "
        "z-test at that size: the dashed line is its critical value (pooled SE under no "
        "effect), and the shaded share of the lift's curve is the test's power."
    )


def segment_plans() -> None:
    st.subheader("Segment test plans")
    window = data.row("outcome_window")
    plans = data.query("segment_test_plans")
    if window.get("cutoff") is not None:
        last = window["window_end"] - timedelta(days=1)  # the stored end is exclusive
        st.caption(
            f"Each RFM segment (as of {ui.when(window['cutoff'])}) and what its members who "
            f"visited from {window['cutoff']:%Y-%m-%d} through {last:%Y-%m-%d} did: the sample "
            "per arm to detect +20% and +50% on their purchase rate (alpha 0.05, power 0.8), "
            "and the days until that many distinct members have visited, read off the "
            "window's first visits; past the window at the latest week's new arrivals, and "
            "marked extrapolated. No days when the segment holds fewer people than both arms "
            "need; a plan that is not feasible says why."
        )
    st.dataframe(
        plans,
        hide_index=True,
        column_config={
            "users": st.column_config.NumberColumn(format="localized"),
            "active_users": st.column_config.NumberColumn("visited", format="localized"),
            "baseline_conversion": st.column_config.NumberColumn("baseline", format="percent"),
            "revenue_per_user": st.column_config.NumberColumn(format="%.2f"),
            "window_days": st.column_config.NumberColumn("window days"),
            "members_reached_by_day": st.column_config.LineChartColumn("members reached by day"),
            "new_members_per_day_latest_week": st.column_config.NumberColumn(
                "new per day, latest week", format="%.1f"
            ),
            "n_per_arm_lift_20": st.column_config.NumberColumn("n/arm +20%", format="localized"),
            "days_lift_20": st.column_config.NumberColumn("days +20%", format="localized"),
            "extrapolated_lift_20": st.column_config.CheckboxColumn("extrapolated +20%"),
            "feasible_lift_20": st.column_config.CheckboxColumn("feasible +20%"),
            "reason_lift_20": st.column_config.TextColumn("why not +20%"),
            "n_per_arm_lift_50": st.column_config.NumberColumn("n/arm +50%", format="localized"),
            "days_lift_50": st.column_config.NumberColumn("days +50%", format="localized"),
            "extrapolated_lift_50": st.column_config.CheckboxColumn("extrapolated +50%"),
            "feasible_lift_50": st.column_config.CheckboxColumn("feasible +50%"),
            "reason_lift_50": st.column_config.TextColumn("why not +50%"),
        },
    )


def simulation() -> None:
    st.subheader("Reactivation test (simulated)")
    sim = data.query("reactivation_simulation")
    if sim.height == 0:
        st.info("The simulation has not run.")
        return
    st.warning(simulation_label(sim.row(0, named=True)), icon=":material/science:")
    left, right = st.columns([2, 3])
    with left:
        for metric, label, fmt in (
            ("conversion", "conversion rate", ".1%"),
            ("revenue_per_user", "revenue per user", ",.2f"),
        ):
            rows = sim.filter((pl.col("metric") == metric) & pl.col("ci_low").is_not_null())
            if rows.height:
                ui.chart(_intervals(rows, f"{label}: treatment - control, 95% interval", fmt))
    with right:
        st.dataframe(
            sim.select(
                "metric",
                "method",
                "estimate",
                "ci_low",
                "ci_high",
                "p_value",
                "significant",
                "variance_reduction",
                "note",
            ),
            hide_index=True,
            column_config={
                "estimate": st.column_config.NumberColumn(format="%.4f"),
                "ci_low": st.column_config.NumberColumn(format="%.4f"),
                "ci_high": st.column_config.NumberColumn(format="%.4f"),
                "p_value": st.column_config.NumberColumn("p-value", format="%.4f"),
                "variance_reduction": st.column_config.NumberColumn(
                    "CUPED variance reduction", format="percent"
                ),
                "note": st.column_config.TextColumn("not tested because"),
            },
        )


def simulation_label(first: dict[str, object]) -> str:
    """What the simulation injected, as its table records it."""
    note = first.get("injection_note")
    return (
        f"**Simulated**: {ui.integer(first['users'])} real at-risk buyers who visited in the "
        "window randomly assigned; injected into the treatment's real outcomes: "
        f"+{ui.percent(first['injected_conversion_lift'], 1)} conversion (new buyers spending "
        "like the real ones), then every treated user's spend "
        f"{_signed(first['injected_spend_lift'])}: "
        f"{_signed(first['injected_revenue_per_user_lift'])} revenue per user in all. "
        + (f"{note}. " if note else "")
        + "It shows the analysis, not a measured effect."
    )


def _signed(share: object) -> str:
    return ("+" if float(share) >= 0 else "") + ui.percent(share, 1)


def _intervals(rows: pl.DataFrame, title: str, tickformat: str) -> go.Figure:
    fig = go.Figure(
        go.Scatter(
            x=rows["estimate"].to_list(),
            y=rows["method"].to_list(),
            mode="markers",
            marker_size=10,
            error_x={
                "type": "data",
                "symmetric": False,
                "array": (rows["ci_high"] - rows["estimate"]).to_list(),
                "arrayminus": (rows["estimate"] - rows["ci_low"]).to_list(),
            },
        )
    )
    fig.add_vline(x=0, line_dash="dot")
    fig.update_layout(title=title, xaxis_tickformat=tickformat, height=90 + 60 * rows.height)
    return fig


def render() -> None:
    st.title("Experiment lab")
    options, missing = baselines()
    st.subheader("Plan a test")
    if missing is not None:
        st.info(missing)
    if options:
        base, x = inputs(options)
        plan(base, x)
    with ui.section("Segment test plans"):
        segment_plans()
    with ui.section("Simulated reactivation test"):
        simulation()


if __name__ == "__main__":
    render()
