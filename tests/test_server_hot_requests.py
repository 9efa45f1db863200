"""Per-request work of the sampling routes: a parameter set is checked once (the same answers and
errors as checking it every time), the query string split without a ``QueryParams`` object (the
same pairs as starlette's), and the answer headers encoded directly (the same names, values, order)."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams
from starlette.requests import Request

from anystep.server import validation
from anystep.server.routes import query_items
from anystep.server.schemas import ApiError


def _outcome(raw, models):
    """``validate_generate``'s answer as comparable values (the error's status, code, message, field)."""
    try:
        p = validation.validate_generate(dict(raw), models)
    except ApiError as e:
        return ("error", e.status, e.error, e.message, e.field)
    return ("ok", p.model.name, p.spec.method, tuple(p.spec.grid), p.spec.nfe, p.n, p.seed, p.format, p.solver,
            p.latency_ms, p.steps_cap, p.x0)


VALID = [
    {"model": "checkerboard", "steps": 1, "n": 1, "seed": 7},
    {"steps": 3, "n": 4, "seed": 0},
    {"model": "checkerboard", "steps": 2, "format": "npy", "seed": 2**53 - 4},
    {"model": "checkerboard", "latency_ms": 50.0, "steps": 4, "seed": 1},
    {"model": "checkerboard-teacher", "solver": "heun", "steps": 2, "seed": 3},
    {"model": "checkerboard-teacher", "solver": "dopri5", "rtol": 1e-4, "max_nfe": 40, "seed": 3},
]
BAD_SEEDS = [-1, True, 1.0, "3", 2**53, 2**53 - 1, [1], None]


@pytest.mark.parametrize("raw", VALID)
def test_a_checked_parameter_set_gives_the_same_params_and_skips_the_schema(tiny_served, raw, monkeypatch):
    app, _ = tiny_served
    models = app.state.anystep.models
    validation._CHECKED.clear()
    first = _outcome(raw, models)
    assert first[0] == "ok"
    calls = []
    real = validation.GenerateRequest.model_validate

    def counting(data):
        calls.append(data)
        return real(data)

    monkeypatch.setattr(validation.GenerateRequest, "model_validate", counting)
    assert _outcome(raw, models) == first  # from the cache: no schema run
    assert calls == []
    other = {**raw, "seed": raw["seed"] + 1}
    got = _outcome(other, models)
    assert calls == [] and got[6] == raw["seed"] + 1 and got[:6] == first[:6] and got[7:] == first[7:]
    unseeded = {k: v for k, v in raw.items() if k != "seed"}
    a, b = _outcome(unseeded, models), _outcome(unseeded, models)  # a drawn seed: in range, different draws
    assert a[0] == b[0] == "ok" and 0 <= a[6] < 2**31 and a[:6] == first[:6]


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_a_seed_on_a_checked_parameter_set_gets_the_answer_of_a_fresh_check(tiny_served, seed):
    app, _ = tiny_served
    models = app.state.anystep.models
    raw = {"model": "checkerboard", "steps": 2, "n": 3, "seed": seed}
    validation._CHECKED.clear()
    fresh = _outcome(raw, models)  # nothing cached
    _outcome({"model": "checkerboard", "steps": 2, "n": 3, "seed": 1}, models)  # now the parameters are
    assert _outcome(raw, models) == fresh or (seed is None and fresh[0] == "ok")
    if seed == 2**53 - 1:  # valid for the schema, but seed + n - 1 is out of range
        assert fresh[:3] == ("error", 422, "out_of_range") and fresh[4] == "seed"
    elif seed is not None:
        assert fresh[0] == "error" and fresh[4] == "seed"


@pytest.mark.parametrize(
    ("primed", "raw"),
    [
        ({"steps": 1, "n": 2}, {"steps": True, "n": 2}),  # 1 == 1.0 == True as dict keys, not as inputs
        ({"steps": 1, "n": 2}, {"steps": 1.0, "n": 2}),
        ({"steps": 1, "n": 2}, {"steps": 1, "n": 2.0}),
        ({"steps": 1, "n": 2}, {"steps": 1, "n": True}),
        ({"latency_ms": 5.0}, {"latency_ms": 5}),
        ({"latency_ms": 5}, {"latency_ms": 5.0}),
        ({"model": "checkerboard-teacher", "rtol": 0.001, "solver": "dopri5"},
         {"model": "checkerboard-teacher", "rtol": -0.001, "solver": "dopri5"}),
        ({"model": "checkerboard-teacher", "steps": 2, "solver": "heun"},
         {"model": "checkerboard-teacher", "steps": 2, "solver": "heun", "grid": None}),
    ],
)
def test_equal_but_different_inputs_are_checked_apart(tiny_served, primed, raw):
    app, _ = tiny_served
    models = app.state.anystep.models
    validation._CHECKED.clear()
    fresh = _outcome({**raw, "seed": 4}, models)
    assert _outcome({**primed, "seed": 4}, models)[0] == "ok"
    assert _outcome({**raw, "seed": 4}, models) == fresh
    if raw.get("steps") is True or raw.get("n") is True:
        assert fresh[:3] == ("error", 422, "invalid_type")


def test_a_custom_grid_is_not_kept_and_another_models_dict_gets_its_own_models(tiny_served):
    app, _ = tiny_served
    models = app.state.anystep.models
    validation._CHECKED.clear()
    for _ in range(2):
        p = validation.validate_generate({"grid": "0,0.5,1", "seed": 1}, models)
        assert p.spec.grid.flags.writeable and list(p.spec.grid) == [0.0, 0.5, 1.0]
    assert not validation._CHECKED
    validation.validate_generate({"steps": 2}, models)
    renamed = {"checkerboard": models["checkerboard-teacher"]}  # the same name, another model
    assert _outcome({"steps": 2}, renamed)[:2] == ("ok", "checkerboard-teacher")  # checked against this dict


@pytest.mark.parametrize(
    "qs",
    [b"", b"steps=1&n=1", b"a", b"a=", b"=b", b"&&steps=1&", b"a=b=c", b"x=%41", b"x=a+b", b"seed=\xe9", b"a;b=1",
     b"n=1&n=2", b"%7E=1", b"grid=0,0.5,1"],
)
def test_query_items_are_starlettes_pairs(qs):
    request = Request({"type": "http", "query_string": qs, "headers": []})
    assert query_items(request) == QueryParams(qs).multi_items()


def test_answer_headers_keep_their_names_values_and_order(tiny_served):
    _, c = tiny_served
    r = c.post("/generate?steps=2&n=3&seed=11&model=checkerboard-teacher&solver=heun")
    assert r.status_code == 200
    names = [k.decode() for k, _ in r.headers.raw]
    want = ["content-length", "content-type", "x-anystep-model", "x-anystep-kind", "x-anystep-steps",
            "x-anystep-nfe", "x-anystep-seed", "x-anystep-n", "x-anystep-shape", "x-anystep-time-ms",
            "x-anystep-queue-ms", "x-anystep-compute-ms", "x-anystep-chosen-by-budget", "x-anystep-solver"]
    assert names == want
    h, body = r.headers, r.json()
    assert (h["x-anystep-model"], h["x-anystep-kind"], h["x-anystep-steps"], h["x-anystep-nfe"]) == (
        "checkerboard-teacher", "velocity", "2", "4")
    assert (h["x-anystep-seed"], h["x-anystep-n"], h["x-anystep-shape"]) == ("11", "3", "3,2")
    assert h["x-anystep-chosen-by-budget"] == "false" and h["x-anystep-solver"] == "heun"
    assert float(h["x-anystep-time-ms"]) == body["timing_ms"]["total"]
    assert float(h["x-anystep-compute-ms"]) == body["timing_ms"]["compute"]
    npy = c.post("/generate", json={"model": "checkerboard", "steps": 1, "n": 2, "format": "npy", "latency_ms": 100})
    assert npy.headers["content-type"] == "application/x-npy" and npy.headers["x-anystep-chosen-by-budget"] == "true"
    assert "x-anystep-solver" not in npy.headers and int(npy.headers["content-length"]) == len(npy.content)


def test_front_door_counts_each_answer_under_its_status(tiny_served):
    _, c = tiny_served
    before = c.get("/metrics").text
    assert c.post("/generate", json={"steps": 0}).status_code == 422
    assert c.post("/generate", json={"steps": 1, "seed": 3}).status_code == 200
    after = c.get("/metrics").text

    def count(text, needle):
        line = next((ln for ln in text.splitlines() if ln.startswith("anystep_requests_total{") and needle in ln), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    bad, good = 'route="/generate",status="422",steps="-"', 'model="checkerboard",route="/generate",status="200",steps="1"'
    assert count(after, bad) - count(before, bad) == 1 and count(after, good) - count(before, good) == 1
