"""Playground with a class-conditional map: class picker and guidance slider reach /generate."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("playwright.sync_api")

from test_conditional_server import _model  # a 4-class 2D map with a guidance input, range [1, 3]
from test_playground import _generate, _new_page, _open_playground, _serve, browser  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def cond_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond-playground")
    with _serve(root, {"cond": _model(root, "flowmap")}, api_key=None) as base:
        yield base


def test_class_picker_and_guidance_slider(browser, cond_server):  # noqa: F811
    context, page, log = _new_page(browser, cond_server)
    try:
        _open_playground(page)
        assert page.locator("#class-field").is_visible() and page.locator("#guidance-field").is_visible()
        options = page.locator("#class option").all_inner_texts()
        assert options[0].startswith("any") and options[1:] == ["0", "1", "2", "3"]
        assert page.locator("#guidance").get_attribute("max") == "3"
        page.select_option("#class", "2")
        page.locator("#guidance").fill("2.5")
        with page.expect_request(lambda r: r.url.endswith("/generate")) as req:
            resp = _generate(page)
        body = json.loads(req.value.post_data)
        assert body["class"] == 2 and body["guidance"] == 2.5
        assert resp.status == 200 and page.locator("body[data-state=done]").count() == 1
        page.select_option("#class", "")  # "any": the server draws the class from the seed
        with page.expect_request(lambda r: r.url.endswith("/generate")) as req:
            _generate(page)
        assert "class" not in json.loads(req.value.post_data)
        assert log.errors() == []
    finally:
        context.close()
