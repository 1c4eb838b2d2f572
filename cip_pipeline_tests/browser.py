"""Headless Chromium for the UI tests: Debian's `chromium` package (installed here if it is
missing, never a downloaded browser build) driven by Playwright, and free local ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    # Debian's package, installed by the test set-up (never a browser download).
    for cmd in (
        ["apt-get", "install", "-y", "-q", "chromium"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ):
        if subprocess.run(cmd, capture_output=True).returncode == 0 and shutil.which("chromium"):
            break
    path = shutil.which("chromium")
    if not path:
        pytest.fail("could not install Debian's chromium package")
    return path


@contextmanager
def browser_page(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
