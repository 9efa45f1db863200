"""Fused K-step sampler graphs: x0 in, x1 out, equal to K calls of the single-step graph."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from test_export_common import model_dirs  # noqa: F401  (fixture)

from anystep.core.modeldir import load_model_dir
from anystep.core.samplers import GridError, sample_flowmap
from anystep.core.solvers import solve_fixed
from anystep.export.common import BatchRange, ExportError
from anystep.export.fused import fused_grid
from anystep.export.onnx_export import OnnxOptions, export_onnx, ort_session

GRID = [0.0, 0.3, 0.7, 1.0]


@pytest.fixture(scope="module")
def flow_fused(model_dirs, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("fused")
    step = export_onnx(
        model_dirs["flowmap"],
        root / "step",
        OnnxOptions(exporter="torchscript", batch=BatchRange(1, 8, 64)),
    )
    fused = export_onnx(
        model_dirs["flowmap"], root / "fused", OnnxOptions(grid=GRID, batch=BatchRange(1, 8, 64))
    )  # default exporter (dynamo first)
    return step, fused


def test_fused_graph_signature_and_manifest(flow_fused):
    _, fused = flow_fused
    g = onnx.load(str(fused.artifact))
    assert [i.name for i in g.graph.input] == ["x0"] and [o.name for o in g.graph.output] == ["x1"]
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    m = fused.manifest
    assert m.graph == "fused" and m.fused_steps == 3 and m.grid == GRID and m.nfe == 3
    assert m.tolerance.reference == "onnx-step-graph" and m.tolerance.max_rel_err <= 1.0
    assert "torch" in m.tolerance.other_references
    assert m.tolerance.time_pairs == [[0.0, 0.3], [0.3, 0.7], [0.7, 1.0]]


@pytest.mark.parametrize("B", [1, 3, 64, 7])
def test_fused_equals_k_calls_of_the_step_graph(flow_fused, model_dirs, B):  # noqa: F811
    step, fused = flow_fused
    step_sess, fused_sess = ort_session(step.artifact), ort_session(fused.artifact)
    x0 = np.random.default_rng(B).standard_normal((B, 2)).astype(np.float32)
    x = x0
    for s, t in itertools.pairwise(GRID):
        x = step_sess.run(
            None, {"x": x, "s": np.full(B, s, np.float32), "t": np.full(B, t, np.float32)}
        )[0]
    y = fused_sess.run(None, {"x0": x0})[0]
    np.testing.assert_allclose(y, x, atol=1e-4, rtol=1e-4)
    # and the PyTorch sampler on the same grid
    model = load_model_dir(model_dirs["flowmap"]).model
    ref = sample_flowmap(model, torch.from_numpy(x0), grid=GRID).x.numpy()
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    assert np.abs(y - x0).max() > 1e-2  # the sampler moved the points


def test_fused_velocity_rk4_matches_the_solver(model_dirs, tmp_path):  # noqa: F811
    res = export_onnx(
        model_dirs["velocity"],
        tmp_path / "vk2",
        OnnxOptions(
            exporter="torchscript", fused_steps=2, solver="rk4", batch=BatchRange(1, 4, 16)
        ),
    )
    m = res.manifest
    assert m.kind == "velocity" and m.solver == "rk4" and m.nfe == 8 and m.grid == [0.0, 0.5, 1.0]
    model = load_model_dir(model_dirs["velocity"]).model
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    ref = solve_fixed(model, x0, 0.0, 1.0, method="rk4", steps=2).x.detach().numpy()
    y = ort_session(res.artifact).run(None, {"x0": x0.numpy()})[0]
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "steps, grid, err",
    [
        (0, None, ExportError),
        (1000, None, ExportError),
        (None, [0.0, 0.6, 0.5, 1.0], GridError),
        (None, [0.1, 1.0], GridError),
        (2, [0.0, 0.5, 0.75, 1.0], ExportError),
    ],
)
def test_bad_fused_steps_or_grid_are_rejected(steps, grid, err):
    with pytest.raises(err):
        fused_grid(steps, grid)
