"""``anystep serve``: load model directories and serve them over HTTP with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .engines import ENGINE_CHOICES
from .registry import BUNDLED_MODELS


@click.command("serve")
@click.option(
    "--model",
    "model_specs",
    multiple=True,
    metavar="NAME=DIR",
    help="Serve the model directory DIR as NAME (repeatable). Default: the bundled models that exist "
    f"({', '.join(BUNDLED_MODELS)} under $ANYSTEP_MODELS_DIR or <repo>/models).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINE_CHOICES),
    default="auto",
    show_default=True,
    help="Inference engine. auto: TensorRT on an NVIDIA GPU when installed, else ONNX Runtime "
    "(CUDA provider with onnxruntime-gpu, else CPU), else torch; the choice is logged and shown in /v1/models.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="ANYSTEP_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every route but /healthz and /readyz (env ANYSTEP_API_KEY).",
)
@click.option(
    "--device", default="cpu", show_default=True, help="torch engine device (cpu, cuda, cuda:1)."
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the torch engine.")
@click.option(
    "--threads",
    type=click.IntRange(0, 1024),
    default=1,
    show_default=True,
    help="Intra-op CPU threads per engine call (torch, onnx); 0 keeps the libraries' defaults. "
    "Requests and models already run in parallel.",
)
@click.option(
    "--triton-url",
    default=None,
    help="Triton HTTP endpoint for --engine triton (e.g. 127.0.0.1:8001).",
)
@click.option(
    "--triton-model",
    "triton_models",
    multiple=True,
    metavar="NAME=TRITON_NAME",
    help="Triton model name of a served model (default: the served name).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache of on-the-fly exports.",
)
@click.option("--fp16", is_flag=True, help="TensorRT: allow FP16 kernels.")
@click.option(
    "--max-batch",
    type=click.IntRange(1, 65536),
    default=256,
    show_default=True,
    help="Most rows per engine call.",
)
@click.option(
    "--max-n",
    type=click.IntRange(1),
    default=None,
    help="Most samples per request for every model. Default: per model, --max-values divided by the "
    "numbers in one sample (2D points: 524288; 8x8 digits: 16384), within the compute budget.",
)
@click.option(
    "--max-values",
    type=click.IntRange(1),
    default=1 << 20,
    show_default=True,
    help="Most output numbers per request (n x numbers per sample); sets each model's sample limit.",
)
@click.option(
    "--max-nfe",
    type=click.IntRange(7),
    default=256,
    show_default=True,
    help="dopri5: default and largest max_nfe (evaluations per sample, enforced); the budget charges n x max_nfe.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1, 100000),
    default=128,
    show_default=True,
    help="Most steps per request.",
)
@click.option(
    "--max-compute",
    type=click.IntRange(1),
    default=65536,
    show_default=True,
    help="Most sample-evaluations (n x nfe) per request; dopri5 is charged n x max_nfe.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1, 100000),
    default=64,
    show_default=True,
    help="Most unfinished requests per model (then 429).",
)
@click.option(
    "--no-batching",
    is_flag=True,
    help="Serve one request at a time (no step-level batching; for benchmarks).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(0.1),
    default=60.0,
    show_default=True,
    help="Seconds before a request is stopped (503); it then takes part in no further engine tick.",
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "thread", "loop"]),
    default="auto",
    show_default=True,
    help="Where each model's engine ticks run: a thread (overlaps HTTP), the event loop (no hand-off per "
    "request), or auto (the loop for flow maps whose full-batch call is under 2 ms).",
)
@click.option(
    "--no-adaptive-yield",
    is_flag=True,
    help="Let adaptive (dopri5) solves tick back to back even while fixed-step requests are in flight "
    "(default: they yield to them, at most 10 ms per tick phase).",
)
@click.option("--no-warmup", is_flag=True, help="Skip engine warm-up.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Deploy as a Ray Serve application (replicas behind Ray's HTTP proxy on --host/--port); "
    "needs the ray extra: pip install 'anystep[ray]'.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 10000),
    default=None,
    help="--ray: number of replicas (default 1).",
)
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    default=None,
    help="--ray: autoscale between MIN and MAX replicas on ongoing requests (not with --replicas).",
)
@click.option(
    "--ray-address",
    default=None,
    help="--ray: join an existing cluster (auto, HOST:6379, ray://HOST:10001); "
    "default: start a local one.",
)
@click.option(
    "--ray-num-cpus",
    type=click.FloatRange(0),
    default=None,
    help="--ray: CPUs per replica [default: --threads, at least 1].",
)
@click.option(
    "--ray-num-gpus",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="--ray: GPUs per replica (fractions share a GPU).",
)
def serve(
    model_specs: tuple[str, ...],
    engine: str,
    host: str,
    port: int,
    api_key: str | None,
    device: str,
    compile_: bool,
    threads: int,
    triton_url: str | None,
    triton_models: tuple[str, ...],
    cache_dir: Path | None,
    fp16: bool,
    max_batch: int,
    max_n: int | None,
    max_values: int,
    max_nfe: int,
    max_steps: int,
    max_compute: int,
    max_queue: int,
    no_batching: bool,
    request_timeout: float,
    executor: str,
    no_adaptive_yield: bool,
    no_warmup: bool,
    log_level: str,
    use_ray: bool = False,
    replicas: int | None = None,
    autoscale: str | None = None,
    ray_address: str | None = None,
    ray_num_cpus: float | None = None,
    ray_num_gpus: float = 0.0,
) -> None:
    """Serve models over HTTP: POST /generate?steps=K, /encode, /v1/models, /metrics, /docs."""
    import uvicorn

    from .app import ServerConfig, create_app
    from .engines import EngineOptions
    from .registry import Limits, ModelSpec, discover_default_models, load_models

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    specs = [ModelSpec.parse(s) for s in model_specs] if model_specs else discover_default_models()
    tmap: dict[str, str] = {}
    for item in triton_models:
        name, sep, tname = item.partition("=")
        if not sep or not name or not tname:
            raise click.BadParameter(f"{item!r}: use NAME=TRITON_NAME", param_hint="--triton-model")
        tmap[name] = tname
    options = EngineOptions(
        device=device,
        compile=compile_,
        cache_dir=cache_dir,
        triton_url=triton_url,
        triton_models=tmap,
        max_batch=max_batch,
        fp16=fp16,
        threads=threads or None,
    )
    limits = Limits(
        max_steps=max_steps, max_n=max_n, max_compute=max_compute, max_values=max_values, max_nfe=max_nfe
    )
    api_key = api_key or None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(
            f"warning: binding {host} without an API key: anyone who can reach it may use it "
            "(set --api-key or ANYSTEP_API_KEY)",
            err=True,
        )
    ray_opts = _ray_options(
        use_ray, replicas, autoscale, ray_address, ray_num_cpus, ray_num_gpus, threads
    )
    # fails fast, before binding (with --ray the replicas load the models themselves)
    models = load_models(specs, engine, options, limits) if ray_opts is None else None
    config = ServerConfig(
        models=specs,
        engine=engine,
        engine_options=options,
        api_key=api_key,
        limits=limits,
        max_batch=max_batch,
        max_queue=max_queue,
        batching=not no_batching,
        request_timeout_s=request_timeout,
        warmup=not no_warmup,
        drain_timeout_s=request_timeout,
        executor=executor,
        adaptive_yield=not no_adaptive_yield,
    )
    if ray_opts is not None:
        from .ray_serve import serve_forever

        serve_forever(config, ray_opts, host, port, log_level, echo=lambda m: click.echo(m, err=True))
        return
    app = create_app(config, models=models)
    click.echo(
        f"serving {', '.join(f'{m.name} ({m.kind}, {m.engine.name}, max n {m.max_n})' for m in models)} "
        f"on http://{host}:{port} "
        f"(auth {'on' if api_key else 'off'}, batching {'off' if no_batching else 'on'}, {_uvicorn_impl()})",
        err=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(request_timeout) + 5,
        access_log=log_level == "debug",
    )


def _uvicorn_impl() -> str:
    """Which event loop and HTTP parser ``uvicorn.run`` picks here (``auto``: uvloop and httptools when
    installed, the ``serve`` extra's default; else asyncio and the pure-Python h11)."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return f"{loop} + {http}"


def _ray_options(
    use_ray: bool,
    replicas: int | None,
    autoscale: str | None,
    address: str | None,
    num_cpus: float | None,
    num_gpus: float,
    threads: int,
):
    """The :class:`~anystep.server.ray_serve.RayOptions` of ``--ray``, or None without it."""
    from .ray_serve import RayOptions, RayServeError, import_serve, parse_autoscale

    ray_only = {"--replicas": replicas, "--autoscale": autoscale, "--ray-address": address,
                "--ray-num-cpus": num_cpus, "--ray-num-gpus": num_gpus or None}  # fmt: skip
    if not use_ray:
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise RayServeError(f"{', '.join(given)} only apply with --ray")
        return None
    import_serve()  # the extra is missing: say so before anything starts
    if replicas is not None and autoscale is not None:
        raise RayServeError("give either --replicas N or --autoscale MIN:MAX, not both")
    return RayOptions(
        replicas=replicas or 1,
        autoscale=parse_autoscale(autoscale) if autoscale else None,
        address=address,
        num_cpus=num_cpus if num_cpus is not None else float(max(1, threads)),
        num_gpus=num_gpus,
    )
