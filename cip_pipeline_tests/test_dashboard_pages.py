"""Every dashboard page rendered by Streamlit's AppTest against the sample warehouse: no
exception, and the figures shown equal those computed independently from the warehouse and
the project's statistics. Also: no warehouse yet, tables not built yet, and the pipeline
holding the file (last good data with a notice, or a clear message; never a traceback)."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cip_pipeline import stats
from cip_pipeline.assets import experiments
from cip_pipeline.dashboard import data
from cip_pipeline.dashboard.launch import app_test, measure_pages
from cip_pipeline.dashboard.views import PAGES as VIEWS
from cip_pipeline.dashboard.views import experiments as lab
from cip_pipeline_tests import dashboard_expected as expected
from cip_pipeline_tests.dashboard_expected import number
from cip_pipeline_tests.warehouse_sample import WarehouseSample, run_sample

pytestmark = pytest.mark.slow
PAGES = [f"views/{file}" for file, *_ in VIEWS]


@contextmanager
def dashboard_on(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The dashboard run once over the data folder `root`, every cache empty before and
    after."""
    monkeypatch.setenv("CIP_DATA_DIR", str(root))
    data.clear_caches()
    try:
        yield app_test(timeout=60).run()
    finally:
        data.clear_caches()


def warehouse_copy(dashboard_sample: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A data folder under `tmp_path` holding a copy of the sample's warehouse alone, and
    that copy."""
    root = tmp_path / "data"
    (root / "warehouse").mkdir(parents=True)
    db = root / "warehouse" / "cip.duckdb"
    shutil.copy(dashboard_sample / "warehouse" / "cip.duckdb", db)
    return root, db


@pytest.fixture
def at(dashboard_sample: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    with dashboard_on(dashboard_sample, monkeypatch) as app:
        yield app


@pytest.fixture(scope="module")
def no_buyers(real_head: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample's head without its purchases, through core and analytics as `cip run`
    builds them: sessions, none converted, no buyer. Returns the folder for CIP_DATA_DIR."""
    root = tmp_path_factory.mktemp("no_buyers")
    (root / "raw").mkdir()
    lines = real_head.read_text().splitlines(keepends=True)
    (root / "raw" / "2019-Oct.csv").write_text("".join(x for x in lines if ",purchase," not in x))
    run_sample(root, ["2019-10"])
    return root


@pytest.fixture
def no_buyers_at(no_buyers: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    with dashboard_on(no_buyers, monkeypatch) as app:
        yield app


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def figure(at: AppTest, key: str) -> dict[str, Any]:
    """The Plotly figure of the chart drawn with `key`, as its JSON."""
    for chart in at.get("plotly_chart"):
        if chart.key == key:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key!r}")


def values(array: Any) -> list[Any]:
    """A figure's array: plain JSON, or Plotly's typed array (base64 `bdata`, `dtype`)."""
    if isinstance(array, dict) and "bdata" in array:
        raw = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        if "shape" in array:
            raw = raw.reshape([int(n) for n in str(array["shape"]).split(",")])
        return raw.tolist()
    return list(array)


def nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_every_page_renders(at: AppTest) -> None:
    for page in PAGES:
        at.switch_page(page).run()
        assert_clean(at)
        assert at.title, f"{page} shows no title"


def test_home_headline_equals_the_warehouse(at: AppTest, dashboard_sample: Path) -> None:
    assert_clean(at)
    shown = metrics(at)
    want = expected.headline(dashboard_sample)
    assert shown["Events"] == f"{want['events']:,}"
    assert shown["Users"] == f"{want['users']:,}"
    assert shown["Orders"] == f"{want['orders']:,}"
    assert number(shown["Revenue"]) == pytest.approx(want["revenue"], abs=0.005)
    assert number(shown["Conversion"]) == pytest.approx(100 * want["conversion"], abs=0.005)
    # Freshness: one row per month of the warehouse; the months' steps were materialized by
    # another instance here, so their times come from the lake.
    freshness = at.dataframe[0].value
    assert list(freshness["month"]) == ["2019-10", "2019-11"]
    assert "Parquet written at" in freshness.columns
    assert freshness["loaded"].sum() == want["events"]


def test_executive_overview_per_month(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/executive.py").run()
    assert_clean(at)
    want = expected.headline(dashboard_sample)
    shown = metrics(at)
    assert number(shown["Revenue"]) == pytest.approx(want["revenue"], abs=0.005)
    assert shown["Orders"] == f"{want['orders']:,}"
    assert shown["Average DAU"] == f"{round(want['average_dau']):,}"
    november = date(2019, 11, 1)
    at.selectbox(key="executive_month").set_value(november).run()
    assert_clean(at)
    want = expected.headline(dashboard_sample, november)
    shown = metrics(at)
    assert number(shown["Revenue"]) == pytest.approx(want["revenue"], abs=0.005)
    assert shown["Orders"] == f"{want['orders']:,}"
    assert number(shown["Conversion"]) == pytest.approx(100 * want["conversion"], abs=0.005)


def test_explorer_users_and_optimization(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/explorer.py").run()
    assert_clean(at)
    november = expected.headline(dashboard_sample, date(2019, 11, 1))
    assert f"{november['events']:,} events in November 2019" in at.caption[0].value

    at.switch_page("views/users.py").run()
    assert_clean(at)
    want = expected.headline(dashboard_sample)
    assert metrics(at)["Buyers"] == f"{want['buyers']:,}"

    at.switch_page("views/optimization.py").run()
    assert_clean(at)
    shown = metrics(at)
    assert shown["Raw CSV files"] == f"{expected.raw_mebibytes(dashboard_sample):,.1f} MiB"


def test_hourly_chart_has_every_hour_and_type(at: AppTest, dashboard_sample: Path) -> None:
    """A day without purchases keeps its purchase panel, at zero in every hour."""
    day = date(2019, 11, 15)
    want = expected.hourly_events(dashboard_sample, day)
    assert sum(want["purchase"]) == 0  # the sample's day without a purchase
    at.switch_page("views/explorer.py").run()
    at.date_input(key="explorer_day").set_value(day).run()
    assert_clean(at)
    traces = figure(at, "hourly_events")["data"]
    assert {t["name"]: [int(v) for v in values(t["y"])] for t in traces} == want
    for t in traces:
        assert [str(x)[:13] for x in values(t["x"])] == [f"{day}T{h:02d}" for h in range(24)]


def test_cohort_heatmap_leaves_partial_weeks_blank(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/users.py").run()
    for kind in ("activity", "purchase"):
        at.radio(key="cohort_kind").set_value(kind).run()
        assert_clean(at)
        cells = expected.cohort_cells(dashboard_sample, kind)
        heatmap = figure(at, "retention")["data"][0]
        cohorts = [date.fromisoformat(label[:10]) for label in values(heatmap["y"])]
        weeks = [int(w) for w in values(heatmap["x"])]
        z = values(heatmap["z"])
        partial = 0
        for cohort, row in zip(cohorts, z, strict=True):
            for k, shown in zip(weeks, row, strict=True):
                cell = cells.get((cohort, k))
                if cell is None or (k > 0 and not cell[1]):
                    partial += cell is not None
                    assert nan(shown), (kind, cohort, k, shown)
                else:
                    assert shown == pytest.approx(cell[0], abs=1e-12), (kind, cohort, k)
        assert partial > 0  # the sample ends mid-week
        top = max(rate for (_c, k), (rate, whole) in cells.items() if k > 0 and whole)
        assert heatmap["zmax"] == pytest.approx(max(0.05, top), abs=1e-12)
        assert any("Blank: weeks the data covers only in part" in c.value for c in at.caption)


def test_rfm_landscape_keeps_buyers_who_spent_nothing(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/users.py").run()
    assert_clean(at)
    fig = figure(at, "rfm_landscape")
    assert fig["layout"]["yaxis"]["type"] == "log"
    points: dict[int, float] = {}
    for trace in fig["data"]:
        ids = [int(row[0]) for row in values(trace["customdata"])]
        points.update(zip(ids, values(trace["y"]), strict=True))
    buyers = expected.headline(dashboard_sample)["buyers"]
    assert len(points) == min(4000, buyers)
    free = expected.zero_spend_buyers(dashboard_sample)
    assert free and free <= set(points)  # the sample holds every buyer here
    # Every point is drawn: a log axis leaves out y <= 0.
    assert all(y > 0 for y in points.values())
    assert any(f"({len(free)} here, at 1)" in c.value for c in at.caption)


def test_raw_sizes_are_the_files_the_pipeline_reads(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """October as .csv beside a .csv.gz copy (the .csv is read), November as .csv.gz only,
    and a September file, before the partitions, that the pipeline leaves alone."""
    root = tmp_path / "data"
    shutil.copytree(dashboard_sample, root, ignore=shutil.ignore_patterns("spill"))
    for name, keep in (("2019-Oct.csv", True), ("2019-Nov.csv", False)):
        csv = root / "raw" / name
        with csv.open("rb") as src, gzip.open(csv.with_name(name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        if not keep:
            csv.unlink()
    shutil.copy(root / "raw" / "2019-Oct.csv", root / "raw" / "2019-Sep.csv")
    read = expected.raw_files(root)
    assert [f.name for f in read] == ["2019-Oct.csv", "2019-Nov.csv.gz"]
    monkeypatch.setenv("CIP_DATA_DIR", str(root))
    data.clear_caches()
    at = app_test(timeout=60).run()
    at.switch_page("views/optimization.py").run()
    assert_clean(at)
    shown = {m.label: m for m in at.metric}
    raw = sum(f.stat().st_size for f in read)
    assert shown["Raw CSV files (1 of 2 gzip)"].value == f"{raw / 2**20:,.1f} MiB"
    assert "vs raw files, partly gzip" in shown["Parquet (events)"].delta
    data.clear_caches()


def test_experiment_lab_uses_the_project_statistics(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/experiments.py").run()
    assert_clean(at)
    want = expected.headline(dashboard_sample)
    p, traffic = want["conversion"], want["sessions"] / want["days"]
    size = stats.sample_size_two_proportions(p, 0.10, alpha=0.05, power=0.8)
    shown = metrics(at)
    assert shown["Sample size per arm"] == f"{size.n_control:,}"
    assert shown["Total sample"] == f"{size.total:,}"
    assert shown["Duration"] == f"{stats.experiment_duration_days(size.total, traffic):,} days"
    mde = stats.mde_two_proportions(p, traffic * 14 / 2)
    assert number(shown["MDE in 14 days"]) == pytest.approx(100 * mde.relative_lift, abs=0.05)

    at.slider(key="lab_lift").set_value(20).run()
    at.select_slider(key="lab_alpha").set_value(0.01).run()
    assert_clean(at)
    size = stats.sample_size_two_proportions(p, 0.20, alpha=0.01, power=0.8)
    assert metrics(at)["Sample size per arm"] == f"{size.n_control:,}"

    # A segment's own baseline and its members' first visits in the next window (then the
    # latest week's new ones a day, fractional); a segment is a fixed set of people.
    # The largest lift, so that some segments are large enough for a test.
    at.slider(key="lab_lift").set_value(100).run()
    at.select_slider(key="lab_alpha").set_value(0.05).run()
    segments = expected.segment_baselines(dashboard_sample)
    source = at.selectbox(key="lab_source")
    labels = {
        label.removeprefix("RFM segment: ").rsplit(" (", 1)[0]: i
        for i, label in enumerate(source.options)
    }
    checked = set()
    for segment, seg in segments.items():
        if segment not in labels:
            continue
        at.selectbox(key="lab_source").set_value(labels[segment]).run()
        assert_clean(at)
        rate = seg.rate
        if rate * 2 >= 1:  # no such lift: the page says so instead of planning
            assert any("must stay below 100%" in w.value for w in at.warning)
            assert "Sample size per arm" not in metrics(at)
            checked.add("above 100%")
            continue
        size = stats.sample_size_two_proportions(rate, 1.0, alpha=0.05, power=0.8)
        shown = metrics(at)
        assert shown["Sample size per arm"] == f"{size.n_control:,}"
        if size.total > seg.people:
            assert shown["Duration"] == "segment too small"
            checked.add("too small")
            continue
        want = seg.days(size.total)
        assert want is not None
        days, extrapolated = want
        assert shown["Duration"] == f"{days:,} days" + (" (extrapolated)" if extrapolated else "")
        traffic = at.number_input(key=f"lab_traffic_{labels[segment]}").value
        # not rounded to whole buyers
        assert traffic == pytest.approx(float(seg.latest_week), rel=1e-12)
        # Over 90 days: the window's members, then the latest week's rate, never more than
        # the whole segment.
        at.slider(key="lab_days").set_value(90).run()
        mde = stats.mde_two_proportions(rate, seg.enrolled_by(90) / 2)
        shown = metrics(at)
        assert number(shown["MDE in 90 days"]) == pytest.approx(100 * mde.relative_lift, abs=0.05)
        at.slider(key="lab_days").set_value(14).run()
        checked.add("extrapolated" if extrapolated else "days")
    # the sample has these kinds (days within the window: test_lab_reads_days_off_first_visits)
    assert checked == {"extrapolated", "too small", "above 100%"}
    # The pipeline's own plans and the simulation are on the page, labelled as simulated,
    # with what was injected: +20% conversion and +15% spend are (1.2 x 1.15 - 1) = +38%
    # revenue per user.
    label = next(w.value for w in at.warning if "Simulated" in w.value)
    config = experiments.ExperimentConfig()
    assert (config.simulated_conversion_lift, config.simulated_spend_lift) == (0.2, 0.15)
    assert "+20.0% conversion" in label and "spend +15.0%" in label
    assert "+38.0% revenue per user in all" in label
    assert len(at.dataframe) == 2


def test_users_page_without_buyers(no_buyers_at: AppTest, no_buyers: Path) -> None:
    """No purchase yet: the page says so instead of naming a top segment or plotting an
    empty landscape, and still shows the segments (all empty) and the activity cohorts."""
    at = no_buyers_at
    at.switch_page("views/users.py").run()
    assert_clean(at)
    assert expected.headline(no_buyers)["buyers"] == 0
    shown = metrics(at)
    assert shown["Buyers"] == "0"
    assert shown["Top segment by revenue"] == "–"
    assert shown["Average spend per buyer"] == "–"
    assert any("No buyers yet" in i.value for i in at.info)
    assert [c.key for c in at.get("plotly_chart") if c.key == "rfm_landscape"] == []
    table = next(d.value for d in at.dataframe if "segment" in d.value.columns)
    segments = expected.rfm_segment_names(no_buyers)
    assert list(table["segment"]) == segments and len(segments) > 1
    assert list(table["users"]) == [0] * len(segments)
    # The activity cohorts are there; of purchase cohorts there are none.
    cells = expected.cohort_cells(no_buyers, "activity")
    heatmap = figure(at, "retention")["data"][0]
    cohorts = [date.fromisoformat(label[:10]) for label in values(heatmap["y"])]
    assert cohorts == sorted({cohort for cohort, _k in cells})
    assert values(heatmap["z"])[0][0] == pytest.approx(cells[(cohorts[0], 0)][0])
    at.radio(key="cohort_kind").set_value("purchase").run()
    assert_clean(at)
    assert any(i.value == "No cohort of this kind yet." for i in at.info)


def test_lab_without_a_converted_session(no_buyers_at: AppTest, no_buyers: Path) -> None:
    """Sessions but none converted: a 0% baseline is no baseline to plan on, and the page
    says that (not that there are no sessions), then still shows the pipeline's sections
    (not built here: no buyer before a cutoff)."""
    at = no_buyers_at
    at.switch_page("views/experiments.py").run()
    assert_clean(at)
    want = expected.headline(no_buyers)
    assert want["sessions"] > 0 and want["conversion"] == 0
    infos = [i.value for i in at.info]
    assert any(
        f"None of the {want['sessions']:,} sessions has converted yet" in i for i in infos
    ), infos
    assert not any("has no sessions" in i for i in infos)
    assert not at.metric  # no baseline at all: nothing planned
    assert any(i.startswith("Segment test plans: not in the warehouse yet") for i in infos)
    assert any(i.startswith("Simulated reactivation test: not in the warehouse yet") for i in infos)


def test_lab_with_segments_but_no_converted_session(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segments' baselines still plan a test when no session converted; the page says
    why the sessions' own is not offered."""
    root, db = warehouse_copy(dashboard_sample, tmp_path)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE core.fact_daily_kpis SET converting_sessions = 0")
    sessions = expected.headline(dashboard_sample)["sessions"]
    with dashboard_on(root, monkeypatch) as at:
        at.switch_page("views/experiments.py").run()
        assert_clean(at)
        assert any(
            f"None of the {sessions:,} sessions has converted yet" in i.value for i in at.info
        )
        options = at.selectbox(key="lab_source").options
        assert options and all(o.startswith("RFM segment: ") for o in options)
        assert "Sample size per arm" in metrics(at)
        assert any("Simulated" in w.value for w in at.warning)
        assert len(at.dataframe) == 2  # the segment plans and the simulation


def test_lab_reads_days_off_first_visits() -> None:
    """A segment of 5,000 whose members first visit 300 on day 1, 60 a day on days 2-7, 10 a
    day on days 8-14 (730): 600 are reached on day 6 (a steady 730 / 14 a day would say 12);
    761 on day 14 + ceil(31 / 10) = 18 at the latest week's 10 a day, or 14 + ceil(31 / 20)
    = 16 at 20 a day typed in; never 761 of a segment of 760. Sessions keep a steady rate."""
    reached = (300, *range(360, 661, 60), *range(670, 731, 10))
    segment = lab.Baseline("RFM segment: Loyal", 0.1, 10.0, "members", 5_000, reached)

    def inputs(traffic: float, planned: int = 14) -> lab.Inputs:
        return lab.Inputs(0.1, 0.2, 0.05, 0.8, traffic, "two-sided", planned)

    assert lab.duration(segment, inputs(10.0), 600) == stats.Enrolment(6, False)
    assert lab.duration(segment, inputs(10.0), 761) == stats.Enrolment(18, True)
    assert lab.duration(segment, inputs(20.0), 761) == stats.Enrolment(16, True)
    small = lab.Baseline("RFM segment: Loyal", 0.1, 10.0, "members", 760, reached)
    assert lab.duration(small, inputs(10.0), 761).days is None
    assert lab.enrolled_by(segment, inputs(10.0, 6)) == 600
    assert lab.enrolled_by(segment, inputs(10.0, 20)) == 790
    assert lab.enrolled_by(small, inputs(10.0, 20)) == 760
    sessions = lab.Baseline("All sessions: session conversion", 0.03, 1_000.0, "sessions")
    assert lab.duration(sessions, inputs(1_000.0), 10_001) == stats.Enrolment(11, False)
    assert lab.enrolled_by(sessions, inputs(1_000.0, 14)) == 14_000


def test_simulation_label_states_what_was_injected() -> None:
    """The lab's label of the simulated test says the conversion lift injected (capped, with
    the reason), the spend lift for what it is, and the revenue-per-user lift both make."""
    row = {
        "users": 1_234,
        "injected_conversion_lift": 1 / 9,
        "injected_spend_lift": -0.1,
        "injected_revenue_per_user_lift": 0.125,
        "injection_note": "+20.0% on a 90.00% conversion rate would pass 100%",
    }
    label = lab.simulation_label(row)
    assert "1,234 real at-risk buyers" in label
    assert "+11.1% conversion" in label
    assert "every treated user's spend -10.0%" in label
    assert "+12.5% revenue per user in all" in label
    assert "would pass 100%" in label


@pytest.mark.parametrize(
    ("lift", "alpha", "alternative"), [(10, 0.05, "two-sided"), (30, 0.01, "one-sided")]
)
def test_lab_chart_shades_the_power(
    at: AppTest, dashboard_sample: Path, lift: int, alpha: float, alternative: str
) -> None:
    """The area of the lift's curve past the "significant beyond" line is the power the
    project's statistics give the pooled z-test at the planned size."""
    at.switch_page("views/experiments.py").run()
    at.slider(key="lab_lift").set_value(lift).run()
    at.select_slider(key="lab_alpha").set_value(alpha).run()
    at.radio(key="lab_alternative").set_value(alternative).run()
    assert_clean(at)
    p = expected.headline(dashboard_sample)["conversion"]
    n = stats.sample_size_two_proportions(
        p, lift / 100, alpha=alpha, power=0.8, alternative=alternative
    ).n_control
    power = stats.power_two_proportions(
        p, lift / 100, n, alpha=alpha, alternative=alternative, method="pooled"
    )
    fig = figure(at, "lab_distributions")
    lines = [s["x0"] for s in fig["layout"]["shapes"] if s["x0"] == s["x1"]]
    curve = next(t for t in fig["data"] if t["name"].startswith("treatment"))
    x, y = np.array(values(curve["x"])), np.array(values(curve["y"]))
    past = max(lines)
    shaded = (
        np.concatenate([[past], x[x > past]]),
        np.concatenate([[np.interp(past, x, y)], y[x > past]]),
    )
    area = float(np.trapezoid(shaded[1], shaded[0]))
    assert area == pytest.approx(power, abs=1e-3)
    # and the filled trace is that area: the curve past the line, nothing else
    fill = next(t for t in fig["data"] if t.get("fill") == "tozeroy")
    fx, fy = np.array(values(fill["x"])), np.array(values(fill["y"]))
    assert fx.min() == pytest.approx(past) and np.allclose(fy, np.interp(fx, x, y))
    assert float(np.trapezoid(fy, fx)) == pytest.approx(power, abs=1e-3)


def test_ml_engine_model_card_and_recommendations(at: AppTest, dashboard_sample: Path) -> None:
    at.switch_page("views/ml.py").run()
    assert_clean(at)
    model = expected.latest_model(dashboard_sample)
    lgbm = model["metrics"]["lightgbm"]
    shown = metrics(at)
    assert shown["ROC-AUC"] == f"{lgbm['roc_auc']:.3f}"
    assert shown["PR-AUC"] == f"{lgbm['pr_auc']:.3f}"
    assert f"v{model['version']}" in at.selectbox(key="ml_version").format_func(
        at.selectbox(key="ml_version").value
    )
    card = at.dataframe[0].value  # the comparison with the baselines
    assert set(card["model"]) == set(model["metrics"])

    for source in ("rule", "co-view", "fallback"):
        at.radio(key="ml_source").set_value(source).run()
        assert_clean(at)
        product = at.selectbox(key=f"ml_product_{source}").value
        recs = next(d.value for d in at.dataframe if "why" in d.value.columns)
        want = expected.recommendations(dashboard_sample, product)
        assert list(zip(recs["recommended_product_id"], recs["source"], strict=True)) == want
        assert want[0][1] == source  # the picker lists products led by that source
        if source == "fallback":
            assert all(w.startswith("fallback: popular") for w in recs["why"])


def test_rule_explanation_comes_from_one_rule(at: AppTest, dashboard_sample: Path) -> None:
    """Where both basket kinds have a rule for a pair, the figures shown are those of the one
    rule that ranks it (highest confidence x lift), named by its basket kind."""
    at.switch_page("views/ml.py").run()
    rules = expected.rule_explanations(dashboard_sample)
    products = expected.mixed_kind_products(dashboard_sample)
    assert products
    for product in products:
        at.number_input(key="ml_product_id").set_value(product).run()
        assert_clean(at)
        recs = next(d.value for d in at.dataframe if "why" in d.value.columns)
        shown = recs[recs["source"] == "rule"]
        assert len(shown)
        for rec, why in zip(shown["recommended_product_id"], shown["why"], strict=True):
            rule = rules[(product, int(rec))]
            kind = {"session": "session baskets", "user_horizon": "user-horizon baskets"}
            assert why.startswith(
                f"bought together in {rule['pair_baskets']:,} {kind[rule['basket_kind']]}"
            ), why
            assert f"confidence {100 * rule['confidence']:.1f}%" in why, why
            assert f"lift {rule['lift']:.2f}" in why, why


def test_no_warehouse_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    data.clear_caches()
    at = app_test(timeout=60).run()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        messages = " ".join(m.value for m in [*at.info, *at.warning])
        assert "cip run" in messages, page
    assert not (tmp_path / "warehouse").exists()  # nothing was created


def test_tables_not_built_yet(
    warehouse_sample: WarehouseSample, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample without models and experiments: those sections say so, the rest works."""
    monkeypatch.setenv("CIP_DATA_DIR", str(warehouse_sample.root))
    data.clear_caches()
    at = app_test(timeout=60).run()
    at.switch_page("views/ml.py").run()
    assert_clean(at)
    assert any("not in the warehouse yet" in i.value for i in at.info)
    at.switch_page("views/experiments.py").run()
    assert_clean(at)
    assert "Sample size per arm" in metrics(at)
    assert any("not in the warehouse yet" in i.value for i in at.info)
    data.clear_caches()


def test_an_unreadable_dagster_home_falls_back_to_the_lake(
    dashboard_sample: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A damaged instance config: Home logs why and shows when each month reached the lake."""
    root = tmp_path / "data"
    shutil.copytree(dashboard_sample, root, ignore=shutil.ignore_patterns("spill"))
    (root / "dagster_home" / "dagster.yaml").write_text("storage: [not, a, mapping]\n")
    monkeypatch.setenv("CIP_DATA_DIR", str(root))
    data.clear_caches()
    with caplog.at_level(logging.WARNING, logger="cip_pipeline.dashboard"):
        at = app_test(timeout=60).run()
    assert_clean(at)
    assert "could not read the Dagster home" in caplog.text
    table = next(d.value for d in at.dataframe if "Parquet written at" in d.value.columns)
    shown = dict(zip(table["month"], table["Parquet written at"], strict=True))
    for f in (root / "lake" / "events").glob("month=*/part-*.parquet"):  # one part a month here
        written = datetime.fromtimestamp(f.stat().st_mtime, UTC)
        assert abs(shown[f.parent.name.removeprefix("month=")] - written) < timedelta(seconds=1)
    assert len(shown) == 2
    data.clear_caches()


# Holds the warehouse's write lock, as a pipeline step does, until its input closes.
WRITER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
con.close()
"""


@contextmanager
def writer_holding(db: Path) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)


def test_pipeline_holding_the_file(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, db = warehouse_copy(dashboard_sample, tmp_path)
    with dashboard_on(root, monkeypatch) as at:
        before = metrics(at)
        assert before["Events"] and not at.warning

        with writer_holding(db):
            # The cache expired while the writer holds the file: the last good data, and a notice.
            data.expire_cache()
            at.run()
            assert_clean(at)
            assert metrics(at) == before
            assert any("Refreshing" in w.value for w in at.warning)
            # Nothing read before: a clear message, no figures.
            data.clear_caches()
            at.run()
            assert_clean(at)
            assert not at.metric
            assert any("being refreshed" in w.value for w in at.warning)
        at.run()
        assert_clean(at)
        assert metrics(at) == before and not at.warning


def test_a_damaged_or_deleted_warehouse_is_said_so(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the pipeline holding the file brings back the last good data: a damaged file is
    an error and a deleted one is missing, neither shown as a refresh of data that is gone."""
    good = dashboard_sample / "warehouse" / "cip.duckdb"
    root, db = warehouse_copy(dashboard_sample, tmp_path)
    with dashboard_on(root, monkeypatch) as at:
        before = metrics(at)
        assert before["Events"] and not at.warning

        db.write_bytes(b"not a database" * 1000)
        at.run()
        assert not at.exception and not at.metric and not at.warning
        assert [e.value for e in at.error] == [
            f'**The warehouse cannot be read.** IO Error: The file "{db}" exists, but it is not a '
            "valid DuckDB database file!"
        ]

        shutil.copy(good, db)
        at.run()
        assert_clean(at)
        assert metrics(at) == before and not at.warning
        db.unlink()
        at.run()
        assert_clean(at)
        assert not at.metric and not at.warning
        assert [i.value for i in at.info] == [
            f"**The warehouse is not built yet.** {db} does not exist yet: run `cip run` to "
            "build it."
        ]

        # Built again, its writer still holding it: what the deleted file held is not shown.
        shutil.copy(good, db)
        with writer_holding(db):
            at.run()
            assert_clean(at)
            assert not at.metric
            warnings = [w.value for w in at.warning]
            assert any("being refreshed" in w for w in warnings), warnings
            assert not any("Refreshing" in w for w in warnings)
        at.run()
        assert_clean(at)
        assert metrics(at) == before and not at.warning


def test_measure_pages_reports_every_page(
    dashboard_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(dashboard_sample))
    timings = measure_pages()
    assert [t.page for t in timings] == [title for _f, title, *_ in VIEWS]
    for t in timings:
        assert not t.problems, (t.page, t.problems)
        print(f"{t.page:<20} cold {t.cold:.3f} s  warm {t.warm:.3f} s")
        assert t.warm > 0 and 0 < t.cold < 30
    data.clear_caches()


def test_month_freshness_from_the_dagster_instance(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the Dagster home recorded the months' steps, Home shows when each ran."""
    import dagster as dg

    root = tmp_path / "data"
    shutil.copytree(dashboard_sample, root, ignore=shutil.ignore_patterns("spill", "raw"))
    with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        for key in (["events_parquet"], ["core", "events"], ["core", "fact_sessions"]):
            for partition in ("2019-10-01", "2019-11-01"):
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(asset_key=key, partition=partition)
                )
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["core", "events"])), limit=1
        ).records[0]
    monkeypatch.setenv("CIP_DATA_DIR", str(root))
    data.clear_caches()
    at = app_test(timeout=60).run()
    assert_clean(at)
    freshness = at.dataframe[0].value
    assert list(freshness["month"]) == ["2019-10", "2019-11"]
    assert {"validated at", "loaded at", "derived at"} <= set(freshness.columns)
    loaded = freshness.set_index("month")["loaded at"]["2019-11"]
    assert abs(loaded.timestamp() - latest.timestamp) < 1
    data.clear_caches()


def test_cli_serves_locally_headless_without_telemetry() -> None:
    from cip_pipeline.cli import build_parser
    from cip_pipeline.dashboard.launch import streamlit_command

    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.measure) == ("127.0.0.1", 8501, False)
    command = " ".join(streamlit_command(args.host, args.port))
    for option in (
        "--server.address 127.0.0.1",
        "--server.port 8501",
        "--server.headless true",
        "--browser.gatherUsageStats false",
        "--client.showErrorDetails none",
        "--runner.magicEnabled false",
    ):
        assert option in command


def test_dashboard_sql_takes_values_only_as_bound_parameters() -> None:
    """No statement is completed by string formatting: every value is a $parameter."""
    from cip_pipeline import sql

    statements = sql._statements("dashboard")
    assert len(statements) > 20
    for name, text in statements.items():
        assert "{" not in text and "}" not in text, name
        assert sql.statement("dashboard", name) == text


def test_last_good_results_are_bounded() -> None:
    from datetime import UTC, datetime

    import polars as pl

    store = data._LastGood(limit=3)
    snapshot = data.Snapshot(pl.DataFrame({"x": [1]}), datetime.now(UTC))
    for product in range(5):
        store.put(("db", "recommendations_for", (("product", product),)), snapshot)
    kept = [key[2][0][1] for key in store.results]
    assert kept == [2, 3, 4]
    assert store.get(("db", "recommendations_for", (("product", 0),))) is None
