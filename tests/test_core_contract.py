"""The one sampling contract in core: grids, strict parsing, conflicts, seeds, tableaux, units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anystep.core import noise
from anystep.core.grid import GridError, check_grid, make_grid, parse_grid, uniform_grid
from anystep.core.params import ParamError, check_budget, parse_float, parse_int, resolve_sampling
from anystep.core.solvers import SolverFailedError, dopri5, rk_step, solve_fixed
from anystep.core.tableaux import FIXED_SOLVERS, SOLVERS, TABLEAUX
from anystep.core.units import Units, UnitsError, units_for

# ---- strict parsing (issue 19.1: any text that is not an ASCII integer is rejected) ----


@pytest.mark.parametrize("text,want", [("0", 0), ("12", 12), ("-3", -3), ("+4", 4), (" 7 ", 7)])
def test_parse_int_accepts_ascii_integers(text, want):
    assert parse_int("n", text) == want


@pytest.mark.parametrize(
    "text", ["\u00b2", "1\u00b2", "\u0661\u0662", "\uff11", "1_000", "1.0", "1e3", "", " ", "0x10", "1 2", "\u2460", "-", "9" * 31]
)
def test_parse_int_rejects_everything_else(text):
    with pytest.raises(ParamError) as e:
        parse_int("steps", text)
    assert e.value.field == "steps" and "ASCII" in str(e.value)


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "\u00b2", "\uff11.5", "1,5", "0x1p3", ""])
def test_parse_float_rejects_non_finite_and_non_ascii(text):
    with pytest.raises(ParamError):
        parse_float("rtol", text)
    assert parse_float("rtol", "1e-3") == 1e-3 and parse_float("x", ".5") == 0.5


# ---- grids -----------------------------------------------------------------------------


def test_grid_parse_check_make_agree():
    assert parse_grid("0, 0.5,1") == [0.0, 0.5, 1.0] == parse_grid([0, 0.5, 1])
    assert check_grid([0, 0.25, 1], max_steps=2) == [0.0, 0.25, 1.0]
    assert make_grid(grid=[0, 0.25, 1]).tolist() == [0.0, 0.25, 1.0]
    np.testing.assert_array_equal(make_grid(steps=4).numpy(), uniform_grid(4))
    for bad in ("0,,1", "0,a,1", "", [0, True, 1], 5):
        with pytest.raises(GridError):
            parse_grid(bad)
    with pytest.raises(GridError, match="at most 2"):
        check_grid([0, 0.2, 0.4, 1], max_steps=2)


# ---- conflicts (issue 19.5) --------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,kw,field,keep",
    [
        ("flowmap", {"steps": 2, "grid": [0, 0.5, 1]}, "steps", "keep grid"),
        ("velocity", {"steps": 2, "grid": "0,1"}, "steps", "keep grid"),
        ("velocity", {"solver": "dopri5", "steps": 4}, "steps", "drop steps"),
        ("velocity", {"solver": "dopri5", "grid": [0, 1]}, "grid", "drop grid"),
        ("velocity", {"solver": "rk4", "rtol": 1e-3}, "rtol", "drop rtol"),
        ("velocity", {"max_nfe": 100}, "max_nfe", "drop max_nfe"),
        ("flowmap", {"solver": "euler"}, "solver", "drop solver"),
        ("flowmap", {"rtol": 1e-3}, "rtol", "drop rtol"),
        ("velocity", {"solver": "rk45"}, "solver", "dopri5"),
        ("velocity", {"solver": "dopri5", "max_nfe": 3}, "max_nfe", ">= 7"),
        ("velocity", {"solver": "dopri5", "rtol": 0.0}, "rtol", "out of range"),
        ("flowmap", {"steps": 0}, "steps", ">= 1"),
        ("flowmap", {"steps": 9}, "steps", "1..8"),
    ],
)
def test_conflicts_are_rejected_saying_which_to_keep(kind, kw, field, keep):
    with pytest.raises(ParamError) as e:
        resolve_sampling(kind, max_steps=8, **kw)
    assert e.value.field == field and keep in str(e.value), str(e.value)


def test_resolved_costs():
    fm = resolve_sampling("flowmap", steps=4)
    assert (fm.method, fm.steps, fm.nfe) == ("flowmap", 4, 4)
    rk = resolve_sampling("velocity", solver="rk4", grid="0,0.3,1")
    assert (rk.steps, rk.stages, rk.nfe, rk.custom_grid) == (2, 4, 8, True)
    d5 = resolve_sampling("velocity", solver="dopri5", max_nfe=50, rtol=1e-4)
    assert d5.adaptive and d5.nfe == 50 and d5.rtol == 1e-4
    assert check_budget(10, d5, 500) == 500
    with pytest.raises(ParamError, match="max_nfe") as e:
        check_budget(11, d5, 500)
    assert e.value.field == "n"


# ---- per-sample seeds (counter-based, vectorised) -----------------------------------------


def test_noise_rows_depend_only_on_their_seed_and_numpy_equals_torch():
    a = noise.base_noise_np(100, 8, (3,))
    one = noise.base_noise_np(105, 1, (3,))
    np.testing.assert_array_equal(a[5:6], one)
    t = noise.base_noise(range(100, 108), (3,)).numpy()
    np.testing.assert_allclose(t, a, rtol=0, atol=1e-6)
    mixed = noise.base_noise([7, 105, 9], (3,)).numpy()
    np.testing.assert_array_equal(mixed[1], t[5])
    assert not np.array_equal(noise.base_noise_np(1, 1, (3,)), noise.base_noise_np(2, 1, (3,)))
    assert noise.base_noise([], (2,)).shape == (0, 2)
    assert noise.base_noise_np(0, 3, (1, 8, 8)).shape == (3, 1, 8, 8)


def test_small_draws_take_the_same_bits_as_the_array_path():
    """The Python-int path of tiny draws (``SMALL_WORDS``) equals the uint64 array path bit for bit."""
    rng = np.random.default_rng(0)
    seeds = np.concatenate([[0, 1, noise.MAX_SEED, 2**32 - 1, 2**53 + 1], rng.integers(0, noise.MAX_SEED, 60)])
    for dim in (1, 2, 3, 5, 8, 16):
        big = noise.normal_rows_np(seeds.astype(np.int64), dim)  # one call: over SMALL_WORDS, array path
        assert seeds.size * (dim + 1) // 2 * 2 > noise.SMALL_WORDS
        for i, s in enumerate(seeds):
            one = noise.normal_rows_np(np.array([s], dtype=np.int64), dim)
            np.testing.assert_array_equal(one, big[i : i + 1])
    pair = noise.normal_rows_np(seeds[:2].astype(np.int64), 2)
    np.testing.assert_array_equal(pair, noise.normal_rows_np(seeds[:20].astype(np.int64), 2)[:2])
    t = noise.normal_rows_torch(seeds[:1], 3).numpy()
    np.testing.assert_allclose(noise.normal_rows_np(seeds[:1].astype(np.int64), 3), t, rtol=0, atol=1e-12)


def test_noise_is_standard_normal():
    z = noise.base_noise_np(0, 100_000, (2,)).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 0.003
    cols = noise.base_noise_np(0, 20_000, (2,))
    assert abs(np.corrcoef(cols[:, 0], cols[:, 1])[0, 1]) < 0.03
    adjacent = noise.base_noise_np(0, 20_000, (1,)).ravel()
    assert abs(np.corrcoef(adjacent[:-1], adjacent[1:])[0, 1]) < 0.03


def test_seed_range():
    with pytest.raises(noise.SeedError):
        noise.base_noise_np(-1, 1, (2,))
    with pytest.raises(noise.SeedError):
        noise.base_noise_np(noise.MAX_SEED, 2, (2,))
    assert noise.base_noise_np(noise.MAX_SEED, 1, (2,)).shape == (1, 2)


# ---- tableaux ------------------------------------------------------------------------------


def test_tableaux_are_consistent():
    assert SOLVERS == ("euler", "heun", "rk4", "dopri5") and FIXED_SOLVERS == ("euler", "heun", "rk4")
    for tb in TABLEAUX.values():
        assert abs(sum(tb.b) - 1) < 1e-12
        for j in range(tb.stages):  # row sums equal the stage times
            assert abs(sum(tb.a[j]) - tb.c[j]) < 1e-12
    assert abs(sum(TABLEAUX["dopri5"].b_err)) < 1e-12


@pytest.mark.parametrize("name", ["euler", "heun", "rk4"])
def test_rk_step_is_exact_on_polynomials_of_its_order(name):
    order = TABLEAUX[name].order

    def b(x, t):  # dx/dt = t^(order-1): exact solution t^order / order
        return (t ** (order - 1)).reshape(-1, 1).expand_as(x)

    x = torch.zeros(3, 1, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.float64)
    h = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64)
    y = rk_step(b, x, t, h, TABLEAUX[name])
    torch.testing.assert_close(y[:, 0], h**order / order)
    sol = solve_fixed(b, x, 0.0, 1.0, method=name, steps=3)
    assert sol.nfe == 3 * TABLEAUX[name].stages


def test_dopri5_enforces_max_nfe():
    def b(x, t):
        return torch.cos(40 * t).reshape(-1, 1) * x

    x = torch.ones(2, 1)
    ok = dopri5(b, x, 0.0, 1.0, rtol=1e-3, atol=1e-3, max_nfe=10_000)
    assert ok.nfe <= 10_000
    with pytest.raises(SolverFailedError, match="max_nfe=20"):
        dopri5(b, x, 0.0, 1.0, rtol=1e-6, atol=1e-6, max_nfe=20)


# ---- units ----------------------------------------------------------------------------------


def test_units_need_no_dataset_and_round_trip():
    u = units_for("digits", (1, 8, 8))
    assert u.units_shape == (8, 8)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    g = u.to_units(x)
    assert g.shape == (4, 8, 8) and g.min() >= 0 and g.max() <= 16
    np.testing.assert_allclose(u.from_units(g), x, atol=1e-6)
    assert Units.from_dict(u.to_dict()) == u
    assert units_for("checkerboard", (2,)).identity and units_for("cifar10", (3, 4, 4)).units_shape == (4, 4, 3)
    with pytest.raises(UnitsError):
        u.from_units(np.zeros((1, 1, 8, 8)))


def test_digits_units_match_the_dataset():
    pytest.importorskip("sklearn")
    from anystep.core.data import get_dataset

    ds = get_dataset("digits")
    x = ds.sample(5, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(units_for("digits", (1, 8, 8)).to_units(x), ds.to_units(x), atol=1e-5)


def test_units_for_degraded_digits_matches_its_data_set():
    """The restoration base (digits-noisy) is served and written in grey levels like digits, unclipped."""
    import torch

    from anystep.core.data import get_dataset

    ds = get_dataset("digits-noisy")
    x = torch.randn(4, 1, 8, 8).numpy() * 2
    np.testing.assert_allclose(units_for("digits-noisy", (1, 8, 8)).to_units(x), ds.to_units(x), atol=1e-5)
