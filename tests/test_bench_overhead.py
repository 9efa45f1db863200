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


def test_render_overhead_reports_both_answer_formats():
    data = _data()
    data["formats"] = {"n": 64, "concurrency": 64, "blocks": 4, "npy_over_json": 1.25,
                       "json": {"samples_per_s": 1.2e4, "p50_ms": 300.0, "errors": 0, "requests": 512},
                       "npy": {"samples_per_s": 1.5e4, "p50_ms": 250.0, "errors": 0, "requests": 512},
                       "encode_us": {"digits n=64": {"json": 180.0, "npy": 2.5}}}
    md = render_overhead(data)
    assert "digits n=64: JSON 180.0 us, .npy 2.5 us" in md
    assert "JSON 1.2e+04 samples/s" in md and ".npy 1.5e+04 samples/s" in md and "npy / JSON = 1.25" in md
    assert "Answer formats" not in render_overhead(_data())  # older results without the phase still render


def test_encode_costs_time_both_formats_of_each_shape():
    from anystep.benchmarks.load_overhead import encode_costs

    out = encode_costs({"a": (4, 2), "b": (2, 1, 8, 8)}, rounds=3)
    assert set(out) == {"a", "b"} and all(v["json"] > 0 and v["npy"] > 0 for v in out.values())


def test_answer_formats_alternates_blocks_and_counts_samples():
    import asyncio

    from anystep.benchmarks import load_overhead as LO

    seen = []

    async def fake_closed_loop(port, body, concurrency, count, client_cls):
        fmt_ = json.loads(body)["format"]
        seen.append(fmt_)
        return {"requests": count, "requests_per_s": 100.0 if fmt_ == "json" else 200.0, "p50_ms": 1.0, "errors": 0}

    orig, LO.closed_loop = LO.closed_loop, fake_closed_loop
    try:
        out = asyncio.run(LO.answer_formats(0, "m", 8, 4, 40, object, blocks=2))
    finally:
        LO.closed_loop = orig
    assert seen == ["json", "npy", "json", "npy"]
    assert out["json"]["samples_per_s"] == 800.0 and out["npy_over_json"] == 2.0 and out["npy"]["requests"] == 40


def test_regenerated_report_keeps_the_hand_written_notes(tmp_path):
    md = render_overhead(_data(), "by hand: kept")
    path = tmp_path / "load_overhead.md"
    path.write_text(md)
    assert common.existing_notes(path) == "by hand: kept"
    assert common.NOTES_BEGIN not in render_overhead(_data())  # no notes yet: no empty block
