"""The HTML page in a real browser: Debian's headless Chromium driven by Selenium
through Debian's chromedriver (built from the same source as the browser, so their
versions match).  The page is loaded from disk with the network blocked (DevTools
``Network.setBlockedURLs`` and a host resolver that finds nothing), and the tests
check that no request leaves the page, that the console has no error, that every
chart has a non-empty box, that the dark theme applies, that hostile strings run
nothing, and write a screenshot of each section under the test's tmp folder.

Outside CI they skip, saying how to install the browser, when it is missing; under
``CI=true`` they fail instead (``.ci/run`` installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.report.browser import CHROMIUM, set_color_scheme
from audit.report.html import render_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LIGHT_BACKGROUND, DARK_BACKGROUND = "rgb(255, 255, 255)", "rgb(17, 21, 26)"


def require_browser() -> None:
    """Skip (outside CI) or fail (CI=true) when the browser, its driver or Selenium
    is missing, saying how to install them."""
    from audit.report.browser import INSTALL, missing
    from audit.session import strict_environment

    absent = missing(CHROMIUM)
    if absent:
        if strict_environment():
            pytest.fail(f"{absent} (CI=true: the browser tests must run); {INSTALL}")
        pytest.skip(f"{absent}: {INSTALL}")


@pytest.fixture(scope="module")
def driver():
    require_browser()
    from audit.report.browser import offline_chromium

    browser = offline_chromium(chromium=CHROMIUM)
    yield browser
    browser.quit()


def _open(driver, path: Path, scheme: str = "light") -> None:
    set_color_scheme(driver, scheme)
    driver.get_log("browser")
    driver.get_log("performance")  # start both logs afresh
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def _requests(driver) -> list[str]:
    """URLs the page asked for since it was opened (DevTools' network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_html_report import (
        failing_baseline_report,
        merge_report,
        mutation_report,
        passing_report,
        trajectory,
    )
    from test_report import synthetic_report

    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(render_page(
        [passing_report(), synthetic_report("tiny-law"), failing_baseline_report(),
         merge_report()], [mutation_report()], [trajectory()]), encoding="utf-8")
    return path


def test_no_request_leaves_the_page_and_no_console_error(driver, page_file: Path) -> None:
    _open(driver, page_file)
    assert _requests(driver) == [page_file.as_uri()]
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_a_page_that_asks_the_network_is_caught(driver, tmp_path: Path) -> None:
    """The checks above can fail: an image from another host is requested (and
    blocked), and a script error reaches the console log."""
    path = tmp_path / "leaky.html"
    path.write_text('<!DOCTYPE html><title>x</title><img src="https://example.org/x.png">'
                    "<script>no_such_function();</script>", encoding="utf-8")
    _open(driver, path)
    assert "https://example.org/x.png" in _requests(driver)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert any("no_such_function" in message for message in errors), errors


def test_every_chart_has_a_box_and_the_script_runs(driver, page_file: Path) -> None:
    _open(driver, page_file)
    boxes = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart, table.matrix')).map("
        "e => { const r = e.getBoundingClientRect(); return [e.getAttribute('class'), "
        "r.width, r.height]; })")
    # 4 law charts, 3 drift charts (baseline, merge; the law's failing report has
    # none), the trajectory's 3 charts, the mutation matrix
    assert len(boxes) == 4 + 2 + 3 + 1, boxes
    for cls, width, height in boxes:
        assert width > 200 and height > 60, (cls, width, height)
    circles = driver.execute_script(
        "return document.querySelectorAll('#spec-0 svg.chart-law circle.pt').length")
    assert circles == 9
    # the inline script opens the collapsed sections for printing
    assert driver.execute_script("return document.querySelectorAll('details[open]').length") == 0
    driver.execute_script("window.dispatchEvent(new Event('beforeprint'))")
    assert driver.execute_script(
        "return document.querySelectorAll('details:not([open])').length") == 0
    driver.execute_script("window.dispatchEvent(new Event('afterprint'))")
    assert driver.execute_script("return document.querySelectorAll('details[open]').length") == 0
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def _colours(driver) -> tuple[str, str]:
    return tuple(driver.execute_script(
        "return [getComputedStyle(document.body).backgroundColor, "
        "getComputedStyle(document.querySelector('svg.chart text.axis-label')).fill]"))


def test_dark_theme_applies(driver, page_file: Path, tmp_path: Path) -> None:
    _open(driver, page_file, "light")
    light = _colours(driver)
    _open(driver, page_file, "dark")
    dark = _colours(driver)
    assert light[0] == LIGHT_BACKGROUND and dark[0] == DARK_BACKGROUND
    assert light[1] == "rgb(29, 35, 43)" and dark[1] == "rgb(228, 232, 236)"  # chart text
    # printed, the page is black on white whatever the screen's theme
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print", "features": [
        {"name": "prefers-color-scheme", "value": "dark"}]})
    assert _colours(driver) == (LIGHT_BACKGROUND, "rgb(0, 0, 0)")
    set_color_scheme(driver, "dark")
    assert _colours(driver) == dark
    shot = tmp_path / "dark.png"
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_screenshot_of_each_section(driver, page_file: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _open(driver, page_file)
    sections = driver.find_elements(By.CSS_SELECTOR, "main > section")
    ids = [s.get_attribute("id") for s in sections]
    assert ids == ["spec-0", "spec-1", "spec-2", "spec-3", "mutations-0", "trajectory-0"]
    for element, name in zip(sections, ids, strict=True):
        path = tmp_path / f"{name}.png"
        assert element.screenshot(str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{i}.png" for i in ids)


def test_hostile_strings_run_nothing(driver, tmp_path: Path) -> None:
    from test_html_report import HOSTILE, hostile_reports

    path = tmp_path / "hostile.html"
    path.write_text(render_page(*hostile_reports()), encoding="utf-8")
    _open(driver, path)
    assert driver.execute_script("return document.images.length") == 0
    assert HOSTILE in driver.execute_script("return document.body.innerText")
    data = driver.execute_script(
        "return JSON.parse(document.getElementById('equilaw-data').textContent)")
    assert data["reports"][0]["model"]["path"] == f"/models/{HOSTILE}"
    assert _requests(driver) == [path.as_uri()]
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_browser_and_driver_versions_match(driver) -> None:
    browser = driver.capabilities["browserVersion"]
    chromedriver = driver.capabilities["chrome"]["chromedriverVersion"].split()[0]
    assert browser.split(".")[:3] == chromedriver.split(".")[:3], (browser, chromedriver)
    assert driver.capabilities["browserName"] in ("chrome", "chromium")
