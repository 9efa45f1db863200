"""`anystep sample` goes through the core sampling contract: conflicts are errors (exit 2, one
line naming what to keep), never silently dropped (issue 19 item 5, CLI side)."""

from __future__ import annotations

import numpy as np
import pytest
from cli_run import exit_code

CB = "models/checkerboard"
TEACHER = "models/checkerboard-teacher"


def _run(tmp_path, *args):
    out = tmp_path / "x.npy"
    return exit_code(["sample", *args, "-n", "8", "--out", str(out), "--model-units"]), out


@pytest.mark.parametrize(
    "args, says",
    [
        ([CB, "--grid", "0,0.5,1", "--steps", "2"], "not both"),
        ([TEACHER, "--solver", "dopri5", "--steps", "4"], "drop steps"),
        ([TEACHER, "--steps", "4"], "drop steps"),  # a velocity model's default solver is dopri5
        ([TEACHER, "--solver", "dopri5", "--nfe", "8"], "drop --nfe"),
        ([CB, "--rtol", "1e-3"], "drop rtol"),
        ([CB, "--nfe", "4"], "--nfe"),
        ([TEACHER, "--solver", "rk4", "--rtol", "1e-3"], "dopri5 only"),
    ],
)
def test_conflicts_exit_2_naming_what_to_keep(tmp_path, capsys, args, says):
    code, out = _run(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_grid_alone_gives_its_step_count(tmp_path, capsys):
    code, out = _run(tmp_path, CB, "--grid", "0,0.5,0.8,1")
    assert code == 0
    assert "nfe=3" in capsys.readouterr().out
    assert np.isfinite(np.load(out)).all()


def test_fixed_step_solver_defaults_to_100_steps(tmp_path, capsys):
    code, _ = _run(tmp_path, TEACHER, "--solver", "euler")
    assert code == 0
    assert "nfe=100" in capsys.readouterr().out
