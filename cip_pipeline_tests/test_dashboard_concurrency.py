"""The dashboard open while `cip run` writes the warehouse: the run succeeds (its connections
wait for the dashboard's brief read locks), and every page the dashboard draws meanwhile shows
data or the refreshing notice, never a traceback; afterwards it shows the new data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cip_pipeline.dashboard import data
from cip_pipeline.dashboard.launch import app_test
from cip_pipeline.dashboard.views import PAGES
from cip_pipeline_tests import dashboard_expected as expected

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 900


def test_dashboard_while_the_pipeline_writes(
    dashboard_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shutil.copytree(dashboard_sample, root, ignore=shutil.ignore_patterns("spill"))
    monkeypatch.setenv("CIP_DATA_DIR", str(root))
    data.clear_caches()
    at = app_test(timeout=120)
    for file, *_ in PAGES:  # every page once before the run: the last good data to fall back on
        at.switch_page(f"views/{file}").run()
        assert not at.exception and not at.error, file

    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        # November loaded again, both months derived again, every table over all months.
        run = subprocess.Popen(
            [str(BIN / "cip"), "run", "--months", "2019-11"],
            env={**os.environ, "CIP_DATA_DIR": str(root), "CIP_AUTOMATION": "off"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        drawn = refreshing = busy = 0
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while run.poll() is None and time.monotonic() < deadline:
                for file, title, *_ in PAGES:
                    if file != "home.py":
                        data.expire_cache()  # as if the TTL ran out: read again, mid-run
                    at.switch_page(f"views/{file}").run()
                    assert not at.exception, (title, [e.value for e in at.exception])
                    assert not at.error, (title, [e.value for e in at.error])
                    warnings = " ".join(w.value for w in at.warning)
                    refreshing += "Refreshing" in warnings
                    busy += "being refreshed" in warnings
                    assert at.metric or at.dataframe or "being refreshed" in warnings, title
                    drawn += 1
        finally:
            code = run.wait(timeout=max(1.0, deadline - time.monotonic()))
    output = log_path.read_text()
    print(
        f"{drawn} pages drawn during the run: {refreshing} with the refreshing notice, "
        f"{busy} with nothing cached yet"
    )
    assert code == 0, output[-4000:]
    lines = output.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("FAILED")], output[-4000:]
    # A lock the dashboard held made a step wait and retry, never fail.
    waits = [line for line in lines if "Could not set lock" in line]
    assert all("retrying" in line for line in waits), waits
    print(f"{len(waits)} pipeline connections waited for the dashboard's read lock")
    assert drawn >= len(PAGES)

    # The run over, the dashboard shows what it wrote, without a notice.
    at.switch_page("views/home.py").run()
    assert not at.exception and not at.error and not at.warning
    shown = {m.label: m.value for m in at.metric}
    assert shown["Events"] == f"{expected.headline(root)['events']:,}"
    data.clear_caches()
