"""Tests of the checkerboard benchmark (benchmarks/checkerboard.py) and the bundled 2D models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anystep.benchmarks import checkerboard as cb
from anystep.benchmarks.common import command_line, fmt, machine_info, markdown_table, write_results
from anystep.core.data import checkerboard_density, get_dataset
from anystep.core.metrics import kl_divergence_2d
from anystep.core.modeldir import load_model_dir

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "checkerboard"
TEACHER = REPO / "models" / "checkerboard-teacher"
# E|X_10(X_01(x0)) - x0|^2 relative to E|x0|^2 = 2; measured when bundled: 0.006 / 2 = 0.003 on 20,000 points
# (benchmarks/results/checkerboard_bundle.md; the previous bundled map: 0.027 / 2)
ROUND_TRIP_MAX = 0.01


# --------------------------------------------------------------------------------------
# bundled models (fast)
# --------------------------------------------------------------------------------------


def _kl50(x: np.ndarray) -> float:
    # 50 x 50 cells: the estimator's floor at 20,000 samples is about 0.04 nats
    return kl_divergence_2d(None, x, bins=50, target_density=checkerboard_density)


def test_bundled_models_load_and_record_provenance():
    from anystep.core.modeldir import load_model_dir

    flow = load_model_dir(MODEL)
    teacher = load_model_dir(TEACHER)
    assert flow.config.kind == "flowmap" and flow.config.dataset == "checkerboard"
    assert teacher.config.kind == "velocity" and teacher.config.dataset == "checkerboard"
    prov = flow.config.provenance
    assert prov["preset"].startswith("checkerboard-")
    assert prov["steps"] >= 1 and prov["objective"] in cb.METHODS
    assert "anystep.benchmarks.checkerboard" in prov["benchmark_command"]
    assert teacher.config.provenance["preset"] == "checkerboard-velocity"
    for d in (MODEL, TEACHER):
        size = sum(f.stat().st_size for f in d.iterdir())
        assert size < 8 * 2**20, f"{d} is {size / 2**20:.1f} MiB; bundled models must stay small"
    # trained on both time directions, so /encode (X_{1,0}) may use it
    assert flow.config.time_region == "both" and prov["objective_hparams"]["forward_only"] is False
    assert prov["teacher"] == "models/checkerboard-teacher" and prov["teacher_sha256"]


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_bundled_configs_and_results_hold_no_absolute_paths():
    results = REPO / "benchmarks" / "results"
    files = [MODEL / "config.json", TEACHER / "config.json", *sorted(results.glob("checkerboard*.json"))]
    for f in files:
        bad = [v for v in _strings(json.loads(f.read_text())) if v.startswith(("/work", "/tmp", "/root", "/home"))
               or (v.startswith("/") and "/" in v[1:] and " " not in v)]
        assert not bad, f"{f.name} holds absolute paths: {bad[:3]}"


def test_bundled_map_inverts_itself():
    """X_{1,0}(X_{0,1}(x0)) ~ x0: the map is trained on both directions (the round trip /encode relies on)."""
    from anystep.core.modeldir import load_model_dir

    model = load_model_dir(MODEL).model
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(5000, 2, generator=g)
    zero, one = torch.zeros(5000), torch.ones(5000)
    with torch.no_grad():
        x1 = model(x0, zero, one)
        back = model(x1, one, zero)
    err = float((back - x0).pow(2).sum(1).mean())
    spread = float(x0.pow(2).sum(1).mean())  # 2: the error of mapping everything to 0
    assert err < ROUND_TRIP_MAX * spread, f"round trip error {err:.4f}"


def test_bundled_flowmap_against_its_sharp_ode_teacher(tmp_path):
    """One and four steps of the bundled map against the teacher's dopri5 KL (20,000 points, 50x50 cells).

    Measured when bundled (``python -m anystep.benchmarks.checkerboard_bundle_train bundle``) on this
    estimator: 1.84x at one step, 1.65x at four (the previous bundled map: 7.8x and 1.4x); the
    bounds leave room for sampling noise, not for a worse map. The issue's goal (1.5x at one
    step) is not met at this budget against a teacher this sharp.
    """
    from click.testing import CliRunner

    from anystep.core.api import generate
    from anystep.core.cli_sample import sample

    out = tmp_path / "cb.npy"
    res = CliRunner().invoke(sample, [str(MODEL), "--steps", "1", "-n", "20000", "--seed", "7", "--out", str(out)])
    assert res.exit_code == 0, res.output
    x = np.load(out)
    assert x.shape == (20000, 2) and np.isfinite(x).all()
    kl_map = _kl50(x)
    kl_map4 = _kl50(generate(MODEL, n=20000, seed=7, steps=4).x.numpy())
    kl_teacher = _kl50(generate(TEACHER, n=20000, seed=7, solver="dopri5", rtol=1e-4).x.numpy())
    x0 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(7)).numpy()
    assert kl_map < 0.3 * _kl50(x0), "the bundled map barely moves the base noise"
    assert kl_map <= 3 * kl_teacher, f"one-step KL {kl_map:.3f} vs teacher {kl_teacher:.3f}"
    assert kl_map4 <= 2 * kl_teacher, f"four-step KL {kl_map4:.3f} vs teacher {kl_teacher:.3f}"
    assert kl_teacher < 0.1, f"the bundled teacher is not sharp: KL {kl_teacher:.3f} on this estimator"
    assert float(np.mean(checkerboard_density(x) <= 0)) < 0.15


def test_bundled_map_one_step_follows_the_teacher_coupling():
    from anystep.core.api import generate

    x = generate(TEACHER, n=4000, seed=3, solver="dopri5", rtol=1e-4).x.numpy()
    assert np.isfinite(x).all()
    assert float(np.mean(checkerboard_density(x) <= 0)) < 0.25
    y = generate(MODEL, n=4000, seed=3, steps=1).x.numpy()
    # coupling L2 (paper Table 3): the distilled map sends each x0 near the teacher's ODE endpoint
    coupling = np.mean(np.sum((x - y) ** 2, axis=1))
    independent = np.mean(np.sum((x - np.roll(y, 1, axis=0)) ** 2, axis=1))
    assert coupling < 0.25 * independent


# --------------------------------------------------------------------------------------
# pieces of the benchmark (fast)
# --------------------------------------------------------------------------------------


def test_resolve_methods_adds_dependencies_in_order():
    keys = [s.key for s in cb.resolve_methods("pfmm")]
    assert keys == ["si_pre", "si", "fmm4", "pfmm"]  # the two-stage teacher, FMM N=4 (PFMM's teacher)
    keys = [s.key for s in cb.resolve_methods(["ayf_lmd", "lsd"])]
    assert keys == ["si_pre", "si", "lsd", "ayf_lmd"]
    assert [s.key for s in cb.resolve_methods(None)] == ["si_pre", *cb.DEFAULT_METHODS]
    assert {"ee_naive", "denoiser"} <= {s.key for s in cb.resolve_methods("all+controls")}
    with pytest.raises(cb.BenchmarkError, match="unknown method 'nope'"):
        cb.resolve_methods("lmd,nope")


def test_train_configs_share_one_budget(tmp_path):
    s = cb.Settings(width=32, depth=2, steps=50, batch_size=64, lr=3e-3, quick=True)  # quick: no per-method budget
    cfgs = {spec.key: cb.build_train_config(spec, s, tmp_path) for spec in cb.resolve_methods("all+controls")}
    for key, cfg in cfgs.items():
        assert (cfg.model.backbone.width, cfg.model.backbone.depth) == (32, 2), key
        assert (cfg.max_steps, cfg.batch_size, cfg.lr, cfg.seed) == (50, 64, 3e-3, 0), key
        assert cfg.lr_schedule == "cosine" and cfg.eval_every < 0
    assert cfgs["si"].model.kind == "velocity" and cfgs["si"].teacher is None
    assert cfgs["lmd"].teacher == str(tmp_path / "si")
    assert cfgs["pfmm"].teacher == str(tmp_path / "fmm4") and cfgs["pfmm"].init_from == str(tmp_path / "fmm4")
    assert cfgs["fmm4"].objective_hparams["window"] == 4 and cfgs["fmm1"].objective_hparams["window"] == 1
    assert cfgs["ee_naive"].objective == "ee_naive" and cfgs["denoiser"].objective == "denoiser"
    # every map starts from the teacher (v_st = b_s needs the residual ansatz); lmd_both trains both directions
    for key in ("lmd", "lmd_both", "emd", "fmm1", "fmm4", "ee", "lsd", "esd", "psd", "ayf_emd", "ayf_lmd"):
        assert cfgs[key].init_from == str(tmp_path / "si") and cfgs[key].model.ansatz == "residual", key
    assert cfgs["lmd_both"].objective_hparams["forward_only"] is False
    assert cfgs["ayf_lmd"].objective_hparams["adaptive"] is True and cfgs["ee"].coupling == "minibatch_ot"
    # full runs: the teacher has its own schedule (two stages), PSD 3x the steps
    full = cb.Settings(width=32, depth=2, steps=50, batch_size=64, lr=3e-3)
    si_pre = cb.build_train_config(cb.METHODS["si_pre"], full, tmp_path)
    si = cb.build_train_config(cb.METHODS["si"], full, tmp_path)
    assert si_pre.max_steps == 30_000 and cb.METHODS["si_pre"].until == 13_000 and si.init_from == str(tmp_path / "si_pre")
    assert si.objective_hparams["time_kind"] == "logit_normal" and si.batch_size == 2048
    assert cb.build_train_config(cb.METHODS["psd"], full, tmp_path).max_steps == 3000
    assert cb.build_train_config(cb.METHODS["lmd"], full, tmp_path).max_steps == 50


def test_longer_budget_rows_continue_the_shared_budget_rows(tmp_path):
    full = cb.Settings(width=32, depth=2, steps=50, batch_size=64, lr=3e-3)
    cfg = {k: cb.build_train_config(cb.METHODS[k], full, tmp_path) for k in ("lmd_both_xl", "lmd_xl", "fmm4_xl", "pfmm_xl")}
    # each continues its shared-budget row (its checkpoint is the warm start), checkpoints every 500 steps
    assert cfg["lmd_both_xl"].init_from == str(tmp_path / "lmd_both_long")
    assert cfg["lmd_both_xl"].objective_hparams["forward_only"] is False  # still invertible (bundle candidate)
    assert cfg["lmd_xl"].init_from == str(tmp_path / "lmd") and cfg["fmm4_xl"].init_from == str(tmp_path / "fmm4")
    assert cfg["pfmm_xl"].teacher == cfg["pfmm_xl"].init_from == str(tmp_path / "fmm4_xl")
    assert [c.max_steps for c in cfg.values()] == [8000, 6000, 4000, 5000]
    assert all(c.ckpt_every == 500 and c.batch_size == 64 for c in cfg.values())
    # an interrupted full run trains the shared-budget rows before the long ones
    order = cb.train_order([s.key for s in cb.resolve_methods(None)])
    assert order.index("lmd_both_long") < order.index("lmd_both_xl") < order.index("fmm1") < order.index("lmd_xl")
    assert order.index("fmm4") < order.index("fmm4_xl") < order.index("pfmm_xl")


def test_train_only_trains_and_writes_no_results(tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--quick", "--steps", "3", "--methods", "lmd", "--jobs", "1", "--threads", "1", "--train-only",
            "--out", str(out), "--work-dir", str(runs)]
    assert cb.main(argv) == 0
    assert not out.exists()
    assert all((runs / k / "model.safetensors").is_file() for k in ("si_pre", "si", "lmd"))
    capsys.readouterr()
    assert cb.main(argv) == 0  # a second call reuses every finished run
    assert capsys.readouterr().out.count("reusing the finished run") == 3
    # the loss spread at a finished run's final weights (is a late rise in its log noise or divergence?)
    from anystep.benchmarks.checkerboard_loss_spread import loss_spread

    res = loss_spread(runs / "lmd", batches=3)
    assert res["n"] == 3 and np.isfinite(res["loss_mean"]) and res["loss_min"] <= res["loss_max"]
    with pytest.raises(FileNotFoundError, match="no finished model"):
        loss_spread(tmp_path / "nothing")


def test_eval_cache_keys_on_weights_teacher_and_settings(tmp_path):
    from anystep.benchmarks.checkerboard_cache import EvalCache, metrics_from_json, metrics_to_json
    from anystep.benchmarks.checkerboard_eval import StepMetrics

    for name, data in (("si", b"teacher"), ("a", b"weights a"), ("b", b"weights b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(data)
    s = cb.Settings()
    cache = EvalCache(tmp_path / "cache", tmp_path / "si", s)
    ka = cache.key("row", tmp_path / "a")
    assert ka != cache.key("row", tmp_path / "b") and ka != cache.key("teacher")
    assert ka != EvalCache(tmp_path / "cache", tmp_path / "a", s).key("row", tmp_path / "a")  # another teacher
    assert ka != EvalCache(tmp_path / "cache", tmp_path / "si", cb.Settings(n_samples=50_000)).key("row", tmp_path / "a")
    assert ka == EvalCache(tmp_path / "cache", tmp_path / "si", cb.Settings(steps=7)).key("row", tmp_path / "a")
    assert cache.load(ka) is None
    m = {1: StepMetrics(kl=0.5, kl_ratio=10.0, w2_target=0.1, w2_teacher=float("inf"), coupling_l2=None, outside=0.1)}
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    cache.save(ka, {"k1": x}, {"metrics": metrics_to_json(m), "bounds": None})
    arrays, info = cache.load(ka)
    np.testing.assert_array_equal(arrays["k1"], x)
    assert metrics_from_json(info["metrics"]) == m and cache.hits == [ka]
    (tmp_path / "cache" / f"{ka}.npz").write_bytes(b"broken")
    assert cache.load(ka) is None  # an unreadable entry is a miss, never an error


def test_register_method_adds_a_row(monkeypatch):
    from anystep.benchmarks import checkerboard_methods as cm

    monkeypatch.setattr(cm, "METHODS", dict(cm.METHODS))
    monkeypatch.setattr(cm, "DEFAULT_METHODS", list(cm.DEFAULT_METHODS))
    spec = cm.MethodSpec("my_obj", "Mine", "checkerboard-lmd", teacher="si")
    cm.register_method(spec)
    assert cm.METHODS["my_obj"] is spec and "my_obj" in cm.DEFAULT_METHODS
    assert [s.key for s in cm.resolve_methods("my_obj")] == ["si_pre", "si", "my_obj"]
    with pytest.raises(cm.BenchmarkError, match="already registered"):
        cm.register_method(spec)
    with pytest.raises(cm.BenchmarkError, match="register its teacher"):
        cm.register_method(cm.MethodSpec("x", "X", "checkerboard-lmd", teacher="nope"))
    assert cm.train_order(["esd", "lmd", "my_obj", "si"]) == ["si", "lmd", "esd", "my_obj"]


def test_rel_path_never_writes_absolute_paths(tmp_path):
    from anystep.benchmarks.checkerboard_bundle import _relative_provenance, rel_path

    assert rel_path("runs/checkerboard/si") == "runs/checkerboard/si"
    assert rel_path(Path.cwd() / "runs" / "x") == "runs/x"
    assert not rel_path("/somewhere/else/runs/lmd").startswith("/")
    prov = _relative_provenance({"teacher": str(Path.cwd() / "runs/si"), "train_config": {"init_from": "/a/b/c"},
                                 "steps": 3}, tmp_path)
    assert prov == {"teacher": "runs/si", "train_config": {"init_from": "b/c"}, "steps": 3}


def test_settings_reject_bad_values():
    with pytest.raises(cb.BenchmarkError, match="--steps"):
        cb.Settings(steps=0)
    with pytest.raises(cb.BenchmarkError, match="--n-samples"):
        cb.Settings(n_samples=10)


def test_score_samples_exact_data_vs_shifted_data():
    s = cb.Settings(n_samples=20000, w2_samples=300)
    ds = get_dataset("checkerboard")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 2, generator=g)
    ref = ds.sample(20000, g)
    ctx = cb.EvalContext(x0=x0, x_si=ref, target_w2=ds.sample(300, g).double().numpy(), settings=s, kl_teacher=0.5)
    good = cb.score_samples(ref, ctx)
    assert good.coupling_l2 == 0.0 and good.outside == 0.0
    assert good.kl_ratio == pytest.approx(good.kl / 0.5)
    bad = cb.score_samples(ref + torch.tensor([2.0, 0.0]), ctx)  # shifted by one square: all off the board
    assert bad.outside > 0.9 and bad.kl > 10 * good.kl
    assert bad.coupling_l2 == pytest.approx(4.0, rel=1e-6) and bad.w2_target > good.w2_target
    with_nan = ref.clone()
    with_nan[0] = float("nan")
    m = cb.score_samples(with_nan, ctx)
    assert m.coupling_l2 == float("inf") and m.outside >= 1 / 20000


def test_common_helpers(tmp_path):
    table = markdown_table(["a", "b"], [["x", 0.123456], ["y", None]])
    assert table.splitlines()[2] == "| x | 0.123 |" and table.splitlines()[3] == "| y | - |"
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a"], [[1, 2]])
    assert fmt(float("nan")) == "-" and fmt(12345.0) == "1.23e+04" and fmt(3) == "3"
    paths = write_results(tmp_path / "r", "demo", {"x": np.float32(1.5), "p": Path("a/b"), "bad": float("inf")}, "# hi")
    assert json.loads(paths.json.read_text()) == {"x": 1.5, "p": "a/b", "bad": None}
    assert paths.markdown.read_text() == "# hi\n"
    with pytest.raises(ValueError):
        write_results(tmp_path, "a/b", {}, "")
    info = machine_info()
    assert info.cores >= 1 and info.torch_version == torch.__version__ and info.cpu_model
    assert "cores" in info.describe()
    assert command_line(["--quick", "a b"], module="m") == "python -m m --quick 'a b'"


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        cb.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--quick", "--steps", "--width", "--depth", "--out", "--methods", "--n-samples", "--seed"):
        assert opt in text
    assert "models/checkerboard" in text


def test_bad_options_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cb.main(["--methods", "nope"])
    assert e.value.code == 2
    assert "unknown method" in capsys.readouterr().err


def test_notes_block_survives_regeneration(tmp_path):
    md = tmp_path / "checkerboard.md"
    md.write_text(f"# old\n{cb.NOTES_BEGIN}\nwe tried X\n{cb.NOTES_END}\n")
    assert cb.existing_notes(md) == "we tried X"
    assert cb.existing_notes(tmp_path / "missing.md") is None


# --------------------------------------------------------------------------------------
# the whole benchmark (slow)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_writes_results_figures_and_sane_numbers(tmp_path):
    out = tmp_path / "results"
    rc = cb.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "checkerboard.json").read_text())
    md = (out / "checkerboard.md").read_text()
    assert set(res["methods"]) == set(cb.DEFAULT_METHODS) - {"si"}
    assert res["settings"]["quick"] is True and res["bundled"] is None
    assert "--quick" in res["command"] and res["machine"]["cores"] >= 1
    t = res["teacher"]
    # dopri5 beats one Euler step of the same velocity
    assert t["dopri5"]["kl"] < t["euler"]["1"]["kl"]
    for key, m in res["methods"].items():
        for k in ("1", "2", "4", "8"):
            row = m["steps"][k]
            assert row["kl"] is not None and row["kl"] >= 0, key
            assert row["kl_ratio"] == pytest.approx(row["kl"] / t["dopri5"]["kl"]), key
    # blur equivalents next to every KL, both sides of Props. 3.7 / 3.8 for every map
    assert res["blur_curve"]["sigmas"][0] == 0.0 and len(res["blur_curve"]["kls"]) == 6
    # the --quick teacher (64x3, 300 + 300 steps, ~1 s) is far from sharp (KL ~3 on 20k points): the blur column
    # then says "> 0.3" (None), exactly when its KL is above the curve's widest blur; a number otherwise
    curve = res["blur_curve"]
    if t["dopri5"]["blur"] is None:
        assert t["dopri5"]["kl"] > curve["kls"][-1]
    else:
        assert 0.0 <= t["dopri5"]["blur"] <= curve["sigmas"][-1]
    for key, b in res["bounds"].items():
        assert b["lmd_holds"] and b["emd_holds"], (key, b)
    # the quick run trains forward-only and both-direction LMD; the round trip is measured for the latter
    bundled = res["goal"]["bundled_key"]  # /encode must invert it: a map trained on both time directions
    assert bundled in res["methods"] and load_model_dir(tmp_path / "runs" / bundled).config.time_region == "both"
    assert res["goal"]["round_trip"]["encode_decode"] < 1.0
    # a teacher-distilled one-step map lands on the board about as often as its (quick, blurry) teacher's dopri5
    assert abs(res["methods"]["lmd"]["steps"]["1"]["outside"] - t["dopri5"]["outside"]) < 0.1
    for f in ("checkerboard_fig3.png", "checkerboard_samples.png", "checkerboard_assignment.png",
              "checkerboard_coupling.png"):
        assert (out / f).stat().st_size > 10_000
    assert "## Table 3" in md and res["command"] in md and cb.NOTES_BEGIN in md
    # a second run reuses every finished training run
    rc = cb.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--threads", "1",
                  "--methods", "lmd", "--no-figures"])
    assert rc == 0
    res2 = json.loads((out / "checkerboard.json").read_text())
    assert all(tr["reused"] for tr in res2["training"].values())
    assert res2["timing"]["eval_cached"] == 2  # the teacher's dopri5 samples and the lmd row
    assert res2["methods"]["lmd"]["steps"]["1"]["kl"] == pytest.approx(res["methods"]["lmd"]["steps"]["1"]["kl"])


def test_a_quick_run_never_writes_the_committed_results_by_default():
    from anystep.benchmarks.common import REPO_ROOT, results_dir, run_cli

    assert results_dir("latency") == REPO_ROOT / "benchmarks" / "results"
    assert results_dir("latency", quick=True) == REPO_ROOT / "runs" / "latency-quick" / "results"
    seen = {}

    def run(settings, out_dir, command, log):
        seen["out"] = out_dir

    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    for argv, want in ((["--quick"], results_dir("load_nfe", True)), ([], results_dir("load_nfe")),
                       (["--quick", "--out", "x"], "x")):
        assert run_cli(argv, parser=p, settings_from_args=lambda a: None, run=run, module="anystep.benchmarks.load_nfe") == 0
        assert seen["out"] == want


def test_recorded_paths_are_relative_inside_the_working_directory(tmp_path, monkeypatch):
    from anystep.core.paths import recorded_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "si").mkdir(parents=True)
    assert recorded_path(tmp_path / "runs" / "si") == "runs/si"
    assert recorded_path("runs/si") == "runs/si"
    assert recorded_path("/elsewhere/deep/runs/lmd") == "runs/lmd"
    assert recorded_path(tmp_path / "runs" / "si", root=tmp_path / "runs") == "si"
