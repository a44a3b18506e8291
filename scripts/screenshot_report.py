"""Render the HTML page of the default audit's reports and screenshot it for the
README (docs/report.png), in the offline headless Chromium the browser tests use.

    .venv/bin/python -m pytest audit/          # writes reports/<spec>.json
    .venv/bin/python scripts/screenshot_report.py

The reports are ``reports/*.json`` (audit reports, mutation reports and
trajectories alike; parents' reports ``*.parent-*.json`` are left out, their merge
shows them).  The picture is the page's top: the overview table and the first spec
down to its law chart (``--full``: the whole page).  Needs Debian's chromium and
chromium-driver (scripts/install.sh installs them when run as root).
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", default=str(ROOT / "reports"), metavar="DIR",
                        help="folder of the run's reports (default: reports/)")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "report.png"),
                        metavar="PNG", help="the screenshot (default: docs/report.png)")
    parser.add_argument("--html", default=None, metavar="FILE",
                        help="also keep the rendered page here")
    parser.add_argument("--width", type=int, default=1000, help="window width in pixels")
    parser.add_argument("--scheme", choices=("light", "dark"), default="light")
    parser.add_argument("--full", action="store_true", help="the whole page, not its top")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from audit.report.browser import INSTALL, missing, offline_chromium, set_color_scheme
    from audit.report.html import write_page
    from audit.report.sources import read_report_files

    files = sorted(p for p in Path(args.reports).glob("*.json") if ".parent-" not in p.name)
    if not files:
        print(f"no reports in {args.reports}: run `pytest audit/` first", file=sys.stderr)
        return 2
    absent = missing()
    if absent:
        print(f"{absent}: {INSTALL}", file=sys.stderr)
        return 2
    inputs = read_report_files(files)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(args.html) if args.html else Path(folder) / "report.html"
        write_page(page, inputs.reports, inputs.mutations, inputs.trajectories)
        driver = offline_chromium(width=args.width, height=900)
        try:
            set_color_scheme(driver, args.scheme)
            driver.get(page.resolve().as_uri())
            bottom = driver.execute_script(
                "const el = document.querySelector('main figure') || document.body;"
                "return Math.ceil(el.getBoundingClientRect().bottom + window.scrollY + 16);")
            height = driver.execute_script(
                "return Math.ceil(document.documentElement.scrollHeight)")
            clip = {"x": 0, "y": 0, "width": args.width, "height": height if args.full
                    else min(bottom, height), "scale": 1}
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "clip": clip, "captureBeyondViewport": True})
        finally:
            driver.quit()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    names = ", ".join(r.name for r in inputs.reports) or "no audit report"
    print(f"screenshot written: {out} ({clip['width']}×{clip['height']} px; {names})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
