"""The playground's scripts (server/static/*.js): every one is loaded by the page, in an order
where each ``window.Anystep*`` object is defined before a script uses it, and served as
JavaScript. No browser needed (the page itself is driven in tests/test_playground.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from anystep.server.app import STATIC_DIR, ServerConfig, create_app
from anystep.server.registry import ModelSpec
from anystep.server.testing import make_tiny_models

SCRIPT_TAG = re.compile(r'<script src="/static/([^"]+)" defer></script>')
DEFINES = re.compile(r"window\.(Anystep\w+)\s*=")
USES = re.compile(r"window\.(Anystep\w+)\b")


def _scripts() -> list[str]:
    return SCRIPT_TAG.findall((STATIC_DIR / "index.html").read_text())


def test_the_page_loads_every_script_once_app_last():
    scripts = _scripts()
    assert sorted(scripts) == sorted(p.name for p in STATIC_DIR.glob("*.js"))  # no orphan, none missing
    assert len(set(scripts)) == len(scripts) and scripts[-1] == "app.js"


def test_each_script_uses_only_objects_defined_before_it_and_stays_small():
    defined: set[str] = set()
    for name in _scripts():
        text = (STATIC_DIR / name).read_text()
        own = set(DEFINES.findall(text))
        assert len(own) <= 1, f"{name} defines {sorted(own)}: one object per script"
        missing = set(USES.findall(text)) - own - defined
        assert not missing, f"{name} uses {sorted(missing)} before a script defines it; reorder index.html"
        defined |= own
        assert len(text.splitlines()) <= 520, f"{name} is {len(text.splitlines())} lines; split it by concern"


def test_scripts_are_served_as_javascript_with_validators(tmp_path):
    dirs = make_tiny_models(tmp_path, digits=False)
    cfg = ServerConfig(models=[ModelSpec(n, p) for n, p in dirs.items()], engine="torch")
    with TestClient(create_app(cfg)) as c:
        page = c.get("/")
        assert page.status_code == 200 and SCRIPT_TAG.findall(page.text) == _scripts()
        for name in _scripts():
            r = c.get(f"/static/{name}")
            assert r.status_code == 200, (name, r.status_code)
            assert r.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
            assert r.content == (STATIC_DIR / name).read_bytes()
            etag = r.headers.get("etag")
            assert etag and c.get(f"/static/{name}", headers={"If-None-Match": etag}).status_code == 304
