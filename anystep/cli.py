"""The ``anystep`` command line: parses arguments and delegates, nothing else.

Subcommands live beside the code they drive and are imported lazily, so
``anystep --help`` is fast and an optional extra that is not installed only
affects its own subcommand:

* ``anystep sample`` / ``anystep data``  -> :mod:`anystep.core.cli_sample`
* ``anystep train``                     -> :mod:`anystep.training.cli`
* ``anystep export``                    -> :mod:`anystep.export.cli`
* ``anystep serve``                     -> :mod:`anystep.server.cli`
* ``anystep generate``                  -> :mod:`anystep.client.cli`
* ``anystep bench``                     -> :mod:`anystep.benchmarks.cli`

Bad input exits with code 2 and a one-line ``error: ...`` message.
"""

from __future__ import annotations

import importlib
import sys

import click

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, attribute, one-line help)
    "train": ("anystep.training.cli", "train", "Train a velocity model or a flow map (presets or a JSON config)."),
    "sample": ("anystep.core.cli_sample", "sample", "Sample a model directory with K flow-map steps or an ODE solver."),
    "data": ("anystep.core.cli_sample", "data", "Dump samples of a built-in data set to .npy or .png."),
    "export": ("anystep.export.cli", "export", "Export a model to ONNX, TensorRT or a Triton model repository."),
    "serve": ("anystep.server.cli", "serve", "Serve models over HTTP (POST /generate?steps=K)."),
    "generate": ("anystep.client.cli", "generate", "Ask a running anystep server for samples."),
    "bench": ("anystep.benchmarks.cli", "bench", "Run benchmarks (checkerboard, digits, digits-cond, digits-restore, latency, load, load-ray, load-triton, load-nfe)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr, short = SUBCOMMANDS[name]
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None) or str(e)

            @click.command(name=name, help=short, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args):
                raise click.UsageError(
                    f"'anystep {name}' is unavailable: {missing} is not installed "
                    f"(install the extra, e.g. pip install 'anystep[{_extra_for(name)}]')"
                )

            return unavailable
        return getattr(mod, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, SUBCOMMANDS[name][2]) for name in SUBCOMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _extra_for(name: str) -> str:
    return {"train": "train", "export": "export", "serve": "serve", "generate": "client", "bench": "train,export,serve"}.get(
        name, "train"
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="anystep")
def cli() -> None:
    """anystep: learn two-time flow maps X_{s,t}, export them, and serve sampling
    where each request picks its own step count.

    Time convention: t=0 is the base (noise), t=1 is the data.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known input errors into exit code 2 with one line."""
    from anystep.errors import user_errors  # imports nothing heavy: `generate` stays torch-free

    try:
        cli.main(args=argv, prog_name="anystep", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        click.echo(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
