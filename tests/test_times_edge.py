"""``edge_frac`` of the time sampler: rows with the largest gap |t - s| = window (a K-step sampler's jumps)."""

from __future__ import annotations

import pytest
import torch

from anystep.training.times import TimeError, TimeSampler


def test_zero_edge_frac_draws_exactly_what_the_sampler_drew_before():
    kw = {"window": 0.25, "forward_only": False, "start_frac": 0.25}
    a = TimeSampler(**kw).sample(256, torch.Generator().manual_seed(3))
    b = TimeSampler(**kw, edge_frac=0.0).sample(256, torch.Generator().manual_seed(3))
    assert torch.equal(a.s, b.s) and torch.equal(a.t, b.t)


def test_edge_rows_follow_the_start_rows_and_jump_exactly_one_window():
    pair = TimeSampler(window=0.25, forward_only=False, diag_frac=0.25, start_frac=0.25, edge_frac=0.25).sample(
        400, torch.Generator().manual_seed(0))
    assert pair.n_diag == 100 and torch.equal(pair.s[:100], pair.t[:100])
    assert set(pair.s[100:200].tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}  # start rows: nodes of the 4-step grid
    assert (pair.t[100:200] - pair.s[100:200]).abs().max() <= 0.25 + 1e-6
    s, t = pair.s[200:300], pair.t[200:300]
    assert torch.allclose((t - s).abs(), torch.full((100,), 0.25), atol=1e-6)
    assert (t < s).any() and (t > s).any()  # both directions: the weight stays symmetric
    lo = torch.minimum(s, t)
    assert lo.min() >= 0 and lo.max() <= 0.75 + 1e-6 and lo.std() > 0.1  # spread over [0, 1 - window]
    rest = (pair.t[300:] - pair.s[300:]).abs()
    assert rest.max() <= 0.25 + 1e-6 and rest.std() > 0.03  # the band's interior, as before


def test_forward_only_edge_rows_go_forward():
    pair = TimeSampler(window=0.5, edge_frac=0.5).sample(100, torch.Generator().manual_seed(1))
    assert torch.allclose(pair.t[:50] - pair.s[:50], torch.full((50,), 0.5), atol=1e-6)


@pytest.mark.parametrize("kw", [{"edge_frac": 1.0}, {"edge_frac": -0.1},
                                {"edge_frac": 0.5, "start_frac": 0.3, "diag_frac": 0.3}])
def test_bad_edge_frac_is_refused(kw):
    with pytest.raises(TimeError, match="edge_frac"):
        TimeSampler(**kw)


def test_fmm_takes_edge_frac_and_the_family_objectives_refuse_it():
    from anystep.core.config import InterpolantConfig
    from anystep.core.interpolants import build_interpolant
    from anystep.training.flow_objective import ObjectiveError
    from anystep.training.fmm import FMM
    from anystep.training.meanflow import MeanFlow
    from anystep.training.shortcut import Shortcut

    interp = build_interpolant(InterpolantConfig())
    pair = FMM(interp, window=4, forward_only=False, edge_frac=0.5).times.sample(64, torch.Generator().manual_seed(0))
    assert torch.allclose((pair.t[:32] - pair.s[:32]).abs(), torch.full((32,), 0.25), atol=1e-6)
    for cls in (Shortcut, MeanFlow):
        with pytest.raises(ObjectiveError, match="edge_frac"):
            cls(interp, edge_frac=0.25)


def test_start_rows_of_a_window_begin_at_the_k_step_grid_and_stay_inside_it():
    pair = TimeSampler(window=0.25, forward_only=False, start_frac=0.5).sample(4000, torch.Generator().manual_seed(5))
    s, t = pair.s[:2000], pair.t[:2000]
    fwd, back = s[0::2], s[1::2]
    assert set(fwd.tolist()) == {0.0, 0.25, 0.5, 0.75} and set(back.tolist()) == {0.25, 0.5, 0.75, 1.0}
    assert (t[0::2] >= fwd).all() and (t[1::2] <= back).all()  # forward rows go up, backward rows down
    gap = (t - s).abs()
    assert gap.max() <= 0.25 + 1e-6 and abs(gap.mean().item() - 0.125) < 0.01  # uniform within the window
    counts = torch.bincount((fwd * 4).round().long(), minlength=4).float()
    assert counts.min() > 0.8 * counts.mean()  # every node drawn about equally often


def test_start_rows_without_a_window_are_unchanged():
    pair = TimeSampler(forward_only=False, start_frac=0.5).sample(200, torch.Generator().manual_seed(5))
    assert set(pair.s[:100].tolist()) == {0.0, 1.0} and pair.t[:100].std() > 0.2


def test_a_window_that_is_not_one_over_k_refuses_start_rows():
    with pytest.raises(TimeError, match="1/K"):
        TimeSampler(window=0.3, start_frac=0.5)
    TimeSampler(window=0.3)  # no start rows: any window
