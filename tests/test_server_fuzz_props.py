"""Property-based fuzzing (hypothesis) of query strings and JSON bodies, Unicode included.

Every answer must be a non-5xx with a JSON body: ``{"error", "message", "field"}`` for
errors, and for a 200 only finite numbers (issue 19: items 1, 4, 5 and the fuzz goal).
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anystep.server.app import ServerConfig, create_app
from anystep.server.registry import Limits, ModelSpec
from anystep.server.testing import make_tiny_models

fastapi_testclient = pytest.importorskip("fastapi.testclient")

FIELDS = ["model", "steps", "n", "seed", "grid", "format", "solver", "rtol", "max_nfe", "latency_ms", "x"]
MODELS = ["checkerboard", "checkerboard-teacher", "digits", "nope", ""]

# text that looks numeric to str.isdigit / float() but is not ASCII, plus ordinary junk
TRICKY = st.sampled_from(
    ["\u00b2", "\u0661", "\uff11", "1_0", "1e3", "nan", "inf", "-0", "+1", " 2 ", "0x1", "1.", ".5", "1e-400", "9" * 40,
     "0,0.5,1", "0,,1", "\u2028", "\x00", "dopri5", "euler", "json", "npy", "png"]
)
QUERY_VALUE = st.one_of(TRICKY, st.text(max_size=12), st.integers(-5, 300).map(str), st.sampled_from(MODELS))
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(MODELS + ["dopri5", "rk4", "npy", "png"]),
)
JSON_VALUE = st.recursive(JSON_LEAF, lambda kids: st.lists(kids, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    dirs = make_tiny_models(tmp_path_factory.mktemp("models"), seed=7)
    cfg = ServerConfig(
        models=[ModelSpec(n, p) for n, p in dirs.items()],
        engine="torch",
        limits=Limits(max_steps=16, max_compute=512, max_nfe=64),
        request_timeout_s=10.0,
    )
    with fastapi_testclient.TestClient(create_app(cfg)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield c


def _no_nulls_in(samples) -> bool:
    if isinstance(samples, list):
        return all(_no_nulls_in(v) for v in samples)
    return samples is not None and (not isinstance(samples, float) or math.isfinite(samples))


def _check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if r.status_code >= 400:
            assert set(body) == {"error", "message", "field"}, body
            assert isinstance(body["message"], str) and body["message"]
        else:
            key = "samples" if "samples" in body else "z"
            assert _no_nulls_in(body[key]), "a 200 carried non-finite numbers"
    else:
        assert r.status_code == 200, r.text[:300]  # npy / png successes only


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(FIELDS + ["zz", "stéps", "n\u00b2"]), QUERY_VALUE), max_size=5))
def test_fuzz_query_strings(client, items):
    qs = urllib.parse.urlencode(items)
    _check(client.post("/generate?" + qs))


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS + ["zz", "\u00e9"]), JSON_VALUE, max_size=5))
def test_fuzz_json_bodies(client, body):
    _check(client.post("/generate", content=json.dumps(body), headers={"content-type": "application/json"}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["checkerboard", "digits", "checkerboard-teacher", None]),
    st.one_of(
        st.lists(st.lists(st.floats(width=64, allow_nan=False), min_size=2, max_size=2), min_size=1, max_size=4),
        JSON_VALUE,
    ),
    st.one_of(st.none(), st.integers(-2, 20)),
)
def test_fuzz_encode_bodies(client, model, x, steps):
    body = {"x": x, **({"model": model} if model else {}), **({"steps": steps} if steps is not None else {})}
    _check(client.post("/encode", content=json.dumps(body), headers={"content-type": "application/json"}))


@pytest.mark.parametrize("bad", ["%C2%B2", "%D9%A1", "%EF%BC%91", "1_000"])
@pytest.mark.parametrize("name", ["n", "steps", "seed", "max_nfe"])
def test_non_ascii_integers_are_422(client, name, bad):
    """Issue 19.1: the 500 from n=%C2%B2 (superscript two), as a class."""
    r = client.post(f"/generate?{name}={bad}")
    assert r.status_code == 422 and r.json()["field"] == name, r.text


def test_encode_overflow_is_not_a_200(client):
    """Issue 19.4: /encode of 1e38 used to answer 200 with nulls."""
    r = client.post("/encode", json={"model": "checkerboard", "x": [[1e38, 1e38]], "steps": 4})
    if r.status_code == 200:  # the map happened to stay finite: then every number is finite
        assert _no_nulls_in(r.json()["z"])
    else:
        assert r.status_code == 422 and r.json()["error"] in ("non_finite_output", "invalid_samples"), r.text
