"""``anystep bench``: run the benchmarks of :mod:`anystep.benchmarks` from the main CLI.

Each subcommand hands its arguments, unparsed, to the benchmark module's own
``main(argv)`` (argparse), imported only when the subcommand runs, so
``anystep bench latency --quick`` is exactly ``python -m anystep.benchmarks.latency --quick``
and ``anystep bench latency --help`` shows that module's options:

* ``anystep bench checkerboard`` -> :mod:`anystep.benchmarks.checkerboard` (paper Table 3, every objective)
* ``anystep bench digits``       -> :mod:`anystep.benchmarks.digits` (digits-FD vs steps)
* ``anystep bench digits-cond``  -> :mod:`anystep.benchmarks.digits_cond` (class-conditional, guidance)
* ``anystep bench digits-restore`` -> :mod:`anystep.benchmarks.digits_restore` (image-to-image restoration map)
* ``anystep bench latency``      -> :mod:`anystep.benchmarks.latency` (flow map vs ODE solvers, engines)
* ``anystep bench load``         -> :mod:`anystep.benchmarks.load` (serving under load, loopback only)
* ``anystep bench load-ray``     -> :mod:`anystep.benchmarks.load_ray` (replicas on Ray Serve, loopback only)
* ``anystep bench load-triton``  -> :mod:`anystep.benchmarks.load_triton` (against Triton on the same map)
* ``anystep bench load-nfe``     -> :mod:`anystep.benchmarks.load_nfe` (served flow map vs served dopri5)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import click

BENCHMARKS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "checkerboard": ("anystep.benchmarks.checkerboard",
                     "The paper's 2D checkerboard experiment (Table 3) for every objective; bundles models."),
    "digits": ("anystep.benchmarks.digits", "8x8 digits: digits-FD / Teacher-FD of every sampler and step count."),
    "digits-cond": ("anystep.benchmarks.digits_cond",
                    "Class-conditional digits: accuracy per class, digits-FD vs the guided teacher; restoration."),
    "digits-restore": ("anystep.benchmarks.digits_restore",
                       "Image-to-image: noisy -> clean digits restoration map, PSNR and classifier accuracy vs steps."),
    "latency": ("anystep.benchmarks.latency",
                "Sampler latency vs ODE solvers and across engines (torch, ONNX Runtime, TensorRT), with quality."),
    "load": ("anystep.benchmarks.load",
             "Serving under load on 127.0.0.1: latency percentiles, throughput, batching on/off."),
    "load-ray": ("anystep.benchmarks.load_ray",
                 "Serving on Ray Serve (local cluster, 127.0.0.1): throughput per replica count."),
    "load-triton": ("anystep.benchmarks.load_triton",
                    "anystep serve vs Triton (pytriton, dynamic batching) on the same exported map, 127.0.0.1."),
    "load-nfe": ("anystep.benchmarks.load_nfe",
                 "Served flow map vs served dopri5 (n=64): latency ratio against the NFE-ratio limit."),
}

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _entry(module: str) -> Callable[[Sequence[str]], int | None]:
    """The ``main(argv)`` of a benchmark module (imported now)."""
    mod = importlib.import_module(module)
    fn = getattr(mod, "main", None)
    if fn is None or not callable(fn):
        raise click.UsageError(f"{module} has no main(argv) entry point")
    return fn


def _delegate(name: str, module: str, short: str) -> click.Command:
    @click.command(name=name, help=f"{short} Options: see 'anystep bench {name} --help'.",
                   context_settings=_PASS_THROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        fn = _entry(module)
        try:
            code = fn(list(args))
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if code:
            raise SystemExit(int(code))

    return command


class BenchGroup(click.Group):
    """A group whose subcommands are built on demand from :data:`BENCHMARKS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(BENCHMARKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHMARKS:
            return None
        module, short = BENCHMARKS[name]
        return _delegate(name, module, short)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Benchmarks"):
            formatter.write_dl([(n, BENCHMARKS[n][1]) for n in BENCHMARKS])


@click.group("bench", cls=BenchGroup)
def bench() -> None:
    """Run a benchmark; results go to benchmarks/results/ (JSON + Markdown + plots).

    Each benchmark takes its own options, e.g. 'anystep bench latency --quick'.
    """
