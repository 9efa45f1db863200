"""run_cli: the one entry-point shape of the benchmarks (parse -> settings -> run, bad input -> exit 2)."""

from __future__ import annotations

import argparse

import pytest

from anystep.benchmarks.common import REPO_ROOT, run_cli
from anystep.errors import AnystepError


class _Unavailable(Exception):
    pass


def _parser(work: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m x")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--out", default=None)
    if work:
        p.add_argument("--work-dir", default=None)
    return p


def _settings(args):
    if args.n < 1:
        raise AnystepError(f"--n must be >= 1, got {args.n}")
    return {"n": args.n}


def test_run_gets_the_settings_folders_and_the_command(tmp_path):
    seen = {}

    def run(settings, **kw):
        seen.update(settings=settings, **kw)

    code = run_cli(["--n", "3", "--out", str(tmp_path)], parser=_parser(), settings_from_args=_settings, run=run,
                   module="anystep.benchmarks.x", work_dir=tmp_path / "work", settings_errors=(AnystepError,))
    assert code == 0 and seen["settings"] == {"n": 3}
    assert str(seen["out_dir"]) == str(tmp_path) and seen["work_dir"] == tmp_path / "work"
    assert seen["command"] == "python -m anystep.benchmarks.x --n 3 --out " + str(tmp_path)
    # without a default work folder run() is not given one; --out defaults to benchmarks/results
    seen.clear()
    assert run_cli([], parser=_parser(work=False), settings_from_args=_settings, run=run, module="m") == 0
    assert "work_dir" not in seen and seen["out_dir"] == REPO_ROOT / "benchmarks" / "results"


def test_a_settings_error_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(["--n", "0"], parser=_parser(), settings_from_args=_settings, run=lambda s, **k: None, module="m",
                settings_errors=(AnystepError,))
    assert e.value.code == 2 and "--n must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(("exc", "line"), [(AnystepError("no model directory models/x"), "error: no model directory models/x"),
                                           (_Unavailable("no tritonserver"), "error: Triton cannot start here: no tritonserver")])
def test_user_errors_of_run_are_one_line_and_exit_2(exc, line, capsys):
    def run(settings, **kw):
        raise exc

    code = run_cli([], parser=_parser(), settings_from_args=_settings, run=run, module="m",
                   error_prefixes={_Unavailable: "Triton cannot start here: "})
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [line]


def test_other_errors_are_bugs_and_propagate():
    def run(settings, **kw):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run_cli([], parser=_parser(), settings_from_args=_settings, run=run, module="m")


def test_dispatch_answers_other_modes_or_goes_on_to_run(tmp_path, capsys):
    ran = []

    def dispatch(args, settings, out, work, command):
        if args.n == 7:
            raise AnystepError("mode failed")  # user errors of a mode map to exit 2 as well
        return 5 if args.n == 5 else None

    kw = {"parser": _parser(), "settings_from_args": _settings, "run": lambda s, **k: ran.append(s), "module": "m",
              "work_dir": tmp_path, "dispatch": dispatch}
    assert run_cli(["--n", "5"], **kw) == 5 and ran == []
    assert run_cli(["--n", "2"], **kw) == 0 and ran == [{"n": 2}]
    assert run_cli(["--n", "7"], **kw) == 2 and "mode failed" in capsys.readouterr().err


def test_the_benchmarks_entry_points_use_it(monkeypatch):
    import importlib

    calls = []
    for name in ("load", "load_nfe", "load_triton", "latency", "load_ray", "load_ab"):
        mod = importlib.import_module(f"anystep.benchmarks.{name}")
        monkeypatch.setattr(mod, "run_cli", lambda argv, **kw: calls.append(kw["module"]) or 0)
        assert mod.main([]) == 0
    assert calls == [f"anystep.benchmarks.{n}" for n in ("load", "load_nfe", "load_triton", "latency", "load_ray", "load_ab")]
