"""The conditional digits benchmark's goal arithmetic and report (synthetic rows), and a slow smoke run."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from anystep.benchmarks.digits_cond import CondRow, _goal, render_markdown


def _row(sampler, w, steps, nfe, acc, fd):
    return CondRow(sampler, w, steps, nfe, acc, [acc] * 10, fd, 0.0, 2.3, 0.1, 1.0)


def test_goal_needs_accuracy_fd_ratio_and_fewer_evaluations():
    rows = [
        _row("teacher dopri5", 1.0, None, 280.0, 0.91, 5.0), _row("flow map", 1.0, 1, 1.0, 0.99, 14.0),
        _row("teacher dopri5", 2.0, None, 290.0, 0.99, 34.0), _row("flow map", 2.0, 1, 1.0, 0.99, 40.0),
        _row("teacher dopri5", 3.0, None, 40.0, 1.0, 60.0), _row("flow map", 3.0, 1, 1.0, 0.96, 50.0),
    ]
    goal = {g["guidance"]: g for g in _goal(rows)}
    assert not goal[1.0]["met"]  # FD 2.8x the teacher's
    assert goal[2.0]["met"] and goal[2.0]["nfe_ratio"] == 290.0
    assert not goal[3.0]["met"]  # accuracy 96% (and only 40x fewer evaluations)
    data = {"machine": "m", "command": "c", "date": "d", "models": {"cond_map": "a", "teacher": "b"},
            "per_class": 1, "n": 10, "rows": [asdict(r) for r in rows], "goal": _goal(rows), "grids": []}
    md = render_markdown(data)
    assert "| 2 | 0.99 | 0.99 | 40 | 34 | 1.18 | 290 | 290 | yes |" in md


@pytest.mark.slow
def test_quick_run_on_the_bundled_models(tmp_path):
    from anystep.benchmarks.digits_cond import main

    assert main(["--quick", "--restore-map", "", "--out", str(tmp_path), "--per-class", "3"]) == 0
    assert (tmp_path / "digits_cond.md").is_file() and (tmp_path / "digits_cond_w1.png").is_file()
