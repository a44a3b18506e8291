"""Headless Chromium for looking at the HTML page offline: the driver the browser
tests (tests/test_html_browser.py) and ``scripts/screenshot_report.py`` share.

Debian's ``chromium`` driven by Debian's ``chromium-driver`` (built from the same
source package, so their versions match) through Selenium, with the network
blocked twice: a host resolver that resolves nothing, and DevTools'
``Network.setBlockedURLs`` for every URL (a ``file://`` page still loads).  The
browser's console and DevTools' network events are logged (``get_log("browser")``,
``get_log("performance")``).  Selenium is imported only when a driver is made.
"""

from __future__ import annotations

import os
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = ("install the browser: apt-get update && apt-get install -y chromium chromium-driver "
           "(as root; scripts/install.sh does it when run as root), and Selenium with "
           "pip install -e '.[test]'")


def missing(chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> str | None:
    """What is missing to drive the browser (None when nothing is)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path in (chromium, chromedriver):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing"
    return None


def offline_chromium(width: int = 1200, height: int = 900, chromium: str = CHROMIUM,
                     chromedriver: str = CHROMEDRIVER) -> Any:
    """A headless Chromium WebDriver that can reach no network; quit it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--disable-background-networking", "--no-first-run", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*"]})
    return driver


def set_color_scheme(driver: Any, scheme: str) -> None:
    """Emulate ``prefers-color-scheme: light`` or ``dark`` on screen (not print) for
    the pages that follow."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "media": "", "features": [{"name": "prefers-color-scheme", "value": scheme}]})
