"""load_ab: a baseline commit's package imported through an overlay, and the side-by-side report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anystep.benchmarks import load_ab as AB
from anystep.benchmarks.loadgen import LoadBenchError


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    """A tiny repository laid out like this one: anystep/ plus server/ mapped by package-dir."""
    r = tmp_path / "repo"
    (r / "anystep").mkdir(parents=True)
    (r / "server").mkdir()
    (r / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "anystep" = "anystep", '
                                      '"anystep.server" = "server" }\n')
    (r / "anystep" / "__init__.py").write_text("")
    (r / "server" / "__init__.py").write_text("")
    (r / "server" / "marker.py").write_text("VALUE = 'old'\n")
    _git(r, "init", "-q")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "old")
    (r / "server" / "marker.py").write_text("VALUE = 'new'\n")  # the working tree moved on
    return r


def test_the_overlay_imports_the_baseline_commit_not_the_working_tree(repo, tmp_path):
    sha, launcher = AB.baseline_overlay(repo, "HEAD", tmp_path / "work")
    overlay = tmp_path / "work" / f"overlay-{sha[:12]}"
    assert (overlay / "anystep" / "server" / "marker.py").read_text() == "VALUE = 'old'\n"
    assert str(overlay) in launcher.read_text()
    code = (f"import sys; sys.path.insert(0, {str(overlay)!r}); "
            "import anystep.server.marker as m; print(m.VALUE, m.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.startswith("old ") and f"overlay-{sha[:12]}" in out  # the committed file, not the edited one
    # a second call reuses the worktree and the overlay
    assert AB.baseline_overlay(repo, sha, tmp_path / "work") == (sha, launcher)


def test_a_revision_that_is_no_commit_is_a_user_error(repo, tmp_path):
    with pytest.raises(LoadBenchError, match="not a commit"):
        AB.baseline_overlay(repo, "no-such-rev", tmp_path / "work")


def test_summary_and_report_side_by_side():
    rec = {("before", "empty"): [(0.0005, float("nan"))] * 3, ("before", 1): [(0.0012, 0.40)] * 3,
           ("before", 16): [(0.0062, 1.60)] * 3, ("after", "empty"): [(0.0005, float("nan"))] * 3,
           ("after", 1): [(0.0011, 0.35)] * 3, ("after", 16): [(0.0041, 1.10)] * 3}
    out = AB.summarize_ab(rec, (1, 16))
    assert out["before"]["server_per_step_us"] == pytest.approx(80.0)
    assert out["after"]["client_per_step_us"] == pytest.approx(200.0) and out["after"]["requests"] == 9
    data = {"command": "python -m anystep.benchmarks.load_ab --baseline x", "machine_description": "M",
            "load_average_start": [1, 1, 1], "load_average": [1, 1, 1], "versions": {}, "baseline_commit": "a" * 40,
            "git_revision": "b", "settings": {"engine": "onnx", "model": "checkerboard", "steps": [1, 16], "rounds": 2,
                                              "block": 3}, "servers": out}
    md = AB.render_markdown(data)
    assert "| before (aaaaaaaaaaaa) | 9 |" in md and "| after | 200.0 | 50.0 |" in md and "with dopri5" not in md
    out["after"]["dopri5"] = [{"alone_p50_ms": 1.0, "with_dopri5_p50_ms": 1.5, "increase": 0.5}]
    assert "| after | 1.000 | 1.500 | +50% |" in AB.render_markdown(data)


def test_settings_validation():
    for kw, msg in (({"steps": ()}, "--steps"), ({"rounds": 0}, "--rounds"), ({"engine": "trt"}, "--engine"),
                    ({"dopri5_runs": -1}, "--dopri5")):
        with pytest.raises(LoadBenchError, match=msg):
            AB.AbSettings(**kw)
