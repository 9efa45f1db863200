"""End-to-end test of the playground page (``GET /`` of ``anystep serve``) in headless Chromium.

A real ``anystep serve`` runs in a subprocess on a free loopback port with three tiny
untrained model directories (a 2D flow-map MLP, a 2D velocity MLP, a 1x8x8 U-Net flow
map), once without and once with an API key; Playwright drives Debian's ``/usr/bin/chromium`` (Playwright's
own browser download is never used). ``.ci/install-browser.sh`` installs Chromium.

Checks: the page loads with no console errors; generating at steps=1 and steps=4 shows
an image / scatter and the server-reported latency; compare mode shows four panels at
1, 2, 4, 8 steps with one seed; an out-of-range ``n`` shows the server's error message
verbatim; the API key is entered once, kept in session storage, sent as a bearer token;
velocity models get a solver selector; the page is usable at 320 px width. Issue 19: the
steps control offers 1, 2, 4, 8, ... and is disabled (with Compare) for dopri5; the
latency axis is logarithmic; stat boxes are cleared after an error; on a phone the result
is scrolled into view; 2D models default to thousands of points drawn as a density.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "playground-test-key"
MAX_N = 4096  # enough for a 2D density of thousands of points
MAX_STEPS = 16
SERVER_START_TIMEOUT_S = 120.0
UI_TIMEOUT_MS = 30_000
LATENCY_TEXT = re.compile(r"^\d+(\.\d+)? ms$")

if not CHROMIUM.exists():
    pytest.skip(
        "Chromium is not installed at /usr/bin/chromium; run `bash .ci/install-browser.sh` "
        "(apt-get install chromium chromium-driver) to enable the playground browser test",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed; pip install -e '.[dev]'"
)


# ---------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_model_dirs(root: Path) -> dict[str, Path]:
    """Tiny untrained model directories: output quality is irrelevant to the page."""
    import torch

    from anystep.core.config import BackboneConfig, InterpolantConfig, ModelConfig
    from anystep.core.flowmap import build_model
    from anystep.core.modeldir import save_model_dir

    torch.manual_seed(0)
    configs = {
        "toy2d": ModelConfig(
            kind="flowmap",
            backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=2, width=32, depth=2),
            interpolant=InterpolantConfig(name="linear"),
            dataset="checkerboard",
            data_shape=(2,),
        ),
        "toy2d-ode": ModelConfig(
            kind="velocity",
            backbone=BackboneConfig(name="mlp", data_shape=(2,), time_inputs=1, width=32, depth=2),
            interpolant=InterpolantConfig(name="linear"),
            dataset="checkerboard",
            data_shape=(2,),
        ),
        "digits": ModelConfig(
            kind="flowmap",
            backbone=BackboneConfig(
                name="unet", data_shape=(1, 8, 8), time_inputs=2, channels=8, channel_mult=(1, 2)
            ),
            interpolant=InterpolantConfig(name="linear"),
            dataset="digits",
            data_shape=(1, 8, 8),
        ),
    }
    return {
        name: save_model_dir(root / name, build_model(cfg), cfg) for name, cfg in configs.items()
    }


def _get(url: str, key: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def _serve(root: Path, dirs: dict[str, Path], api_key: str | None):
    """Run a real `anystep serve` on a free loopback port; yield its base URL."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from anystep.cli import main; main()", "serve"]
    for name, path in dirs.items():
        cmd += ["--model", f"{name}={path}"]
    cmd += [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-n",
        str(MAX_N),
        "--max-steps",
        str(MAX_STEPS),
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    log_path = root / f"server-{port}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ANYSTEP_API_KEY", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"`anystep serve` exited with code {proc.returncode} before becoming ready:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            try:
                status, _ = _get(base + "/readyz")
            except OSError:
                status = None
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`anystep serve` not ready after {SERVER_START_TIMEOUT_S:.0f} s:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return _make_model_dirs(tmp_path_factory.mktemp("playground-models"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dirs) -> str:
    """`anystep serve` without an API key."""
    with _serve(tmp_path_factory.mktemp("playground-server"), model_dirs, api_key=None) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, model_dirs) -> str:
    """`anystep serve --api-key API_KEY` (started only for the API-key test)."""
    with _serve(tmp_path_factory.mktemp("playground-keyed"), model_dirs, api_key=API_KEY) as base:
        yield base


@pytest.fixture(scope="module")
def served_models(server: str) -> dict[str, dict]:
    """`GET /v1/models` as the page sees it, by name."""
    status, body = _get(server + "/v1/models")
    assert status == 200, body
    return {m["name"]: m for m in json.loads(body)["models"]}


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageLog:
    """Console messages and uncaught exceptions of one page."""

    def __init__(self, page) -> None:
        self.console: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def errors(self, allow_http_status: tuple[int, ...] = ()) -> list[str]:
        """Console errors and page errors, except Chromium's own line for an expected
        HTTP error status (it logs 'Failed to load resource ... status of 422')."""
        out = list(self.page_errors)
        for kind, text in self.console:
            if kind != "error":
                continue
            if any(f"status of {code}" in text for code in allow_http_status):
                continue
            out.append(text)
        return out


def _new_page(browser, server: str, *, width: int = 1280):
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=server)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    return context, page, PageLog(page)


@pytest.fixture
def page_and_log(browser, server):
    context, page, log = _new_page(browser, server)
    _open_playground(page)
    yield page, log
    context.close()


def _open_playground(page):
    """GET / and wait for the models to load; fail with the server's answer if it is not the page."""
    resp = page.goto("/")
    assert resp is not None and resp.status == 200, (
        f"GET / answered {resp.status if resp else None}: {resp.text()[:300] if resp else ''}"
    )
    for asset in ("/static/app.js", "/static/plots.js", "/static/style.css"):
        r = page.request.get(asset)
        assert r.status == 200, f"GET {asset} answered {r.status}: {r.text()[:300]}"
    page.wait_for_selector("body[data-state=ready]")


def _set_steps_by_keyboard(page, steps: int) -> None:
    """Move the slider with the keyboard only (Home, then ArrowRight once per doubling:
    the control offers 1, 2, 4, 8, ... steps)."""
    slider = page.locator("#steps")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(steps.bit_length() - 1):
        page.keyboard.press("ArrowRight")
    assert page.locator("#steps-value").inner_text() == str(steps)
    assert slider.get_attribute("aria-valuetext") == f"{steps} step{'s' if steps > 1 else ''}"


def _generate(page, *, via_keyboard: bool = False):
    """Press Generate; return the /generate response the page received."""
    with page.expect_response(lambda r: r.url.endswith("/generate")) as info:
        if via_keyboard:
            page.locator("#generate").focus()
            page.keyboard.press("Enter")
        else:
            page.locator("#generate").click()
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    return info.value


def _painted_pixels(page, selector: str) -> int:
    """Number of clearly non-white pixels of a canvas (0 for a blank one)."""
    return page.eval_on_selector(
        selector,
        """c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let k = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200) k++;
            return k;
        }""",
    )


def _server_latency(resp) -> float:
    if resp.headers.get("content-type", "").startswith("image/png"):
        return float(resp.headers["x-anystep-time-ms"])
    return float(resp.json()["timing_ms"]["total"])


# ---------------------------------------------------------------------------- tests


def test_page_loads_without_console_errors(page_and_log, served_models):
    page, log = page_and_log
    assert page.title() == "anystep playground"
    options = page.locator("#model option").evaluate_all("os => os.map(o => o.value)")
    assert options == list(served_models)
    # Every control has a label (what a screen reader announces and get_by_label finds).
    for label, control_id in [
        ("Model", "model"),
        ("Steps", "steps"),
        ("Samples (n)", "n"),
        ("Seed", "seed"),
        ("API key", "api-key"),
    ]:
        assert page.get_by_label(label).first.get_attribute("id") == control_id
    first = served_models[options[0]]
    assert page.locator("#steps").get_attribute("data-max-steps") == str(first["max_steps"])
    assert page.locator("#generate").is_enabled()
    assert page.locator("#error").is_hidden()
    assert log.errors() == []


@pytest.mark.parametrize("model", ["toy2d", "digits"])
def test_generate_at_1_and_4_steps_shows_samples_and_latency(page_and_log, served_models, model):
    page, log = page_and_log
    page.select_option("#model", model)
    page.fill("#n", "8")
    page.fill("#seed", "7")
    for steps in (1, 4):
        _set_steps_by_keyboard(page, steps)
        resp = _generate(page, via_keyboard=True)
        assert resp.status == 200, resp.text()
        assert page.locator("#error").is_hidden()
        panel = page.locator("#result .panel")
        assert panel.count() == 1
        assert panel.get_attribute("data-status") == "done"
        if len(served_models[model]["data_shape"]) == 1:
            body = resp.json()
            assert (body["steps"], body["seed"]) == (steps, 7)
            assert _painted_pixels(page, "#result .panel canvas.scatter") > 0
            nfe = body["nfe"]
        else:
            assert resp.headers["x-anystep-steps"] == str(steps)
            img = page.locator("#result .panel img.samples-img")
            img.wait_for()
            page.wait_for_function(
                "() => { const i = document.querySelector('#result .panel img'); "
                "return i && i.complete && i.naturalWidth > 0; }"
            )
            assert img.get_attribute("src").startswith("blob:")
            nfe = int(resp.headers["x-anystep-nfe"])
        # The figures shown are the server's, not the page's own guesses.
        assert page.locator("#reported-steps").inner_text() == str(steps)
        assert page.locator("#nfe").inner_text() == str(nfe)
        latency = page.locator("#latency").inner_text()
        assert LATENCY_TEXT.match(latency), latency
        assert float(latency.split()[0]) == pytest.approx(_server_latency(resp), rel=0.05, abs=0.01)
        assert LATENCY_TEXT.match(panel.locator(".panel-latency").inner_text())
    # Both requests are in the session's latency history and chart.
    assert page.locator("#history tbody tr").count() == 2
    assert _painted_pixels(page, "#chart") > 0
    assert log.errors() == []


def test_compare_mode_shows_four_panels_with_one_seed(page_and_log):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    page.fill("#n", "16")
    page.fill("#seed", "")  # no seed: the server picks one and the page reuses it
    responses = []
    page.on("response", lambda r: responses.append(r) if r.url.endswith("/generate") else None)
    page.locator("#compare").click()
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    panels = page.locator("#result .panel")
    assert panels.count() == 4
    assert panels.evaluate_all("ps => ps.map(p => p.dataset.status)") == ["done"] * 4
    assert panels.evaluate_all("ps => ps.map(p => Number(p.dataset.steps))") == [1, 2, 4, 8]
    bodies = [r.json() for r in responses]
    assert [b["steps"] for b in bodies] == [1, 2, 4, 8]
    assert len({b["seed"] for b in bodies}) == 1
    shown = panels.locator(".panel-latency").all_inner_texts()
    assert all(LATENCY_TEXT.match(t) for t in shown), shown
    for text, body in zip(shown, bodies):
        assert float(text.split()[0]) == pytest.approx(
            body["timing_ms"]["total"], rel=0.05, abs=0.01
        )
    for i in range(4):
        assert _painted_pixels(page, f"#result .panel:nth-child({i + 1}) canvas.scatter") > 0
    assert log.errors() == []


def test_n_above_limit_shows_the_server_message(page_and_log, served_models):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    page.fill("#n", str(served_models["toy2d"]["max_n"] + 1))
    resp = _generate(page)
    assert 400 <= resp.status < 500
    body = resp.json()
    error = page.locator("#error")
    assert error.is_visible()
    assert error.inner_text() == body["message"]
    if body.get("field") == "n":
        assert page.locator("#n").get_attribute("aria-invalid") == "true"
    assert page.locator("#result .panel").get_attribute("data-status") == "error"
    # Only Chromium's own line about the 4xx response; no script errors.
    assert log.errors(allow_http_status=(resp.status,)) == []
    # A valid request afterwards clears the error.
    page.fill("#n", "4")
    assert _generate(page).status == 200
    assert error.is_hidden()
    assert page.locator("#n").get_attribute("aria-invalid") is None


def test_api_key_entered_once_is_kept_and_sent_as_bearer(browser, keyed_server):
    context, page, log = _new_page(browser, keyed_server)
    try:
        # A browser cannot send a bearer token when it navigates, so the page itself
        # (GET / and /static/*) must load without one; the API calls then need it.
        with page.expect_response(lambda r: r.url.endswith("/v1/models")) as info:
            resp = page.goto("/")
            assert resp is not None and resp.status == 200, (
                f"with --api-key set, GET / answered {resp.status if resp else None} "
                f"({resp.text()[:200] if resp else ''}); the playground page and /static/* "
                "must be served without a key so the user can enter one"
            )
        assert info.value.status == 401
        page.wait_for_selector("body[data-state=error]")
        assert page.locator("#error").inner_text() == info.value.json()["message"]
        assert page.locator("#generate").is_disabled()

        page.fill("#api-key", API_KEY)
        with page.expect_request(lambda r: r.url.endswith("/v1/models")) as req:
            page.locator("#api-key").press("Enter")
        assert req.value.headers.get("authorization") == f"Bearer {API_KEY}"
        page.wait_for_selector("body[data-state=ready]")
        assert page.locator("#error").is_hidden()
        assert page.evaluate("sessionStorage.getItem('anystep.apiKey')") == API_KEY

        # Kept for the tab: after a reload the key is back and requests carry it.
        page.reload()
        page.wait_for_selector("body[data-state=ready]")
        assert page.locator("#api-key").input_value() == API_KEY
        page.fill("#n", "2")
        with page.expect_request(lambda r: r.url.endswith("/generate")) as gen_req:
            page.locator("#generate").click()
        assert gen_req.value.headers.get("authorization") == f"Bearer {API_KEY}"
        page.wait_for_selector("body[data-state=done]")
        assert log.errors(allow_http_status=(401,)) == []
    finally:
        context.close()


def test_velocity_model_has_solver_selector_and_flowmap_offers_ode_baseline(
    page_and_log, served_models
):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    assert page.locator("#solver").is_hidden()
    assert page.locator("#baseline").is_visible()  # toy2d-ode serves the same data set

    page.select_option("#model", "toy2d-ode")
    solver = page.locator("#solver")
    assert solver.is_visible()
    want = served_models["toy2d-ode"].get("solvers") or ["euler", "heun", "rk4", "dopri5"]
    assert solver.locator("option").evaluate_all("os => os.map(o => o.value)") == want
    page.select_option("#solver", "heun")
    page.fill("#n", "4")
    page.fill("#seed", "3")
    _set_steps_by_keyboard(page, 2)
    with page.expect_request(lambda r: r.url.endswith("/generate")) as req:
        resp = _generate(page)
    assert req.value.post_data_json["solver"] == "heun"
    assert resp.status == 200, resp.text()
    body = resp.json()
    assert body["solver"] == "heun"
    assert page.locator("#nfe").inner_text() == str(body["nfe"])

    # A flow map with the ODE baseline beside it: two panels, same seed and steps.
    page.select_option("#model", "toy2d")
    page.select_option("#baseline", "toy2d-ode")
    page.select_option("#baseline-solver", "euler")
    seen = []
    page.on("response", lambda r: seen.append(r) if r.url.endswith("/generate") else None)
    page.locator("#generate").click()
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    panels = page.locator("#result .panel")
    assert panels.count() == 2
    a, b = (r.json() for r in seen)
    assert (a["model"], b["model"]) == ("toy2d", "toy2d-ode")
    assert a["seed"] == b["seed"] and a["steps"] == b["steps"] == 2
    assert b["solver"] == "euler"
    assert log.errors() == []


def test_readable_at_320px_width(browser, server):
    context, page, log = _new_page(browser, server, width=320)
    try:
        _open_playground(page)
        page.select_option("#model", "digits")
        page.fill("#n", "4")
        page.locator("#compare").click()
        page.wait_for_selector("body[data-state=done]")
        assert page.locator("#result .panel").count() == 4
        # No horizontal scrolling, and every control fits in the viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        for sel in [
            "#model",
            "#steps",
            "#n",
            "#seed",
            "#random-seed",
            "#generate",
            "#compare",
            "#chart",
        ]:
            box = page.locator(sel).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 320, (sel, box)
        # Body text is not shrunk below a readable size.
        size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
        assert size >= 14
        assert log.errors() == []
    finally:
        context.close()


def test_random_seed_button_sets_a_seed_the_server_uses(page_and_log):
    page, _ = page_and_log
    page.select_option("#model", "toy2d")
    page.fill("#seed", "")
    page.locator("#random-seed").focus()
    page.keyboard.press("Enter")
    seed = page.locator("#seed").input_value()
    assert seed.isdigit()
    page.fill("#n", "2")
    resp = _generate(page)
    assert resp.json()["seed"] == int(seed)
    assert page.locator("#reported-seed").inner_text() == seed


# ------------------------------------------------------------- issue 19 item 10


def test_steps_control_offers_powers_of_two(page_and_log, served_models):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    slider = page.locator("#steps")
    slider.focus()
    page.keyboard.press("Home")
    seen = [page.locator("#steps-value").inner_text()]
    for _ in range(int(slider.get_attribute("max"))):
        page.keyboard.press("ArrowRight")
        seen.append(page.locator("#steps-value").inner_text())
    top = served_models["toy2d"]["max_steps"]
    want = [str(2**k) for k in range(top.bit_length()) if 2**k <= top]
    if want[-1] != str(top):
        want.append(str(top))
    assert seen == want  # 1, 2, 4, 8, 16: every count people use is one key press away
    page.keyboard.press("End")
    assert page.locator("#steps-value").inner_text() == str(top)
    # a mouse click at 1/4 of the track lands on a power of two, never on 3 or 5
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    assert page.locator("#steps-value").inner_text() in want
    assert log.errors() == []


def test_dopri5_disables_steps_and_compare(page_and_log):
    page, log = page_and_log
    page.select_option("#model", "toy2d-ode")
    page.select_option("#solver", "rk4")
    assert page.locator("#steps").is_enabled() and page.locator("#compare").is_enabled()
    page.select_option("#solver", "dopri5")
    assert page.locator("#steps").is_disabled()
    assert page.locator("#compare").is_disabled()
    assert page.locator("#steps-value").inner_text() == "auto"
    assert "dopri5" in page.locator("#steps-hint").inner_text()
    page.fill("#n", "4")
    with page.expect_request(lambda r: r.url.endswith("/generate")) as req:
        resp = _generate(page)
    assert "steps" not in req.value.post_data_json and req.value.post_data_json["solver"] == "dopri5"
    assert resp.status == 200, resp.text()
    page.select_option("#solver", "euler")
    assert page.locator("#steps").is_enabled() and page.locator("#compare").is_enabled()
    assert log.errors() == []


def test_stat_boxes_are_cleared_after_an_error(page_and_log, served_models):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    page.fill("#n", "8")
    assert _generate(page).status == 200
    assert page.locator("#nfe").inner_text() != "–"
    page.fill("#n", str(served_models["toy2d"]["max_n"] + 1))
    resp = _generate(page)
    assert 400 <= resp.status < 500
    for sel in ("#reported-steps", "#nfe", "#latency", "#reported-seed"):
        assert page.locator(sel).inner_text() == "–", sel
    assert log.errors(allow_http_status=(resp.status,)) == []


def test_latency_axis_is_logarithmic(page_and_log):
    page, _ = page_and_log
    page.select_option("#model", "toy2d-ode")
    page.fill("#n", "4")
    for solver in ("euler", "dopri5"):
        page.select_option("#solver", solver)
        assert _generate(page).status == 200
    lat = page.evaluate("""() => [...document.querySelectorAll('#history tbody tr')]
        .map(r => Number(r.children[6].textContent))""")
    assert len(lat) == 2 and all(t > 0 for t in lat)
    chart = page.locator("#chart")
    assert chart.get_attribute("data-y-scale") == "log"
    lo, hi = (float(v) for v in chart.get_attribute("data-y-range").split(","))
    # whole decades that hold both points: the fast euler point keeps its own decade(s)
    assert lo <= min(lat) and hi >= max(lat) and hi / lo >= 10
    assert all(abs(math.log10(v) - round(math.log10(v))) < 1e-9 for v in (lo, hi))


def test_result_is_scrolled_into_view_on_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        _open_playground(page)
        page.select_option("#model", "digits")
        page.fill("#n", "4")
        before = page.evaluate("document.getElementById('result-section').getBoundingClientRect().top")
        assert before > 844 * 0.6, "on a phone the result starts (nearly) below the fold"
        page.locator("#generate").click()
        page.wait_for_selector("body[data-state=done]")
        page.wait_for_function(
            "() => { const t = document.getElementById('result-section').getBoundingClientRect().top;"
            " return t >= -2 && t < 844 * 0.6; }"
        )
    finally:
        context.close()


def test_2d_models_are_drawn_as_a_density_of_thousands_of_points(page_and_log, served_models):
    page, log = page_and_log
    page.select_option("#model", "toy2d")
    n = int(page.locator("#n").input_value())
    assert n >= 2000, n  # the default for a 2D model: thousands of points
    resp = _generate(page)
    assert resp.status == 200, resp.text()
    assert len(resp.json()["samples"]) == n
    canvas = page.locator("#result .panel canvas.scatter")
    assert canvas.get_attribute("data-render") == "density"
    assert _painted_pixels(page, "#result .panel canvas.scatter") > 1000
    # a few points are still drawn as points
    page.fill("#n", "50")
    _generate(page)
    assert page.locator("#result .panel canvas.scatter").get_attribute("data-render") == "points"
    assert log.errors() == []
