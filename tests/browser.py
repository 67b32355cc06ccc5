"""Open a report's index.html in a real headless Chromium (Debian's ``chromium``, driven by
playwright's Python client; playwright's own browser downloads are never used) and check it:
no console error or page error, every image loaded, and a click on a sortable table's header
reorders its rows. Used by tests/test_report_html.py and, on the fresh smoke report, by CI:

    python tests/browser.py REPORT/index.html SCREENSHOT.png
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("SPARSEBENCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    requests_outside: list[str] = field(default_factory=list)
    title: str = ""
    first_text: str = ""


def open_page(index: Path, screenshot: Path | None = None, action=None) -> PageCheck:
    """Load `index` from disk, wait for every image, run `action(page)` if given, and save a
    full-page screenshot. Requests that leave file:// are recorded (the page needs none)."""
    from playwright.sync_api import sync_playwright

    check = PageCheck()
    with tempfile.TemporaryDirectory(prefix="sb-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium(), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and check.console_errors.append(
                m.text))
            page.on("pageerror", lambda e: check.console_errors.append(str(e)))
            page.on("request", lambda r: not r.url.startswith(("file:", "data:"))
                    and check.requests_outside.append(r.url))
            page.goto(Path(index).resolve().as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            check.images = page.evaluate("document.images.length")
            check.broken_images = page.evaluate(
                "Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
                ".map(i => i.getAttribute('src'))")
            check.title = page.title()
            check.first_text = page.evaluate("document.body.innerText.slice(0, 400)")
            if screenshot is not None:  # what a reader sees first, before any click
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
            if action is not None:
                action(page)
        finally:
            context.close()
    return check


def column(page, table: str, col: int) -> list[str]:
    """Column `col` of the first table matching CSS selector `table`, in row order: each
    cell's ``data-sort`` value (what the sort compares), else its text."""
    return page.evaluate(
        "([sel, col]) => Array.from(document.querySelector(sel).tBodies[0].rows)"
        ".map(r => { const c = r.cells[col]; return c.hasAttribute('data-sort') ? "
        "c.getAttribute('data-sort') : c.textContent.trim(); })", [table, col])


def main(argv: list[str]) -> int:
    index, shot = Path(argv[0]), Path(argv[1])
    orders: dict[str, list[str]] = {}

    def sort_first_table(page) -> None:
        orders["before"] = column(page, "table.accuracy", 0)
        page.click("table.accuracy thead th:nth-child(1)")
        orders["asc"] = column(page, "table.accuracy", 0)
        page.click("table.accuracy thead th:nth-child(1)")
        orders["desc"] = column(page, "table.accuracy", 0)

    check = open_page(index, shot, sort_first_table)
    problems = [f"console: {e}" for e in check.console_errors]
    problems += [f"image did not load: {s}" for s in check.broken_images]
    problems += [f"request outside the report: {u}" for u in check.requests_outside]
    asc, desc = orders["asc"], orders["desc"]
    if asc != sorted(asc, key=str.lower) or desc != asc[::-1] or sorted(asc) != sorted(
            orders["before"]):
        problems.append(f"sorting by method did not reorder the rows: {orders}")
    if check.images == 0:
        problems.append("the page shows no figure")
    for line in problems:
        print(f"browser check: {line}", file=sys.stderr)
    print(f"browser check of {index}: {check.images} images, "
          f"{'FAILED' if problems else 'ok'}; screenshot {shot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
