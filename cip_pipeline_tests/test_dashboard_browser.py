"""End to end, as an analyst uses it: `cip dashboard` started as its own process on the sample,
every page opened in headless Chromium, the headline figures read off the rendered page and
compared with the warehouse, and a screenshot of each page kept in test-artifacts/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import IO, Any

import pytest

from cip_pipeline import stats
from cip_pipeline.dashboard.views import PAGES
from cip_pipeline_tests import dashboard_expected as expected
from cip_pipeline_tests.browser import ARTIFACTS, browser_page, free_port
from cip_pipeline_tests.dashboard_expected import number

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (Linux's /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


@contextmanager
def dashboard(data_dir: Path, log: IO[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "cip"), "dashboard", "--port", str(port)],
        env={**os.environ, "CIP_DATA_DIR": str(data_dir)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start (exit {proc.poll()})")
            time.sleep(0.5)
        yield url, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def open_page(page: Any, url: str, title: str) -> float:
    """Load a page and wait until its script has finished; the seconds it took."""
    t0 = time.monotonic()
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
    # The status widget shows while the script runs; then give the charts a moment to paint.
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
    )
    page.locator('[data-testid="stMain"]').first.wait_for(timeout=10_000)
    seconds = time.monotonic() - t0
    time.sleep(2.0)  # widgets and charts paint after the script ends
    return seconds


def shown_metrics(page: Any) -> dict[str, str]:
    found = {}
    for metric in page.locator('[data-testid="stMetric"]').all():
        label = metric.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        found[label] = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return found


def test_every_page_in_chromium(dashboard_sample: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    want = expected.headline(dashboard_sample)
    november = expected.headline(dashboard_sample, date(2019, 11, 1))
    model = expected.latest_model(dashboard_sample)["metrics"]["lightgbm"]
    size = stats.sample_size_two_proportions(want["conversion"], 0.10)
    checks: dict[str, dict[str, str]] = {
        "": {
            "Events": f"{want['events']:,}",
            "Users": f"{want['users']:,}",
            "Orders": f"{want['orders']:,}",
        },
        "executive": {"Orders": f"{want['orders']:,}"},
        "users": {"Buyers": f"{want['buyers']:,}"},
        "experiments": {"Sample size per arm": f"{size.n_control:,}"},
        "ml": {"ROC-AUC": f"{model['roc_auc']:.3f}", "PR-AUC": f"{model['pr_auc']:.3f}"},
        "optimization": {"Raw CSV files": f"{expected.raw_mebibytes(dashboard_sample):,.1f} MiB"},
    }
    log_path = tmp_path / "dashboard.log"
    with (
        open(log_path, "w") as log,
        dashboard(dashboard_sample, log) as (url, port),
        browser_page(height=3000) as page,
    ):
        assert _listening_addresses(port) <= {"0100007F", "00000000000000000000000001000000"}
        for _file, title, _icon, path in PAGES:
            heading = "Customer Intelligence Platform" if not path else title
            seconds = open_page(page, f"{url}/{path}", heading)
            name = path or "home"
            page.screenshot(path=ARTIFACTS / f"dashboard-{name}.png", full_page=True)
            print(f"{title:<20} ready in {seconds:.2f} s in Chromium")
            assert page.locator('[data-testid="stException"]').count() == 0, title
            text = page.locator('[data-testid="stMain"]').inner_text()
            assert "Traceback" not in text and "could not be drawn" not in text, title
            shown = shown_metrics(page)
            for label, value in checks.get(path, {}).items():
                assert shown.get(label) == value, (title, label, shown)
            if not path:
                assert number(shown["Revenue"]) == pytest.approx(want["revenue"], abs=0.005)
                assert number(shown["Conversion"]) == pytest.approx(
                    100 * want["conversion"], abs=0.005
                )
            if path == "explorer":
                assert f"{november['events']:,} events in November 2019" in text
            assert (ARTIFACTS / f"dashboard-{name}.png").stat().st_size > 20_000
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log[-3000:]
    assert "http://127.0.0.1:" in server_log
