"""``anystep generate``: ask a running server for samples and write them to a file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

SUFFIX_FORMATS = {".png": "png", ".npy": "npy", ".json": "json"}


class _RequestFailed(click.ClickException):
    """A failed request or bad input: one line ``error: ...`` on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        from .errors import _one_line  # raised after .api (hence .errors) is imported

        click.echo(f"error: {_one_line(self.format_message())}", err=True, file=file)


def _number_list(text, kind, hint):
    """``"7"`` -> 7, ``"1,2"`` -> [1, 2] (None stays None); bad text is exit 2 naming the option."""
    if text is None:
        return None
    try:
        vals = [kind(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: use comma-separated {'integers' if kind is int else 'numbers'}",
                                 param_hint=hint) from None
    return vals[0] if len(vals) == 1 else vals


def _load_source(path):
    """``--source FILE``: samples ``[n, ...]`` from a .npy (no pickles) or .json file; bad files are exit 2."""
    import numpy as np

    from .errors import _one_line

    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() == ".json":
            doc = json.loads(path.read_text())
            return doc["samples"] if isinstance(doc, dict) and "samples" in doc else doc
    except (OSError, ValueError, KeyError) as e:
        raise click.BadParameter(f"{path}: cannot read samples ({_one_line(e, 160)})",
                                 param_hint="--source") from None
    raise click.BadParameter(f"{path}: use a .npy file (numpy.save) or a .json list [n, ...]", param_hint="--source")


@click.command("generate")
@click.option(
    "--url",
    envvar="ANYSTEP_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Server URL (env ANYSTEP_URL).",
)
@click.option(
    "--api-key", envvar="ANYSTEP_API_KEY", default=None, help="Bearer token (env ANYSTEP_API_KEY)."
)
@click.option("--model", default=None, help="Served model name (default: the server's first).")
@click.option("--steps", type=int, default=None, help="Number of steps K (server default 1).")
@click.option("-n", "--n", "n", type=int, default=1, show_default=True, help="Number of samples.")
@click.option(
    "--seed", type=int, default=None, help="Seed; sample i uses seed + i (default: server picks)."
)
@click.option("--grid", default=None, help="Custom times, e.g. 0,0.3,1 (overrides --steps).")
@click.option(
    "--solver",
    type=click.Choice(["euler", "heun", "rk4", "dopri5"]),
    default=None,
    help="Velocity models only.",
)
@click.option("--rtol", type=float, default=None, help="dopri5 tolerance.")
@click.option(
    "--latency-ms", type=float, default=None, help="Latency budget; the server picks the steps."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output file: .png (image grid / scatter), .npy or .json. Default: JSON on stdout.",
)
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds per HTTP request.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries on 429/503.",
)
@click.option("--class", "classes", default=None, metavar="C[,C...]",
              help="Class-conditional models: class of every sample, or one per sample (default: any, from the seed).")
@click.option("--guidance", default=None, metavar="W[,W...]",
              help="Class-conditional models: guidance scale w (default 1), or one per sample.")
@click.option("--source", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="FILE",
              help="Translation models (e.g. digits-restore): source samples [n, ...] to map, in the base data set's "
                   "units, as .npy or .json (a list, or the 'samples' of a generate --out .json); -n is their "
                   "number. Default: the server draws them from the seed.")
def generate(
    url, api_key, model, steps, n, seed, grid, solver, rtol, latency_ms, out, timeout, retries, classes, guidance,
    source,
) -> None:
    """Ask a running anystep server for samples, e.g.

    \b
    anystep generate --model digits --steps 1 -n 16 --seed 0 --out grid.png
    anystep generate --model digits-cond --class 7 --guidance 2 -n 16 --out sevens.png
    anystep generate --model digits-restore --source noisy.npy --out restored.npy
    """
    from .api import AnystepClientError, AnystepHTTPError, Client

    fmt = "json"
    if out is not None:
        fmt = SUFFIX_FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise click.BadParameter(f"{out}: use a .png, .npy or .json file", param_hint="--out")
    grid_list = None
    if grid is not None:
        try:
            grid_list = [float(g) for g in grid.split(",")]
        except ValueError:
            raise click.BadParameter(
                f"{grid!r}: use comma-separated numbers such as 0,0.5,1", param_hint="--grid"
            ) from None
    class_list = _number_list(classes, int, "--class")
    guidance_list = _number_list(guidance, float, "--guidance")
    source_arr = _load_source(source) if source is not None else None
    try:
        with Client(url, api_key=api_key, timeout=timeout, retries=retries) as c:
            r = c.generate(
                classes=class_list,
                guidance=guidance_list,
                model=model,
                steps=steps,
                n=n,
                seed=seed,
                format=fmt,
                grid=grid_list,
                solver=solver,
                rtol=rtol,
                latency_ms=latency_ms,
                source=source_arr,
            )
    except AnystepHTTPError as e:
        raise _RequestFailed(str(e)) from None
    except AnystepClientError as e:
        raise _RequestFailed(str(e)) from None
    summary = (
        f"{r.model} ({r.kind}{', ' + r.solver if r.solver else ''}): n={r.n} steps={r.steps} nfe={r.nfe} "
        f"seed={r.seed} {r.timing_ms.get('total', float('nan')):.1f} ms"
        + (" (steps chosen by latency budget)" if r.chosen_by_budget else "")
    )
    if fmt == "json":
        doc = {
            "model": r.model,
            "kind": r.kind,
            "steps": r.steps,
            "nfe": r.nfe,
            "seed": r.seed,
            "n": r.n,
            "shape": list(r.samples.shape),
            "samples": r.samples.tolist(),
            "solver": r.solver,
            "grid": r.grid,
            "timing_ms": r.timing_ms,
            "chosen_by_budget": r.chosen_by_budget,
        }
        if r.source is not None:
            doc["source"] = r.source.tolist()
        text = json.dumps(doc) + "\n"
        if out is None:
            sys.stdout.write(text)
            click.echo(summary, err=True)
            return
        out.write_text(text)
    elif fmt == "npy":
        import numpy as np

        np.save(out, r.samples, allow_pickle=False)
    else:
        out.write_bytes(r.png or b"")
    click.echo(f"wrote {out}: {summary}", err=True)
