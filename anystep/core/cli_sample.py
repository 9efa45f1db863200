"""``anystep sample`` and ``anystep data``: parse arguments, delegate to the core."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from anystep.errors import one_line


def _parse_grid(grid: str | None) -> list[float] | None:
    if grid is None:
        return None
    from anystep.core.grid import GridError, parse_grid

    try:
        return parse_grid(grid)
    except GridError as e:
        raise click.BadParameter(f"{e} (use comma-separated numbers, e.g. 0,0.5,1)", param_hint="--grid") from None


def _parse_list(text: str | None, kind: type, hint: str):
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"use {'integers' if kind is int else 'numbers'}, e.g. 7 or 1,2,3", param_hint=hint) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=hint)
    return values[0] if len(values) == 1 else values


def _check_out(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".npy", ".png"):
        raise click.BadParameter(f"{out!r}: the output must end in .npy or .png", param_hint="--out")
    return suffix


@click.command(context_settings={"max_content_width": 100})
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--steps", "-k", type=click.IntRange(min=1), default=None,
              help="Flow maps: number of steps K on a uniform grid (default 1; a map trained for some K only, e.g. "
                   "shortcut/consistency/PD, accepts only those: its config.json supported_steps). "
                   "Fixed-step solvers: number of steps (default 100).")
@click.option("--grid", default=None, help="Flow maps: custom times t0,...,tK from 0 to 1, e.g. 0,0.6,1.")
@click.option("--reverse", is_flag=True, help="Encode: run X_{1,0} (data -> base); needs --x0 with data.")
@click.option("--x0", "x0_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start points (.npy, model units) instead of fresh base noise.")
@click.option("--source", "source_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Translation maps (a data-set base, e.g. models/digits-restore): the source samples to map, .npy in "
                   "the base data set's units (noisy digits: grey levels), instead of sources drawn from the seed.")
@click.option("-n", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed+i: the same sample in any batch, to within 1e-5 in model "
                   "units (CPU kernels differ by batch size).")
@click.option("--solver", type=click.Choice(["euler", "heun", "rk4", "dopri5"]), default=None,
              help="Velocity models: ODE solver (default dopri5).")
@click.option("--nfe", type=click.IntRange(min=1), default=None, help="Fixed-step solvers: evaluation budget.")
@click.option("--rtol", type=float, default=None, help="dopri5 tolerance (default 1e-5); dopri5 only.")
@click.option("--units/--model-units", default=True, show_default=True,
              help=".npy in the data set's own units (digits: grey levels 0..16) or raw model units. With --reverse "
                   "the output is a base sample: Gaussian noise stays in model units (never clipped to data levels); "
                   "a translation map's base is written in its base data set's units.")
@click.option("--out", required=True, help="Output file: .npy (samples) or .png (scatter / image grid).")
@click.option("--class", "classes", default=None, metavar="C[,C...]",
              help="Class-conditional models: the class of every sample, or one per sample (comma-separated). "
                   "Default: any class, drawn from each sample's seed.")
@click.option("--guidance", default=None, metavar="W[,W...]",
              help="Class-conditional models: classifier-free guidance scale w (1 = no extra guidance, the default), "
                   "or one per sample. A map takes w as an input; a velocity model is run twice per evaluation.")
def sample(model_dir, steps, grid, reverse, x0_path, source_path, n, seed, solver, nfe, rtol, units, out, classes,
           guidance):
    """Sample MODEL_DIR: K flow-map steps, or an ODE solver for a velocity model.

    \b
    Examples:
      anystep sample models/checkerboard --steps 1 -n 5000 --out cb.png
      anystep sample models/digits-cond --class 7 --guidance 2 -n 16 --out sevens.png
      anystep sample models/digits-restore --source noisy.npy --out restored.npy
      anystep sample models/checkerboard --grid 0,0.5,1 --out cb.npy
      anystep sample models/checkerboard-teacher --solver dopri5 --out ode.png
    """
    import torch

    from anystep.core.api import generate

    suffix = _check_out(out)
    x0 = None
    if x0_path is not None:
        x0 = torch.from_numpy(np.load(x0_path, allow_pickle=False).astype(np.float32))
    if source_path is not None:
        model_dir, x0 = _source(model_dir, source_path, x0_path is not None or reverse)
    res = generate(
        model_dir, n=n, seed=seed, steps=steps, grid=_parse_grid(grid), reverse=reverse, x0=x0,
        solver=solver, nfe=nfe, rtol=rtol, classes=_parse_list(classes, int, "--class"),
        guidance=_parse_list(guidance, float, "--guidance"),
    )
    out_units = (_base_units(model_dir) if reverse else res.units) if units else None
    _write(out, suffix, res.x.numpy(), out_units)
    click.echo(f"wrote {out}: {tuple(res.x.shape)} samples, {res.method}, nfe={res.nfe}, {res.seconds * 1e3:.1f} ms")


def _base_units(model_dir):
    """``--reverse`` writes base samples: a data-set base's units (translation maps), none for Gaussian noise."""
    from anystep.core.modeldir import read_config
    from anystep.core.units import units_for

    cfg = read_config(model_dir)  # --reverse excludes --source, so this is still the path
    base = cfg.base or "gaussian"
    return None if base == "gaussian" else units_for(base, cfg.data_shape)


def _source(model_dir, source_path, conflict):
    """``--source``: the model (loaded once) and its sources in model units, or exit 2 saying what to fix."""
    import torch

    from anystep.core.modeldir import load_model_dir
    from anystep.core.units import UnitsError, units_for

    if conflict:
        raise click.BadParameter("give --source (translation sources) or --x0 / --reverse, not both", param_hint="--source")
    lm = load_model_dir(model_dir)
    base = lm.config.base or "gaussian"
    if base == "gaussian":
        raise click.BadParameter(f"{model_dir} maps Gaussian noise (base gaussian); --source is for translation maps "
                                 "(a data-set base); use --x0 for start points in model units", param_hint="--source")
    try:
        arr = np.load(source_path, allow_pickle=False)
        x0 = units_for(base, lm.config.data_shape).from_units(arr)
    except (OSError, ValueError, UnitsError) as e:
        raise click.BadParameter(f"{source_path}: {one_line(e, 200)}", param_hint="--source") from None
    if not np.isfinite(x0).all():
        raise click.BadParameter(f"{source_path}: the sources must be finite numbers", param_hint="--source")
    return lm, torch.from_numpy(x0)


def _write(out, suffix, x, units):
    """Write ``x`` (model units) as .png, or .npy in ``units`` (an ``anystep.core.units.Units``; None: model units)."""
    from anystep.core.render import samples_png

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        Path(out).write_bytes(samples_png(x))
        return
    if units is not None:  # the model's stored units record (or the data set's): no data set is built
        x = units.to_units(np.asarray(x))
    np.save(out, np.asarray(x))


@click.command(context_settings={"max_content_width": 100})
@click.argument("name")
@click.option("-n", "n", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--units/--model-units", default=True, show_default=True, help="Data set units or model units for .npy.")
@click.option("--out", required=True, help=".npy or .png")
def data(name, n, seed, units, out):
    """Dump N samples of the built-in data set NAME (checkerboard, 8gaussians, moons,
    spirals, rings, gaussian, digits, ...) to inspect before training."""
    import torch

    from anystep.core.data import get_dataset

    suffix = _check_out(out)
    ds = get_dataset(name)
    x = ds.sample(n, torch.Generator().manual_seed(seed)).numpy()
    _write(out, suffix, x, ds.units if units else None)
    click.echo(f"wrote {out}: {n} samples of {name}, shape {tuple(ds.shape)}")
