"""Open a page in Debian's headless Chromium (driven by Playwright): what its console said, what it asked
the network for, and a screenshot. Run as a script to take the docs' screenshot of a report:

    python tests/browser.py REPORT.html OUT.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it
# As root, without a sandbox; no background traffic (this machine's network is closed to it anyway)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@dataclass
class Visit:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text) of every console message
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    svg_boxes: list[tuple[float, float]] = field(default_factory=list)  # (width, height) of each rendered svg
    screenshot: bytes = b""


def visit(page_file: Path, *, width: int = 1200, height: int = 900) -> Visit:
    from playwright.sync_api import sync_playwright

    seen = Visit()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: seen.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: seen.errors.append(str(e)))
            page.on("request", lambda r: seen.requests.append(r.url))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            boxes = page.evaluate("[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect())"
                                  ".map(r => [r.width, r.height])")  # fmt: skip
            seen.svg_boxes = [(float(w), float(h)) for w, h in boxes]
            seen.screenshot = page.screenshot(full_page=True)
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    Path(sys.argv[2]).write_bytes(visit(Path(sys.argv[1])).screenshot)
