"""Playground with flow maps trained for some step counts only (``supported_steps`` in
config.json: shortcut, consistency, PD maps): the steps control offers those, Compare runs
those and its note names them (never "at most N steps" for a model that also refuses fewer)."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api")

from test_playground import _new_page, _open_playground, _serve, browser  # noqa: F401 (fixture)

from anystep.core.config import BackboneConfig, ModelConfig
from anystep.core.flowmap import build_model
from anystep.core.modeldir import save_model_dir


def _model(root, name, supported):
    bb = BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2, width=16, depth=2)
    cfg = ModelConfig(kind="flowmap", backbone=bb, data_shape=(2,), dataset="checkerboard", supported_steps=supported)
    return save_model_dir(root / name, build_model(cfg), cfg)


@pytest.fixture(scope="module")
def steps_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps-playground")
    dirs = {"shortcut24": _model(root, "shortcut24", (2, 4)), "onestep": _model(root, "onestep", (1,))}
    with _serve(root, dirs, api_key=None) as base:  # the server serves up to 16 steps
        yield base


def _compare(page):
    page.locator("#compare").click()
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    panels = page.locator("#result .panel")
    return panels.evaluate_all("ps => ps.map(p => Number(p.dataset.steps))"), page.locator("#status").inner_text()


def test_compare_names_the_supported_step_counts(browser, steps_server):  # noqa: F811
    context, page, log = _new_page(browser, steps_server)
    try:
        _open_playground(page)
        page.select_option("#model", "shortcut24")
        page.fill("#n", "8")
        assert page.locator("#steps").get_attribute("max") == "1"  # two choices: 2 and 4
        assert "steps 2, 4" in page.locator("#model-info").inner_text()
        steps, status = _compare(page)
        assert steps == [2, 4]
        assert "(this model supports only 2 and 4 steps)" in status and "at most" not in status
        page.select_option("#model", "onestep")
        steps, status = _compare(page)
        assert steps == [1] and "(this model supports only 1 step)" in status
        assert log.errors() == []
    finally:
        context.close()


def test_compare_note_wording(browser, steps_server):  # noqa: F811
    context, page, _ = _new_page(browser, steps_server)
    try:
        _open_playground(page)
        note = "([m, s]) => AnystepModels.compareNote(m, s)"
        steps = "(m) => AnystepModels.compareSteps(m)"
        capped = {"max_steps": 4}  # no supported_steps: any count up to the server's limit
        assert page.evaluate(steps, capped) == [1, 2, 4]
        assert page.evaluate(note, [capped, [1, 2, 4]]) == " (this model serves at most 4 steps)"
        assert page.evaluate(note, [{"max_steps": 16}, [1, 2, 4, 8]]) == ""
        partly = {"max_steps": 4, "supported_steps": [2, 4, 8]}  # the model supports 8, the server caps at 4
        assert page.evaluate(steps, partly) == [2, 4]
        assert page.evaluate(note, [partly, [2, 4]]) == (
            " (this model supports 2, 4 and 8 steps; this server serves at most 4 steps)"
        )
        odd = {"max_steps": 16, "supported_steps": [3, 6, 12]}  # none of 1, 2, 4, 8
        assert page.evaluate(steps, odd) == [3, 6, 12]
        assert page.evaluate(note, [odd, [3, 6, 12]]) == " (this model supports only 3, 6 and 12 steps)"
    finally:
        context.close()
