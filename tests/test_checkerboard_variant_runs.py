"""The one config builder of the checkerboard variant studies (benchmarks/checkerboard_variant_runs.py)."""

from pathlib import Path

from anystep.benchmarks.checkerboard_variant_runs import variant_config


def test_variant_config_is_the_row_plus_its_overrides_and_continuations():
    plain = variant_config("lmd", {}, "t0")
    cfg = variant_config("lmd", {"model.backbone.x_features": 64, "objective_hparams.start_frac": 0.5}, "t1",
                         init_from=Path("runs/x/a"), teacher_from=Path("runs/x/b"))
    assert plain.model.backbone.x_features == 0 and cfg.model.backbone.x_features == 64
    assert cfg.objective_hparams["start_frac"] == 0.5 and "start_frac" not in (plain.objective_hparams or {})
    assert cfg.init_from == str(Path("runs/x/a")) and cfg.teacher == str(Path("runs/x/b"))
    assert plain.init_from != cfg.init_from and plain.teacher != cfg.teacher
    assert cfg.preset.endswith("(t1)") and plain.preset.endswith("(t0)")
    assert cfg.replace(preset=plain.preset, init_from=plain.init_from, teacher=plain.teacher,
                       objective_hparams=plain.objective_hparams, model=plain.model) == plain


def _cli(tmp_path, monkeypatch, argv, teacher=True):
    """Run ``variant_cli`` on a toy study from ``tmp_path``; (exit code, calls, stdout, stderr)."""
    from anystep.benchmarks.checkerboard_variant_runs import Subcommand, variant_cli

    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    if teacher:
        (tmp_path / "runs/checkerboard/si").mkdir(parents=True)
        (tmp_path / "runs/checkerboard/si/model.safetensors").write_bytes(b"")
    calls = []
    rc = variant_cli(argv, module="toy", description="toy study", variants={"a": "A", "b": "B"},
                     train=lambda names: calls.append(("train", names)), report=lambda: calls.append(("report",)),
                     finished=lambda name: name == "b", list_line=lambda v, done: f"{v} {'done' if done else '-'}",
                     run_dir=Path("runs/toy"), report_help="score", default_train=["b"],
                     extra=[Subcommand("time", "time them", lambda a: calls.append(("time", a.names)) or 3,
                                       takes_names=True)])
    return rc, calls


def test_variant_cli_dispatches_and_rejects_unknown_names_in_one_line(tmp_path, monkeypatch, capsys):
    assert _cli(tmp_path, monkeypatch, ["train", "b", "a"]) == (0, [("train", ["b", "a"])])
    assert _cli(tmp_path / "1", monkeypatch, ["train"])[1] == [("train", ["b"])]  # the default
    assert _cli(tmp_path / "2", monkeypatch, ["time", "a"]) == (3, [("time", ["a"])])  # its own exit code
    assert _cli(tmp_path / "3", monkeypatch, ["report"]) == (0, [("report",)])
    capsys.readouterr()
    assert _cli(tmp_path / "4", monkeypatch, ["list"], teacher=False) == (0, [])  # list needs no teacher
    assert capsys.readouterr().out == "A -\nB done\n"
    assert _cli(tmp_path / "5", monkeypatch, ["train", "a", "zz"]) == (2, [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown variant(s) zz" in err and "known: a, b" in err
    assert _cli(tmp_path / "6", monkeypatch, ["train", "a"], teacher=False) == (2, [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs/checkerboard/si is missing" in err


def test_a_run_is_finished_only_with_its_model_and_its_training_record(tmp_path):
    from anystep.benchmarks.checkerboard_variant_runs import run_finished

    run = tmp_path / "v"
    run.mkdir()
    for f in ("config.json", "model.safetensors"):
        (run / f).write_text("{}")
    assert not run_finished(run, "lever_record.json")  # interrupted before the record: resumed, not skipped
    (run / "lever_record.json").write_text("{}")
    assert run_finished(run, "lever_record.json") and not run_finished(run, "train_record.json")


def test_a_continuation_keeps_the_runs_settings_teacher_and_takes_the_new_budget():
    from anystep.benchmarks.checkerboard_lever import VARIANTS, XXL, continued

    v = VARIANTS["pfmm_ffxl_start50_xl"]
    c = continued(v, XXL, "next")
    assert c.name == "next" and c.init_from == v.name and c.teacher_from == v.teacher_from == "fmm4_ff_xl"
    assert c.base == v.base and c.sets == {**v.sets, **XXL} and c.sets["max_steps"] == 12000
    assert continued(v).name == "pfmm_ffxl_start50_xl_xl"


def test_list_into_a_closed_pipe_exits_0_without_a_traceback():
    """`... list | head -1`: the reader closes the pipe after one line; the study exits 0, silent.

    The pipe is shrunk to one page (smaller than the listing), so the study is still writing
    when the reader goes away."""
    import fcntl
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ
    proc = subprocess.Popen([sys.executable, "-m", "anystep.benchmarks.checkerboard_lever", "list"],
                            stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    first = os.read(r, 1)  # one byte, then close, as `head -1` does after its line
    os.close(r)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and first, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
