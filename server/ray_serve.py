"""Scale out on Ray Serve: N replicas of the same app, one command from a laptop to a cluster.

``anystep serve --ray [--replicas N | --autoscale MIN:MAX] [--ray-address ADDR]`` deploys
the app :func:`~anystep.server.app.create_app` builds — the same routes, validation,
step-level batching (one :class:`~anystep.server.scheduler.StepScheduler` per model *per
replica*) and engines — as a Ray Serve application (``@serve.ingress``). Ray's HTTP proxy
spreads requests over the replicas (each request goes to the less loaded of two), restarts
a replica whose process dies, and scales between ``MIN`` and ``MAX`` replicas on the
number of ongoing requests.

Per replica:

* the models are loaded **once**, in the app's lifespan, inside the replica process; the
  replica only joins the proxy's routing table after its engines are loaded and warmed up
  (the lifespan startup waits for the warm-up), so no request reaches a cold replica;
* ``num_cpus`` / ``num_gpus`` are Ray resources of the replica actor; the engine's
  ``threads`` (``--threads``) are set in the replica, and ``OMP_NUM_THREADS`` with them;
* every response carries ``X-Anystep-Replica: <replica id>``; ``GET /metrics`` is the
  answering replica's own Prometheus registry (the header says which);
* ``GET /readyz`` is 200 only when the answering replica is ready **and** every replica
  of the deployment has loaded its models (asked of the Serve controller, cached 1 s).

The same application is built from a Ray Serve config file (KubeRay ``RayService``,
``serve deploy``) by :func:`build_app` (``import_path: anystep.server.ray_serve:build_app``);
see ``deploy/README.md``. The replica and proxy middlewares live in :mod:`.ray_replica`.
Ray is the optional ``ray`` extra: ``pip install 'anystep[ray]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anystep.errors import AnystepError

from .app import ServerConfig, create_app
from .engines import ENGINES, EngineOptions
from .ray_replica import (  # noqa: F401 - re-exported: one import for users of --ray
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    REPLICA_HEADER,
    ClusterReadiness,
    ProxyErrorMiddleware,
    ReplicaMiddleware,
)
from .registry import Limits, ModelSpec, discover_default_models

log = logging.getLogger("anystep.server")

RAY_EXTRA = "pip install 'anystep[ray]'  (ray[serve]==2.60.0)"
APP_NAME = "anystep"
DEPLOYMENT_NAME = "AnystepServer"
WARMUP_TIMEOUT_S = 900.0


class RayServeError(AnystepError):
    """Bad Ray Serve options, or Ray is not installed; the message says how to fix it."""


def import_serve() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or :class:`RayServeError` naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise RayServeError(
            f"--ray needs Ray Serve, which is not installed ({e.name or e}): {RAY_EXTRA}"
        ) from None
    return ray, serve


@dataclass
class RayOptions:
    """How the app is deployed on Ray Serve.

    Attributes:
        replicas: fixed number of replicas (ignored with ``autoscale``).
        autoscale: ``(min, max)`` replicas; Ray scales on ongoing requests per replica.
        address: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``);
            None starts a local cluster for the lifetime of the command.
        num_cpus: Ray CPUs reserved per replica.
        num_gpus: Ray GPUs reserved per replica (fractions share a GPU).
        max_ongoing_requests: most requests a replica works on at once (more wait in
            Ray's router); None: the server's ``max_queue``, so step-level batching sees
            as many requests as the single-process server would.
        target_ongoing_requests: autoscaling target per replica; None: half of
            ``max_ongoing_requests``.
        app_name: the Serve application name.
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int | None = None
    target_ongoing_requests: float | None = None
    app_name: str = APP_NAME

    def __post_init__(self) -> None:
        if self.autoscale is None and int(self.replicas) < 1:
            raise RayServeError(f"--replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not (1 <= lo <= hi):
                raise RayServeError(f"--autoscale MIN:MAX needs 1 <= MIN <= MAX, got {lo}:{hi}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise RayServeError("--ray-num-cpus and --ray-num-gpus must be >= 0")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise RayServeError("max_ongoing_requests must be >= 1")

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else int(self.replicas)


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``, or :class:`RayServeError` saying the form."""
    lo, sep, hi = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        out = (int(lo), int(hi))
    except ValueError:
        raise RayServeError(
            f"--autoscale {text!r}: use MIN:MAX replicas, e.g. --autoscale 1:4"
        ) from None
    RayOptions(autoscale=out)  # validates the range
    return out


# --------------------------------------------------------------------------------------
# inside a replica
# --------------------------------------------------------------------------------------


def _wait_for_warmup(app: Any) -> None:
    """Make the app's lifespan startup return only once its engines are loaded and warm.

    Ray Serve runs the lifespan in the replica constructor, so a replica reports RUNNING
    (and receives traffic) only when ready; a failed warm-up fails the replica (Ray
    retries it) instead of leaving a replica that answers 503 forever.
    """
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any):
        async with inner(a) as st:
            state = a.state.anystep
            deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while not state.ready:
                if state.warm_error:
                    raise RuntimeError(f"engine warm-up failed: {state.warm_error}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"engines not warm after {WARMUP_TIMEOUT_S:g} s")
                await asyncio.sleep(0.05)
            yield st

    app.router.lifespan_context = lifespan


def build_replica_app(
    config: ServerConfig, replica: str, cluster_ready: Callable[[], Awaitable[str | None]]
) -> Any:
    """The app one replica serves: :func:`create_app` plus :class:`ReplicaMiddleware`.

    Models are loaded from ``config.models`` at the app's startup, in the replica.
    """
    app = create_app(config)
    _wait_for_warmup(app)
    app.add_middleware(ReplicaMiddleware, replica=replica, cluster_ready=cluster_ready)
    return app


# --------------------------------------------------------------------------------------
# the Serve application
# --------------------------------------------------------------------------------------


def _replica_class(serve: Any) -> type:
    @serve.ingress()
    class AnystepServer:
        """One replica: builds the anystep app in the replica process (late-bound ingress)."""

        def __init__(self, config: ServerConfig, app_name: str) -> None:
            self._config, self._app_name = config, app_name

        def __serve_build_asgi_app__(self) -> Any:
            ctx = serve.get_replica_context()
            return build_replica_app(
                self._config,
                replica=str(ctx.replica_id.unique_id),
                cluster_ready=ClusterReadiness(self._app_name, ctx.deployment),
            )

    return AnystepServer


def application(config: ServerConfig, options: RayOptions) -> Any:
    """The Ray Serve application (``serve.run`` it) for ``config`` deployed as ``options`` say."""
    _, serve = import_serve()
    threads = config.engine_options.threads
    env = {"OMP_NUM_THREADS": str(threads or max(1, int(options.num_cpus) or 1))}
    for k in ("OMP_WAIT_POLICY", "ANYSTEP_MODELS_DIR"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    max_ongoing = options.max_ongoing_requests or config.max_queue
    kw: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": max_ongoing,
        # beyond every replica's share: a bounded wait in Ray's router, then 429 queue_full
        # (the single-process server's answer; the proxy middleware gives it the JSON body)
        "max_queued_requests": config.max_queue,
        "backpressure_config": {"status_code": 429, "retry_after_s": 1},
        "ray_actor_options": {
            "num_cpus": options.num_cpus,
            "num_gpus": options.num_gpus,
            "runtime_env": {"env_vars": env},
        },
        "graceful_shutdown_timeout_s": config.drain_timeout_s,
    }
    if options.autoscale:
        kw["autoscaling_config"] = {
            "min_replicas": options.autoscale[0],
            "max_replicas": options.autoscale[1],
            "target_ongoing_requests": options.target_ongoing_requests or max(1, max_ongoing // 2),
        }
    else:
        kw["num_replicas"] = int(options.replicas)
    dep = serve.deployment(**kw)(_replica_class(serve))
    return dep.bind(config, options.app_name)


_BUILD_KEYS = {
    "models", "engine", "threads", "device", "triton_url", "triton_models", "cache_dir",
    "max_batch", "max_n", "max_steps", "max_compute", "max_queue", "request_timeout",
    "batching", "warmup", "replicas", "autoscale", "num_cpus", "num_gpus",
    "max_ongoing_requests", "target_ongoing_requests",
}  # fmt: skip


def build_app(args: Mapping[str, Any]) -> Any:
    """Application builder for Ray Serve config files (``import_path: ...ray_serve:build_app``).

    ``args`` as :func:`config_from_args` reads them.
    """
    return application(*config_from_args(args))


def config_from_args(args: Mapping[str, Any] | None) -> tuple[ServerConfig, RayOptions]:
    """The server configuration and deployment options of a Serve config file's ``args``.

    ``args`` (all optional) mirror ``anystep serve``'s flags: ``models`` (``{name: dir}``
    or ``["NAME=DIR"]``; default the bundled models), ``engine``, ``threads``, ``device``,
    ``triton_url``, ``triton_models`` (``{name: triton name}``), ``cache_dir``,
    ``max_batch``, ``max_n``, ``max_steps``, ``max_compute``, ``max_queue``,
    ``request_timeout``, ``batching``, ``warmup``; deployment: ``replicas``,
    ``autoscale`` (``"MIN:MAX"``), ``num_cpus``, ``num_gpus``, ``max_ongoing_requests``,
    ``target_ongoing_requests``. The API key comes from ``ANYSTEP_API_KEY``.
    Replica counts and resources may also be overridden by the config file's own
    ``deployments:`` section.
    """
    args = dict(args or {})
    unknown = sorted(set(args) - _BUILD_KEYS)
    if unknown:
        raise RayServeError(f"unknown args {unknown}; use any of {sorted(_BUILD_KEYS)}")
    models = args.get("models")
    if models is None:
        specs = discover_default_models()
    elif isinstance(models, Mapping):
        specs = [ModelSpec(str(k), Path(str(v))) for k, v in models.items()]
    else:
        specs = [ModelSpec.parse(str(s)) for s in models]
    engine = str(args.get("engine", "torch"))
    if engine not in ENGINES:
        raise RayServeError(f"engine {engine!r} is not one of {list(ENGINES)}")
    max_batch = int(args.get("max_batch", 256))
    threads = int(args.get("threads", 1))
    timeout = float(args.get("request_timeout", 60.0))
    config = ServerConfig(
        models=specs,
        engine=engine,
        engine_options=EngineOptions(
            device=str(args.get("device", "cpu")),
            cache_dir=Path(args["cache_dir"]) if args.get("cache_dir") else None,
            triton_url=args.get("triton_url"),
            triton_models=dict(args.get("triton_models") or {}),
            max_batch=max_batch,
            threads=threads or None,
        ),
        api_key=os.environ.get("ANYSTEP_API_KEY") or None,
        limits=Limits(
            max_steps=int(args.get("max_steps", 128)),
            max_n=int(args.get("max_n", 256)),
            max_compute=int(args.get("max_compute", 65536)),
        ),
        max_batch=max_batch,
        max_queue=int(args.get("max_queue", 64)),
        batching=bool(args.get("batching", True)),
        request_timeout_s=timeout,
        warmup=bool(args.get("warmup", True)),
        drain_timeout_s=timeout,
    )
    auto = args.get("autoscale")
    options = RayOptions(
        replicas=int(args.get("replicas", 1)),
        autoscale=parse_autoscale(auto) if auto else None,
        num_cpus=float(args.get("num_cpus", 1.0)),
        num_gpus=float(args.get("num_gpus", 0.0)),
        max_ongoing_requests=args.get("max_ongoing_requests"),
        target_ongoing_requests=args.get("target_ongoing_requests"),
    )
    return config, options


# --------------------------------------------------------------------------------------
# `anystep serve --ray`
# --------------------------------------------------------------------------------------


@dataclass
class RayDeployment:
    """A running deployment started by :func:`deploy` (stop it with :meth:`stop`).

    Attributes:
        url: where Ray's HTTP proxy listens.
        options: how it was deployed.
        local_cluster: True when :func:`deploy` started the Ray cluster itself.
    """

    url: str
    options: RayOptions
    local_cluster: bool
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Delete the application; shut down Serve and Ray too when the cluster is ours."""
        if self._stopped:
            return
        self._stopped = True
        ray, serve = import_serve()
        try:
            if self.local_cluster:
                serve.shutdown()
            else:
                serve.delete(self.options.app_name)
        finally:
            ray.shutdown()


def _replica_failure(serve: Any, app_name: str) -> str:
    """The last line of the deployment's error message (the replica's exception), if any."""
    try:
        dep = serve.status().applications[app_name].deployments[DEPLOYMENT_NAME]
        lines = [ln.strip() for ln in str(dep.message).splitlines() if ln.strip()]
        cause = lines[-1] if lines else "no message"
    except Exception:  # noqa: BLE001 - best effort: the controller may be gone
        cause = "no message"
    return f"Replica error: {cause[:300]} (replica logs: <ray temp dir>/session_latest/logs/serve/)"


def _check_models(config: ServerConfig) -> None:
    """Read every model's ``config.json`` here: a wrong path fails now, not in every replica."""
    from anystep.core.modeldir import read_config

    for spec in config.models:
        read_config(spec.path)


def _local_paths(config: ServerConfig) -> ServerConfig:
    """Model and cache paths made absolute (replica processes run in other folders)."""
    specs = [ModelSpec(s.name, Path(s.path).expanduser().resolve()) for s in config.models]
    opts = config.engine_options
    cache = Path(opts.cache_dir).expanduser().resolve() if opts.cache_dir else None
    return replace(config, models=specs, engine_options=replace(opts, cache_dir=cache))


def deploy(
    config: ServerConfig,
    options: RayOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> RayDeployment:
    """Start (or join) a Ray cluster, start Serve's HTTP proxy on ``host:port``, deploy, wait.

    Returns when every replica has loaded and warmed its models.

    Raises:
        RayServeError: Ray is missing, or the local cluster has too few CPUs/GPUs.
    """
    ray, serve = import_serve()
    if not config.models:
        raise RayServeError("nothing to serve: pass --model NAME=DIR or create the bundled models")
    level = getattr(logging, log_level.upper(), logging.INFO)
    local = options.address is None
    if local:
        config = _local_paths(config)
        _check_models(config)
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)  # the proxy inherits it
        cpus = os.cpu_count() or 1
        need = options.num_cpus * options.max_replicas
        if need > cpus:
            log.warning("%g replica CPUs requested on %d cores: they will share cores", need, cpus)
        ray.init(
            num_cpus=max(cpus, int(need + 0.999)),
            include_dashboard=False,
            logging_level=max(level, logging.WARNING),
            log_to_driver=level <= logging.DEBUG,
        )
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if options.num_gpus * options.max_replicas > gpus:
            ray.shutdown()
            raise RayServeError(
                f"{options.max_replicas} replicas x {options.num_gpus:g} GPUs do not fit the "
                f"{gpus:g} GPUs of this machine; lower --ray-num-gpus or --replicas"
            )
    else:
        ray.init(
            address=options.address,
            logging_level=max(level, logging.WARNING),
            log_to_driver=level <= logging.DEBUG,
        )
    try:
        serve.start(http_options={"host": host, "port": int(port)})
        try:
            serve.run(application(config, options), name=options.app_name, route_prefix="/")
        except RuntimeError as e:  # the replicas failed to start: say why, in one line
            raise RayServeError(f"{e} {_replica_failure(serve, options.app_name)}") from None
    except BaseException:
        (serve.shutdown() if local else None)
        ray.shutdown()
        raise
    return RayDeployment(url=f"http://{host}:{port}", options=options, local_cluster=local)


def serve_forever(
    config: ServerConfig,
    options: RayOptions,
    host: str,
    port: int,
    log_level: str = "info",
    echo: Callable[[str], None] = print,
) -> None:
    """:func:`deploy`, report, and keep serving until SIGINT/SIGTERM; then clean up."""
    what = (
        f"autoscaling {options.autoscale[0]}..{options.autoscale[1]} replicas"
        if options.autoscale
        else f"{options.replicas} replica(s)"
    )
    where = f"the Ray cluster at {options.address}" if options.address else "a local Ray cluster"
    if options.address is None:
        _check_models(config)
    echo(
        f"deploying {', '.join(s.name for s in config.models)} ({config.engine}) as {what} "
        f"on {where} ..."
    )
    dep = deploy(config, options, host, port, log_level)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo(
            f"serving on {dep.url} ({what}, {options.num_cpus:g} CPU / "
            f"{options.num_gpus:g} GPU each, header {REPLICA_HEADER}); Ctrl-C to stop"
        )
        while not stop.wait(0.5):
            pass
        echo("stopping the Ray Serve application ...")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        dep.stop()
