"""Debian's headless Chromium driven through its matching chromium-driver (Selenium), with the
flags this machine needs and a fresh profile; nothing is downloaded at run time (the Makefile's
``browser`` target installs both from apt)."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WIDTH, HEIGHT = 1366, 768  # the screen the console must be useful on
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WIDTH},{HEIGHT}",
)


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (make browser installs them)")
    return chromium, driver


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    binary, driver_path = _binaries()
    profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        # The page's inner size, not the window's: what a 1366x768 screen shows.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def axe_violations(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """axe-core (npm) run in the page: its violations of impact serious or critical."""
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: make dynamodb-local installs the npm packages")
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(JSON.stringify(r)),"
        " e => done(JSON.stringify({error: String(e)})));"
    )
    report = json.loads(result)
    assert "error" not in report, report
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in report["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(driver: webdriver.Chrome, folder: Path, name: str) -> Path:
    """The viewport as a 1366x768 screen shows it, and the whole page beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    full = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )

    (folder / f"{name}-full.png").write_bytes(base64.b64decode(full["data"]))
    return path
