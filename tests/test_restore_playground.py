"""Playground with a translation map: pick a degraded source, see it restored (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api")

from test_playground import (  # noqa: F401 (browser is a fixture)
    _generate,
    _make_model_dirs,
    _new_page,
    _open_playground,
    _painted_pixels,
    _serve,
    browser,
)

RESTORE = Path(__file__).resolve().parents[1] / "models" / "digits-restore"


@pytest.fixture(scope="module")
def restore_server(tmp_path_factory):
    if not (RESTORE / "config.json").is_file():
        pytest.skip("models/digits-restore is not bundled")
    root = tmp_path_factory.mktemp("restore-playground")
    dirs = {"restore": RESTORE, "digits": _make_model_dirs(root)["digits"]}
    with _serve(root, dirs, api_key=None) as base:
        yield base


def test_pick_a_degraded_source_and_see_it_restored(browser, restore_server):  # noqa: F811
    context, page, log = _new_page(browser, restore_server)
    try:
        with page.expect_response(lambda r: r.url.endswith("/generate")) as first:
            _open_playground(page)
            page.select_option("#model", "restore")
        offered = first.value.json()["source"]  # the picker's choices: sources of seeds 0..7
        page.wait_for_selector("[data-testid=source-choice] >> nth=7")
        choices = page.locator("[data-testid=source-choice]")
        assert choices.count() == 8 and page.locator("#n-field").is_hidden()
        assert choices.nth(0).get_attribute("aria-checked") == "true"
        choices.nth(3).click()
        assert choices.nth(3).get_attribute("aria-checked") == "true"
        assert choices.nth(0).get_attribute("aria-checked") == "false"
        with page.expect_request(lambda r: r.url.endswith("/generate")) as req:
            resp = _generate(page)
        body = json.loads(req.value.post_data)
        assert body["source"] == [offered[3]] and "n" not in body and body["format"] == "json"
        assert resp.status == 200 and page.locator("body[data-state=done]").count() == 1
        assert page.locator("[data-testid=pair-source]").count() == 1
        assert page.locator("[data-testid=pair-restored]").count() == 1
        assert _painted_pixels(page, "[data-testid=pair-restored] canvas") > 0
        # keyboard: the choices are a radio group
        choices.nth(3).focus()
        page.keyboard.press("ArrowRight")
        assert choices.nth(4).get_attribute("aria-checked") == "true"
        # compare: the picked source restored at 1, 2, 4, 8 steps
        page.locator("#compare").click()
        page.wait_for_selector("body[data-state=done]")
        assert page.locator("[data-testid=panel][data-status=done]").count() == 4
        assert page.locator("[data-testid=pair-restored]").count() == 4
        # another seed offers other sources
        with page.expect_response(lambda r: r.url.endswith("/generate")) as again:
            page.locator("#seed").fill("100")
            page.locator("#seed").dispatch_event("change")
        assert again.value.json()["source"] != offered and again.value.json()["seed"] == 100
        # a Gaussian-base model hides the picker and shows n again
        page.select_option("#model", "digits")
        assert page.locator("#source-field").is_hidden() and page.locator("#n-field").is_visible()
        assert log.errors() == []
    finally:
        context.close()
