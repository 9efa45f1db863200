"""`anystep export` on the command line: success output, exit 2 with one line on bad input,
exit 1 on a failed parity check, and never a half-written artifact."""

from __future__ import annotations

import shutil

import pytest
from cli_run import run_cli_out
from test_export_common import leftovers, model_dirs  # noqa: F401  (fixture)

from anystep.export.manifest import load_manifest


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``anystep export ARGS``: exit code, stdout and stderr."""
    return run_cli_out(["export", *args], capsys)


def test_export_onnx_and_triton_from_the_cli(model_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "exports" / "cb"
    code, stdout, _ = run_cli(
        [
            str(model_dirs["flowmap"]),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--exporter",
            "torchscript",
            "--max-batch",
            "64",
        ],
        capsys,
    )
    assert code == 0
    assert (out / "model.onnx").is_file() and "max |err|" in stdout
    m = load_manifest(out)
    assert m.batch == {"min": 1, "opt": 16, "max": 64}
    code, stdout, _ = run_cli(
        [
            str(model_dirs["velocity"]),
            "--format",
            "triton",
            "--out",
            str(tmp_path / "repo"),
            "--exporter",
            "torchscript",
            "--fused-steps",
            "2",
            "--name",
            "vel2",
            "--max-batch",
            "32",
            "--opt-batch",
            "4",
        ],
        capsys,
    )
    assert code == 0, stdout
    assert (tmp_path / "repo" / "vel2" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "vel2" / "1" / "model.onnx").is_file()
    assert "model repository" in stdout


def _corrupt_config(src, dst):
    shutil.copytree(src, dst)
    (dst / "config.json").write_text("{not json")
    return dst


def _corrupt_weights(src, dst):
    shutil.copytree(src, dst)
    (dst / "model.safetensors").write_bytes(b"\x00garbage")
    return dst


def _wrong_kind(src, dst):
    shutil.copytree(src, dst)
    text = (dst / "config.json").read_text().replace('"time_inputs": 2', '"time_inputs": 1')
    (dst / "config.json").write_text(text.replace('"kind": "flowmap"', '"kind": "velocity"'))
    return dst


@pytest.mark.parametrize(
    "case, extra, fragment",
    [
        ("missing", [], "does not exist"),
        ("corrupt_config", [], "not valid JSON"),
        ("corrupt_weights", [], "safetensors"),
        ("wrong_kind", [], "config.json implies"),
        ("ok", ["--format", "pytorch"], "--format 'pytorch' is not supported"),
        ("ok", ["--min-batch", "8", "--opt-batch", "4"], "does not contain the example batch"),
        (
            "ok",
            ["--min-batch", "8", "--max-batch", "2", "--opt-batch", "8"],
            "batch range is empty",
        ),
        ("ok", ["--opset", "13"], "--opset must be an integer >= 17"),
        ("ok", ["--fused-steps", "2", "--grid", "0,0.5,0.75,1"], "disagrees"),
        ("ok", ["--grid", "0,0.7,0.2,1"], "strictly increase"),
        ("ok", ["--grid", "0,a,1"], "comma-separated"),
        ("ok", ["--fused-steps", "0"], "--fused-steps must be an integer"),
        ("ok", ["--timing-cache", "x.cache"], "only applies to --format tensorrt"),
        ("ok", ["--format", "triton", "--fp16"], "--fp16 does not apply"),
        ("ok", ["--plan", "somewhere"], "only applies to --format triton"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    model_dirs,  # noqa: F811
    tmp_path,
    capsys,
    case,
    extra,
    fragment,
):
    src = model_dirs["flowmap"]
    md = {
        "missing": lambda: tmp_path / "no_such_model",
        "corrupt_config": lambda: _corrupt_config(src, tmp_path / "bad_cfg"),
        "corrupt_weights": lambda: _corrupt_weights(src, tmp_path / "bad_w"),
        "wrong_kind": lambda: _wrong_kind(src, tmp_path / "bad_kind"),
        "ok": lambda: src,
    }[case]()
    out = tmp_path / "out" / "artifact"
    code, stdout, stderr = run_cli(
        [str(md), "--out", str(out), "--exporter", "torchscript", *extra], capsys
    )
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0]
    assert not out.exists() and not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_existing_output_is_kept_without_overwrite(model_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, stderr = run_cli(
        [str(model_dirs["flowmap"]), "--out", str(out), "--exporter", "torchscript"], capsys
    )
    assert code == 2 and "--overwrite" in stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, _, _ = run_cli(
        [
            str(model_dirs["flowmap"]),
            "--out",
            str(out),
            "--exporter",
            "torchscript",
            "--overwrite",
            "--max-batch",
            "8",
            "--opt-batch",
            "4",
        ],
        capsys,
    )
    assert code == 0 and sorted(p.name for p in out.iterdir()) == [
        "anystep-export.json",
        "model.onnx",
    ]
    assert leftovers(tmp_path) == []


def test_failed_parity_exits_1_and_writes_nothing(model_dirs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "strict"
    code, _, stderr = run_cli(
        [
            str(model_dirs["flowmap"]),
            "--out",
            str(out),
            "--exporter",
            "torchscript",
            "--atol",
            "1e-12",
            "--rtol",
            "0",
            "--max-batch",
            "8",
            "--opt-batch",
            "4",
        ],
        capsys,
    )
    # float32 ONNX Runtime and PyTorch differ by ~1e-7: a 1e-12 tolerance must fail
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "exceeds atol=1e-12" in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []
