"""Screenshots of the playground (``GET /`` of ``anystep serve``) with the bundled models.

Serves ``models/*`` with ``anystep serve`` on a free loopback port, drives headless
Chromium with Playwright and writes

* ``playground-desktop.png``: 1280 px wide, checkerboard flow map compared at 1, 2, 4, 8
  steps (drawn as a density), after an rk4 and a dopri5 request of the teacher (log
  latency axis);
* ``playground-phone.png``: 390 x 844 (a phone), right after Generate (the result is
  scrolled into view);
* ``playground-320.png``: 320 px wide, digits compared at 1, 2, 4, 8 steps.

Run: ``python -m anystep.benchmarks.playground_screenshots --out benchmarks/results``
(needs Chromium: ``bash .ci/install-browser.sh``, and ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _models() -> dict[str, Path]:
    names = ["checkerboard", "checkerboard-teacher", "digits", "digits-teacher"]
    return {n: REPO / "models" / n for n in names if (REPO / "models" / n / "config.json").is_file()}


def _ready(page, state: str = "done") -> None:
    page.wait_for_selector(f"body[data-state={state}], body[data-state=error]")


def main(argv: list[str] | None = None) -> None:
    """Write the three screenshots into ``--out``."""
    from playwright.sync_api import sync_playwright

    from anystep.server.testing import ServerProcess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = _models()
    if "checkerboard" not in models:
        raise SystemExit("error: models/checkerboard is missing; the screenshots show the bundled models")
    with ServerProcess(models=models) as srv, sync_playwright() as p:
        launch = {"args": ARGS}
        if CHROMIUM.exists():
            launch["executable_path"] = str(CHROMIUM)
        browser = p.chromium.launch(**launch)
        try:
            # desktop: teacher with rk4 and dopri5 (log axis), then the flow map compared
            ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, base_url=srv.url)
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            page.goto("/")
            page.wait_for_selector("body[data-state=ready]")
            if "checkerboard-teacher" in models:
                page.select_option("#model", "checkerboard-teacher")
                page.fill("#seed", "0")
                for solver in ("rk4", "dopri5"):
                    page.select_option("#solver", solver)
                    page.locator("#generate").click()
                    _ready(page)
            page.select_option("#model", "checkerboard")
            page.fill("#seed", "0")
            page.locator("#compare").click()
            _ready(page)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(args.out / "playground-desktop.png"), full_page=True)
            ctx.close()

            # phone: Generate brings the result into view
            ctx = browser.new_context(viewport={"width": 390, "height": 844}, base_url=srv.url, is_mobile=True,
                                      has_touch=True, device_scale_factor=1)
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            page.goto("/")
            page.wait_for_selector("body[data-state=ready]")
            page.select_option("#model", "checkerboard")
            page.fill("#seed", "0")
            page.locator("#generate").click()
            _ready(page)
            page.wait_for_timeout(800)  # the smooth scroll
            page.screenshot(path=str(args.out / "playground-phone.png"))
            ctx.close()

            # 320 px: digits compared
            ctx = browser.new_context(viewport={"width": 320, "height": 900}, base_url=srv.url)
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            page.goto("/")
            page.wait_for_selector("body[data-state=ready]")
            page.select_option("#model", "digits" if "digits" in models else "checkerboard")
            page.fill("#seed", "0")
            page.locator("#compare").click()
            _ready(page)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(args.out / "playground-320.png"), full_page=True)
            ctx.close()
        finally:
            browser.close()
    for name in ("playground-desktop.png", "playground-phone.png", "playground-320.png"):
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
