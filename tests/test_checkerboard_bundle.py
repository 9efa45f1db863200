"""The bundled checkerboard map (models/checkerboard): how it is chosen and written, and that the
server's /encode inverts it (issue 13 item 5; benchmarks/checkerboard_bundle[_train].py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anystep.benchmarks.checkerboard_bundle import bundled_one_step_kl
from anystep.benchmarks.checkerboard_bundle_train import STAGES, round_trip_errors, stage_config
from anystep.core.data import get_dataset
from anystep.core.modeldir import load_model_dir

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "checkerboard"


class _Shift(nn.Module):
    """``X_{s,t}(x) = x + (t - s) c``: exact two-time map (X_{1,0} inverts X_{0,1})."""

    def __init__(self, bend: float = 0.0) -> None:
        super().__init__()
        self.c = torch.tensor([0.5, -1.0]) if bend == 0 else torch.zeros(2)
        self.bend = bend  # > 0: X_{s,t}(x) = (1 + bend |t - s|) x, which does not invert

    def forward(self, x, s, t):
        return x + (t - s)[:, None] * self.c + self.bend * (t - s).abs()[:, None] * x


def test_round_trip_errors_vanish_for_an_exact_inverse_and_not_otherwise():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    for k in (1, 4):
        exact = round_trip_errors(_Shift(), x0, x1, k)
        assert exact["steps"] == k and exact["n"] == 500
        assert exact["encode_generate_max"] < 1e-5 and exact["generate_encode_max"] < 1e-5
    bent = round_trip_errors(_Shift(bend=0.2), x0, x1, 1)
    # (1 + 0.2)^2 x: the error is 0.44 |x| per sample
    assert bent["encode_generate_mean"] == pytest.approx(0.44 * float(x1.norm(dim=1).mean()), rel=1e-4)
    assert bent["encode_generate_max"] >= bent["encode_generate_p99"] >= bent["encode_generate_mean"] > 0
    assert bent["encode_generate_mse"] == pytest.approx(0.44**2 * float(x1.pow(2).sum(1).mean()), rel=1e-4)


def test_a_better_bundled_map_is_recognised_only_against_the_same_teacher(tmp_path):
    d = tmp_path / "checkerboard"
    assert bundled_one_step_kl(d, "abc") is None  # nothing bundled yet
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"provenance": {"teacher_sha256": "abc",
                                                              "benchmark_scores": {"K=1": {"kl": 0.2}}}}))
    assert bundled_one_step_kl(d, "abc") == 0.2
    assert bundled_one_step_kl(d, "other") is None  # scored against another teacher: not comparable
    assert bundled_one_step_kl(d, None) is None


def test_bundle_stages_train_both_directions_with_the_lever():
    first, last, ft = (stage_config(STAGES[s]) for s in ("ff_both_start", "ff_both_start_xl", "ff_both_start_xl_ft"))
    for cfg in (first, last, ft):
        assert cfg.objective == "lmd" and cfg.objective_hparams["forward_only"] is False
        assert cfg.objective_hparams["start_frac"] == (0.25 if cfg is ft else 0.5)
        assert (cfg.model.backbone.x_features, cfg.model.backbone.x_feature_scale) == (64, 1.0)
        assert cfg.teacher == "runs/checkerboard/si" and cfg.ckpt_every == 500
    assert first.init_from == "runs/checkerboard/si" and first.max_steps == 1000
    assert last.init_from == "runs/cb_bundle/ff_both_start" and last.lr == 5e-4 and last.max_steps > 1000
    assert ft.init_from == "runs/cb_bundle/ff_both_start_xl"
    xxl = stage_config(STAGES["ff_both_start_xxl"])  # the bundled stage: the lever's 12000-step continuation
    assert xxl.init_from == "runs/cb_bundle/ff_both_start_xl" and (xxl.max_steps, xxl.lr) == (12000, 3e-4)
    assert xxl.objective_hparams == last.objective_hparams and xxl.model == last.model
    from anystep.benchmarks.checkerboard_bundle_train import DEFAULT_STAGES, FINAL

    assert DEFAULT_STAGES[-1] == FINAL == "ff_both_start_xxl"  # `train` then `bundle` makes the bundled map


def test_the_server_encodes_board_samples_that_the_map_generates_back():
    """/encode (X_{1,0}, one step) on exact board samples, then X_{0,1} of the returned z: back near
    the samples (the round trip in benchmarks/results/checkerboard_bundle.md), and z looks like the base."""
    from fastapi.testclient import TestClient

    from anystep.core.samplers import sample_flowmap
    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import ModelSpec

    x1 = get_dataset("checkerboard").sample(1000, torch.Generator().manual_seed(1)).float()
    app = create_app(ServerConfig(models=[ModelSpec("cb", str(MODEL))], engine="torch"))
    with TestClient(app) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.05)
        r = c.post("/encode", json={"model": "cb", "x": x1.tolist(), "steps": 1})
    assert r.status_code == 200, r.text
    z = torch.tensor(r.json()["z"])
    assert z.shape == (1000, 2) and torch.isfinite(z).all()
    assert float(z.mean(0).abs().max()) < 0.15 and 0.8 < float(z.var(0).min()) <= float(z.var(0).max()) < 1.2
    with torch.no_grad():
        back = sample_flowmap(load_model_dir(MODEL).model, z, steps=1).x
    err = (back - x1).norm(dim=1)
    assert float(err.mean()) < 0.2, f"mean round-trip error {float(err.mean()):.3f}"
    assert float(err.median()) < 0.1


def test_bundled_map_exports_to_onnx_with_parity_in_both_directions(tmp_path):
    pytest.importorskip("onnxruntime")
    from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session

    res = export_onnx(MODEL, tmp_path / "onnx", OnnxOptions(exporter="torchscript"))  # checks parity itself
    sess = ort_session(res.artifact)
    model = load_model_dir(MODEL).model.eval()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(3)) * 1.5
    for s0, t0 in ((0.0, 1.0), (1.0, 0.0), (0.25, 0.75), (0.9, 0.1)):  # /generate's and /encode's maps
        s, t = torch.full((256,), s0), torch.full((256,), t0)
        y = sess.run(None, {"x": x.numpy(), "s": s.numpy(), "t": t.numpy()})[0]
        with torch.no_grad():
            ref = model(x, s, t).numpy()
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def _with_provenance(src: Path, dest: Path, prov: dict) -> Path:
    from anystep.core.config import ModelConfig
    from anystep.core.modeldir import save_model_dir

    lm = load_model_dir(src)
    return save_model_dir(dest, lm.model, ModelConfig.from_dict({**lm.config.to_dict(), "provenance": prov}))


def test_a_benchmark_rerun_keeps_a_better_bundled_map_and_replaces_a_worse_one(tmp_path):
    """bundle_models (python -m anystep.benchmarks.checkerboard) does not put a worse map over a better one
    trained against the same teacher; against another teacher, or when worse, the new map is written."""
    from anystep.benchmarks.checkerboard_bundle import bundle_models
    from anystep.benchmarks.checkerboard_methods import METHODS
    from anystep.core.modeldir import model_dir_sha256
    from anystep.server.testing import make_tiny_models

    tiny = make_tiny_models(tmp_path / "tiny", seed=1, digits=False)
    work, bundle = tmp_path / "runs", tmp_path / "models"
    _with_provenance(tiny["checkerboard-teacher"], work / "si", {"preset": "checkerboard-velocity"})
    _with_provenance(tiny["checkerboard"], work / "lmd_both_xl",
                     {"preset": "checkerboard-lmd", "teacher": str(work / "si"), "teacher_sha256": "T"})
    new = {"K=1": {"kl": 0.3}}
    bundled_better = {"teacher_sha256": "T", "method": "lever", "benchmark_scores": {"K=1": {"kl": 0.1}}}
    _with_provenance(tiny["checkerboard"], bundle / "checkerboard", bundled_better)
    said = []
    out = bundle_models(bundle, METHODS["lmd_both_xl"], work, "python -m x", new, {}, log=said.append)
    assert load_model_dir(bundle / "checkerboard").config.provenance["method"] == "lever"
    assert said and "kept" in said[0] and (bundle / "checkerboard-teacher" / "config.json").is_file()
    assert set(out) == {"checkerboard", "checkerboard-teacher"}
    # another teacher: the scores are not comparable, the benchmark's map is written
    _with_provenance(tiny["checkerboard"], bundle / "checkerboard", {**bundled_better, "teacher_sha256": "U"})
    bundle_models(bundle, METHODS["lmd_both_xl"], work, "python -m x", new, {}, log=said.append)
    prov = load_model_dir(bundle / "checkerboard").config.provenance
    assert prov["method"] == "lmd_both_xl" and prov["teacher"] == "models/checkerboard-teacher"
    assert prov["source_run_sha256"] == model_dir_sha256(work / "lmd_both_xl")
    assert not any(str(v).startswith("/") for v in prov.values())
    # a worse bundled map is replaced
    _with_provenance(tiny["checkerboard"], bundle / "checkerboard",
                     {**bundled_better, "benchmark_scores": {"K=1": {"kl": 0.5}}})
    bundle_models(bundle, METHODS["lmd_both_xl"], work, "python -m x", new, {}, log=said.append)
    assert load_model_dir(bundle / "checkerboard").config.provenance["method"] == "lmd_both_xl"


def test_the_benchmark_report_names_the_map_the_bundle_holds(tmp_path):
    """bundled_map says whether a rerun kept a better map; the report then names that map, not the run's."""
    from anystep.benchmarks.checkerboard_bundle import bundle_models, bundled_map
    from anystep.benchmarks.checkerboard_methods import METHODS
    from anystep.benchmarks.checkerboard_report import render_markdown
    from anystep.server.testing import make_tiny_models

    tiny = make_tiny_models(tmp_path / "tiny", seed=1, digits=False)
    work, bundle = tmp_path / "runs", tmp_path / "models"
    _with_provenance(tiny["checkerboard-teacher"], work / "si", {"preset": "checkerboard-velocity"})
    _with_provenance(tiny["checkerboard"], work / "lmd_both_xl",
                     {"preset": "checkerboard-lmd", "teacher": str(work / "si"), "teacher_sha256": "T"})
    lever = {"teacher_sha256": "T", "method": "lever", "method_label": "the lever map", "benchmark": "bundle_train",
             "source_run_sha256": "L", "benchmark_scores": {"K=1": {"kl": 0.1}}}
    _with_provenance(tiny["checkerboard"], bundle / "checkerboard", lever)
    for kl, kept in ((0.3, True), (0.05, False)):  # worse than the bundled map: kept; better: replaced
        bundle_models(bundle, METHODS["lmd_both_xl"], work, "python -m x", {"K=1": {"kl": kl}}, {}, log=print)
        rec = bundled_map(bundle / "checkerboard", work / "lmd_both_xl")
        assert rec["kept"] is kept
        assert rec["method"] == ("lever" if kept else "lmd_both_xl")
        res = json.loads((REPO / "benchmarks/results/checkerboard.json").read_text())  # a real run's results
        res["bundled"] = {"checkerboard": "models/checkerboard", "checkerboard-teacher": "models/checkerboard-teacher",
                          **rec}
        res["goal"]["bundled_key"] = "lmd_both_xl"
        md = render_markdown(res, [METHODS[k] for k in res["settings"]["methods"]], None)
        line = next(ln for ln in md.splitlines() if ln.startswith("- `models/checkerboard`"))
        assert line.startswith("- `models/checkerboard`: " + ("the lever map, kept" if kept else METHODS["lmd_both_xl"].label))
        assert ("round trip of " + METHODS["lmd_both_xl"].label in line) is kept
