"""The overhead benchmark's arithmetic and report, and machine-independent result files (no server)."""

from __future__ import annotations

import json

from anystep.benchmarks import common
from anystep.benchmarks.load_overhead import _met, render_overhead


def test_goal_check_is_inconclusive_for_negative_differences():
    assert _met(0.2, 0.3) is True and _met(0.4, 0.3) is False and _met(-0.1, 0.3) is None


def _data():
    rows = [
        {"steps": k, "n": n, "served_ms": 1.0 + k * 0.1, "bare_ms": 0.1 * k, "empty_ms": 0.5, "overhead_ms": 0.4,
         "server_side_overhead_ms": 0.3}
        for k, n in [(1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (1, 256)]
    ]
    probe = {"rows": rows, "rounds": 3, "n1_overhead_ms": 0.4, "per_sample_us": 1.0, "per_step_us": 10.0,
             "server_side_n1_ms": 0.3, "server_side_per_step_us": 5.0, "server_side_per_sample_us": 0.5}
    return {
        "engine": {"engine": "onnx", "providers": ["CPUExecutionProvider"]},
        "model": "checkerboard",
        "probe": probe,
        "ceiling": {"served": {"requests_per_s": 700.0}, "empty": {"requests_per_s": 1000.0}, "fraction": 0.7},
        "dopri5": {"alone_p50_ms": 1.0, "with_dopri5_p50_ms": 1.05, "increase": 0.05, "dopri5_solves": 3},
        "goals": [{"goal": "g", "value_ms": 0.4, "met": True}, {"goal": "h", "value": -1.0, "met": None}],
        "command": "python -m anystep.benchmarks.load --overhead",
        "machine_description": "test machine",
        "load_average": [1.0, 1.0, 1.0],
    }


def test_render_overhead_lists_every_case_and_goal():
    md = render_overhead(_data())
    assert md.count("\n| ") >= 6 + 2 and "70%" in md and "inconclusive" in md and "+5%" in md


def test_result_files_hold_no_paths_of_this_machine(tmp_path):
    root = str(common.REPO_ROOT)
    data = {"model_dir": common.REPO_ROOT / "models" / "checkerboard", "log": f"{root}/runs/x.log", "n": 3}
    paths = common.write_results(tmp_path, "t", data, f"see `{root}/models/digits`\n")
    text = paths.json.read_text() + paths.markdown.read_text()
    assert root not in text
    assert json.loads(paths.json.read_text())["model_dir"] == "models/checkerboard"
