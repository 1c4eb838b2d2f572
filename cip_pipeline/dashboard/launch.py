"""`cip dashboard`: start Streamlit on the dashboard, local and headless by default; and
`cip dashboard --measure`: time every page's render with Streamlit's AppTest."""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent / "app.py"
INSTALL_HINT = "the dashboard needs its extra: pip install '.[dashboard]' (or make test)"


# The server's options. Magic (bare expressions written to the page) is off: the pages call
# `st` explicitly, and magic's ast.parse of each page fails on CPython 3.11 when a garbage
# collection inside it finalizes another thread's objects ("AST constructor recursion depth
# mismatch").
SERVER_OPTIONS = {
    "server.headless": True,
    "server.fileWatcherType": "none",
    "server.runOnSave": False,
    "browser.gatherUsageStats": False,
    "client.showErrorDetails": "none",
    "client.toolbarMode": "viewer",
    "global.developmentMode": False,
    "runner.magicEnabled": False,
}
IN_PROCESS_OPTIONS = ("runner.magicEnabled",)  # the ones AppTest's runs need as well


def streamlit_command(host: str, port: int) -> list[str]:
    """The `streamlit run` command line: bound to `host`, no browser opened, no usage
    statistics sent, no file watcher, error details kept in the server's log."""
    options = {"server.address": host, "server.port": port, **SERVER_OPTIONS}
    flags = [
        arg
        for key, value in options.items()
        for arg in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))
    ]
    return [sys.executable, "-m", "streamlit", "run", str(APP), *flags]


def app_test(timeout: float) -> AppTest:
    """The dashboard under Streamlit's AppTest, with the server's script options. Garbage this
    thread left (e.g. Dagster's SQLite connections) is collected here first, not later inside
    a script thread, where finalizing it fails and its logged error breaks a compile."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    for key in IN_PROCESS_OPTIONS:
        config.set_option(key, SERVER_OPTIONS[key])
    gc.collect()
    return AppTest.from_file(str(APP), default_timeout=timeout)


def has_streamlit() -> bool:
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError:
        return False
    return True


def serve(host: str, port: int) -> int:
    """Replace this process with the Streamlit server (so signals reach it directly)."""
    if not has_streamlit():
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    command = streamlit_command(host, port)
    os.environ["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    print(f"dashboard on http://{host}:{port} (warehouse read-only); Ctrl-C stops it", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


@dataclass(frozen=True)
class PageTiming:
    page: str
    cold: float  # nothing cached: every query reaches the warehouse
    warm: float  # a rerun with the caches filled
    problems: list[str]


def measure_pages(repeat: int = 1) -> list[PageTiming]:
    """Render each page with AppTest, first with every cache cleared, then again warm; the
    best of `repeat` tries of each. Each page's modules are imported by an untimed run first,
    as in a server that has shown the page before."""
    at = app_test(timeout=300)
    at.run()  # page registration, not timed; imports the modules inside a (mock) runtime
    from cip_pipeline.dashboard import data
    from cip_pipeline.dashboard.views import PAGES

    timings = []
    for file, title, _icon, _path in PAGES:
        cold, warm = float("inf"), float("inf")
        at.switch_page(f"views/{file}").run()  # the page's imports, as a running server has
        for _ in range(repeat):
            data.clear_caches()
            at.switch_page(f"views/{file}")
            t0 = time.perf_counter()
            at.run()
            cold = min(cold, time.perf_counter() - t0)
            t0 = time.perf_counter()
            at.run()
            warm = min(warm, time.perf_counter() - t0)
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        timings.append(PageTiming(title, cold, warm, [str(p)[:200] for p in problems]))
    return timings


def measure(repeat: int = 1, out: TextIO = sys.stdout) -> int:
    if not has_streamlit():
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from cip_pipeline import paths

    print(f"warehouse {paths.warehouse_path()}", file=out)
    timings = measure_pages(repeat)
    print(f"{'page':<20} {'cold s':>8} {'warm s':>8}", file=out)
    for t in timings:
        flag = f"  problems: {'; '.join(t.problems)}" if t.problems else ""
        print(f"{t.page:<20} {t.cold:8.3f} {t.warm:8.3f}{flag}", file=out)
    return 1 if any(t.problems for t in timings) else 0
