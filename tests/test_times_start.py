"""``start_frac`` of the time sampler: rows with s at an end of [0, 1] (the one-step map's X_{0,t})."""

from __future__ import annotations

import pytest
import torch

from anystep.training.times import TimeError, TimeSampler


def test_zero_start_frac_draws_exactly_what_the_sampler_drew_before():
    a = TimeSampler().sample(256, torch.Generator().manual_seed(3))
    b = TimeSampler(start_frac=0.0).sample(256, torch.Generator().manual_seed(3))
    assert torch.equal(a.s, b.s) and torch.equal(a.t, b.t)


def test_start_rows_follow_the_diagonal_rows():
    pair = TimeSampler(diag_frac=0.25, start_frac=0.5).sample(400, torch.Generator().manual_seed(0))
    assert pair.n_diag == 100 and torch.equal(pair.s[:100], pair.t[:100])
    s, t = pair.s[100:300], pair.t[100:300]
    assert torch.all(s == 0) and torch.all((t >= 0) & (t <= 1)) and t.std() > 0.2  # t spread over [0, 1]
    rest = pair.s[300:], pair.t[300:]
    assert torch.all(rest[0] <= rest[1]) and (rest[0] > 0).all()  # forward pairs, uniform on the triangle


def test_both_directions_start_at_either_end():
    pair = TimeSampler(start_frac=0.5, forward_only=False).sample(200, torch.Generator().manual_seed(0))
    s, t = pair.s[:100], pair.t[:100]
    assert set(s.tolist()) == {0.0, 1.0}
    assert torch.all(t[s == 1] <= 1) and torch.all(t[s == 0] >= 0)


@pytest.mark.parametrize("kw", [{"start_frac": 1.0}, {"start_frac": -0.1}, {"start_frac": 0.6, "diag_frac": 0.5}])
def test_bad_start_frac_is_refused(kw):
    with pytest.raises(TimeError, match="start_frac"):
        TimeSampler(**kw)


def test_lmd_takes_start_frac_as_an_objective_hyperparameter():
    from anystep.core.config import InterpolantConfig
    from anystep.core.interpolants import build_interpolant
    from anystep.training.distill import LMD

    obj = LMD(build_interpolant(InterpolantConfig()), start_frac=0.5)
    pair = obj.times.sample(64, torch.Generator().manual_seed(0))
    assert (pair.s == 0).sum() >= 32
