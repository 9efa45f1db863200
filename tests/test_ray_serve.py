"""``anystep serve --ray``: the app as a Ray Serve deployment.

Fast tests (no cluster): options, CLI flags, the replica and proxy middlewares, the
cluster-wide readiness rule, the KubeRay manifest. Slow tests (``-m slow``, real Ray on
this machine; ``make test-slow`` installs the ``ray`` extra): two replicas of
``anystep serve --ray`` answer and share the load, give byte-identical samples, the same
4xx bodies as the single-process server, and survive a replica killed mid-run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from cli_run import run_cli as _cli
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from anystep.server.ray_serve import (
    DEPLOYMENT_NAME,
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    REPLICA_HEADER,
    ClusterReadiness,
    ProxyErrorMiddleware,
    RayOptions,
    RayServeError,
    ReplicaMiddleware,
    config_from_args,
    import_serve,
    parse_autoscale,
)

REPO = Path(__file__).resolve().parents[1]


def _have_ray() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: hidden by sys.modules["ray"] = None
        return False


HAVE_RAY = _have_ray()
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="needs the ray extra (make test-slow installs it)"
)


# ---------------------------------------------------------------------------------------
# options and CLI
# ---------------------------------------------------------------------------------------


def test_parse_autoscale():
    assert parse_autoscale("1:4") == (1, 4)
    assert parse_autoscale("2:2") == (2, 2)
    for bad in ("4", "a:b", "0:2", "3:1", ""):
        with pytest.raises(RayServeError, match="MIN"):
            parse_autoscale(bad)


def test_ray_options_validate():
    with pytest.raises(RayServeError, match="replicas"):
        RayOptions(replicas=0)
    with pytest.raises(RayServeError, match=">= 0"):
        RayOptions(num_gpus=-1)
    assert RayOptions(autoscale=(1, 3)).max_replicas == 3
    assert RayOptions(replicas=2).max_replicas == 2


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayServeError, match=r"anystep\[ray\]"):
        import_serve()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["serve", "--replicas", "2"], "only apply with --ray"),
        (["serve", "--ray-address", "auto"], "only apply with --ray"),
        (["serve", "--ray", "--replicas", "2", "--autoscale", "1:3"], "not both"),
        (["serve", "--ray", "--autoscale", "3:1"], "MIN <= MAX"),
        (["serve", "--ray", "--model", "x=/nonexistent/model"], "nonexistent"),
    ],
)
def test_cli_bad_ray_flags_exit_2(argv, msg, capsys):
    if "--ray" in argv and not HAVE_RAY:
        msg = "anystep[ray]"
    code, err = _cli(argv, capsys)
    assert code == 2, err
    assert msg in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_serve_help_lists_ray_flags():
    from click.testing import CliRunner

    from anystep.server.cli import serve

    out = CliRunner().invoke(serve, ["--help"]).output
    for flag in (
        "--ray",
        "--replicas",
        "--autoscale",
        "--ray-address",
        "--ray-num-cpus",
        "--ray-num-gpus",
    ):
        assert flag in out


# ---------------------------------------------------------------------------------------
# replica and proxy middlewares, readiness
# ---------------------------------------------------------------------------------------


def _inner_app() -> Starlette:
    async def ok(request):
        return JSONResponse({"status": "ready"})

    async def boom(request):
        return PlainTextResponse("bug", status_code=500)

    return Starlette(routes=[Route("/readyz", ok), Route("/ok", ok), Route("/boom", boom)])


def test_replica_middleware_tags_every_response_and_gates_readyz():
    reason: list[str | None] = ["1 of 2 replicas have loaded their models"]

    async def cluster_ready():
        return reason[0]

    app = ReplicaMiddleware(_inner_app(), replica="r1", cluster_ready=cluster_ready)
    with TestClient(app) as c:
        for path in ("/ok", "/missing", "/boom"):
            assert c.get(path).headers[REPLICA_HEADER] == "r1"
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers[REPLICA_HEADER] == "r1"
        assert r.json() == {
            "error": "not_ready",
            "message": "not ready: 1 of 2 replicas have loaded their models; retry shortly",
            "field": None,
        }
        assert r.headers["retry-after"] == "1"
        reason[0] = None
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_proxy_error_middleware():
    async def died(scope, receive, send):  # Ray's proxy after a replica died: no answer at all
        return None

    async def no_replica(scope, receive, send):  # the proxy's own plain-text 503
        await PlainTextResponse("no replicas", status_code=503, headers={"x-request-id": "q1"})(
            scope, receive, send
        )

    async def app_error(scope, receive, send):  # a 5xx from the app itself carries the header
        await Response("bug", status_code=500, headers={REPLICA_HEADER: "r1"})(scope, receive, send)

    r = TestClient(ProxyErrorMiddleware(died)).get("/generate")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "replica_failed" and r.json()["field"] is None
    assert "retry" in r.json()["message"]
    r = TestClient(ProxyErrorMiddleware(no_replica)).get("/generate")
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert r.headers["x-request-id"] == "q1"

    async def queue_full(scope, receive, send):  # Ray's router queue is full (backpressure)
        await PlainTextResponse("dropped", status_code=429, headers={"retry-after": "2"})(
            scope, receive, send
        )

    r = TestClient(ProxyErrorMiddleware(queue_full)).get("/generate")
    assert r.status_code == 429 and r.json()["error"] == "queue_full"
    assert r.headers["retry-after"] == "2"
    r = TestClient(ProxyErrorMiddleware(app_error), raise_server_exceptions=False).get("/x")
    assert r.status_code == 500 and r.text == "bug"
    ok = TestClient(ProxyErrorMiddleware(_inner_app())).get("/ok")
    assert ok.status_code == 200 and ok.json() == {"status": "ready"}


def _status(states: dict[str, int], app: str = "anystep", dep: str = DEPLOYMENT_NAME):
    d = SimpleNamespace(replica_states=states)
    return lambda: SimpleNamespace(applications={app: SimpleNamespace(deployments={dep: d})})


def test_cluster_readiness_needs_every_replica_running():
    assert (
        ClusterReadiness("anystep", DEPLOYMENT_NAME, status=_status({"RUNNING": 2})).check() is None
    )
    why = ClusterReadiness(
        "anystep", DEPLOYMENT_NAME, status=_status({"RUNNING": 1, "STARTING": 1})
    ).check()
    assert why == "1 of 2 replicas have loaded their models (1 starting)"
    assert "not deployed" in ClusterReadiness("other", DEPLOYMENT_NAME, status=_status({})).check()
    assert "0 of 0" in ClusterReadiness("anystep", DEPLOYMENT_NAME, status=_status({})).check()

    def down():
        raise ConnectionError("controller gone")

    why = asyncio.run(ClusterReadiness("anystep", DEPLOYMENT_NAME, status=down)())
    assert "did not answer" in why


# ---------------------------------------------------------------------------------------
# deployment options and the KubeRay manifest
# ---------------------------------------------------------------------------------------


def test_config_from_args(tmp_path):
    cfg, opts = config_from_args(
        {"models": {"digits": str(tmp_path)}, "engine": "triton", "triton_url": "triton:8000",
         "threads": 2, "max_n": 64, "autoscale": "1:4", "num_gpus": 0}
    )  # fmt: skip
    assert cfg.engine == "triton" and cfg.engine_options.triton_url == "triton:8000"
    assert cfg.engine_options.threads == 2 and cfg.limits.max_n == 64
    assert [s.name for s in cfg.models] == ["digits"]
    assert opts.autoscale == (1, 4)
    with pytest.raises(RayServeError, match="unknown args"):
        config_from_args({"replica": 2})
    with pytest.raises(RayServeError, match="engine"):
        config_from_args({"models": ["a=/x"], "engine": "tpu"})


@needs_ray
def test_application_carries_replica_resources_and_autoscaling(tmp_path):
    from anystep.server.ray_serve import application

    cfg, _ = config_from_args({"models": {"digits": str(tmp_path)}, "threads": 1, "max_queue": 48})
    dep = application(cfg, RayOptions(replicas=3, num_cpus=2, num_gpus=0.5))._bound_deployment
    assert dep.num_replicas == 3 and dep.max_ongoing_requests == 48
    assert dep._deployment_config.max_queued_requests == 48
    assert dep._deployment_config.backpressure_config.status_code == 429
    actor = dep.ray_actor_options
    assert actor["num_cpus"] == 2 and actor["num_gpus"] == 0.5
    assert actor["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"
    dep = application(cfg, RayOptions(autoscale=(1, 4)))._bound_deployment
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 24)


def _manifest() -> list[dict]:
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rayservice.yaml").read_text()) if d]
    assert docs, "deploy/rayservice.yaml is empty"
    return docs


def test_kuberay_manifest_fields_we_rely_on():
    import yaml

    from anystep.server.ray_serve import _BUILD_KEYS

    docs = _manifest()
    by_kind = {d["kind"]: d for d in docs}
    rs = by_kind["RayService"]
    assert rs["apiVersion"] == "ray.io/v1"
    serve_cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == "anystep.server.ray_serve:build_app"
    assert app["route_prefix"] == "/"
    args = app["args"]
    assert set(args) <= _BUILD_KEYS, set(args) - _BUILD_KEYS
    assert args["engine"] == "triton" and args["triton_url"]
    cfg, opts = config_from_args(args)  # the args the cluster will run are valid here too
    assert cfg.engine == "triton" and opts.num_gpus == 0  # gateways: CPU only, Triton has the GPUs
    (dep,) = app["deployments"]
    assert dep["name"] == DEPLOYMENT_NAME
    assert dep["autoscaling_config"]["min_replicas"] <= dep["autoscaling_config"]["max_replicas"]
    cluster = rs["spec"]["rayClusterConfig"]
    pin = [d for d in _pyproject_ray_pin()]
    assert cluster["rayVersion"] in pin
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head.get("env", [])}
    assert env.get(PROXY_CALLBACK_ENV) == PROXY_CALLBACK  # JSON 503 when a replica dies
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["maxReplicas"]
    assert "nvidia.com/gpu" not in json.dumps(workers)  # gateways stay off the GPUs
    # the Triton tier: a GPU Deployment and the Service the gateways' triton_url names
    triton = by_kind["Deployment"]
    tc = triton["spec"]["template"]["spec"]["containers"][0]
    assert "tritonserver" in " ".join(tc.get("command", []) + tc.get("args", []))
    assert "nvidia.com/gpu" in tc["resources"]["limits"]
    svc = by_kind["Service"]
    host, _, port = str(args["triton_url"]).partition(":")
    assert svc["metadata"]["name"] == host
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    assert (
        svc["spec"]["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    )


def _pyproject_ray_pin() -> list[str]:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    return [r.split("==", 1)[1] for r in extras["ray"] if r.startswith("ray[serve]==")]


# ---------------------------------------------------------------------------------------
# real Ray: `anystep serve --ray --replicas 2` in a subprocess
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from anystep.server.testing import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("models"), seed=2)


@pytest.fixture(scope="module")
def ray_server(model_dirs, tmp_path_factory):
    if not HAVE_RAY:
        pytest.skip("needs the ray extra (make test-slow installs it)")
    from anystep.server.testing import ServerProcess

    log = tmp_path_factory.mktemp("ray") / "serve.log"
    srv = ServerProcess(
        models=model_dirs,
        args=[
            "--ray",
            "--replicas",
            "2",
            "--engine",
            "torch",
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        # --threads 1 must win in every replica over the environment's 2
        env={"OMP_NUM_THREADS": "2", "RAY_USAGE_STATS_ENABLED": "0"},
        ready_timeout=240.0,
        log_path=log,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(timeout=60)


@pytest.fixture(scope="module")
def single(model_dirs):
    """The single-process app on the same models (in this process)."""
    from fastapi.testclient import TestClient as FastTestClient

    from anystep.server.app import ServerConfig, create_app
    from anystep.server.registry import ModelSpec

    app = create_app(
        ServerConfig(models=[ModelSpec(n, p) for n, p in model_dirs.items()], engine="torch")
    )
    with FastTestClient(app) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


async def _gather(url: str, calls: list[tuple[str, str, dict]], timeout: float = 60.0):
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        return await asyncio.gather(*(c.request(m, p, params=q) for m, p, q in calls))


PROBE = {"model": "digits", "steps": 3, "n": 4, "seed": 7, "format": "npy"}


@pytest.mark.slow
def test_two_replicas_answer_spread_and_count_per_replica(ray_server):
    calls = [("POST", "/generate", {"model": "checkerboard", "steps": 2, "n": 8, "seed": i})
             for i in range(32)]  # fmt: skip
    seen: dict[str, int] = {}
    for _ in range(5):
        for r in asyncio.run(_gather(ray_server.url, calls)):
            assert r.status_code == 200, r.text
            seen[r.headers[REPLICA_HEADER]] = seen.get(r.headers[REPLICA_HEADER], 0) + 1
        if len(seen) >= 2:
            break
    assert len(seen) == 2, seen
    # /metrics is per replica: each replica counts what it answered (scrape both)
    from anystep.benchmarks.load import parse_prometheus

    counted: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while len(counted) < 2 and time.monotonic() < deadline:
        r = httpx.get(ray_server.url + "/metrics", timeout=10)
        samples = parse_prometheus(r.text)
        counted[r.headers[REPLICA_HEADER]] = sum(
            v for (name, lab), v in samples.items()
            if name == "anystep_requests_total" and dict(lab).get("model") == "checkerboard"
        )  # fmt: skip
    assert counted == {k: float(v) for k, v in seen.items()}, (counted, seen)
    r = httpx.get(ray_server.url + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    for pid in _replica_pids(ray_server.proc.pid):  # the engine's thread setting, per replica
        env = dict(
            kv.split(b"=", 1)
            for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"=" in kv
        )
        assert env[b"OMP_NUM_THREADS"] == b"1", pid


DIGITS_UNITS_PER_MODEL_UNIT = 8.0  # grey level g = 8 (x + 1), as in test_server_http


@pytest.mark.slow
def test_same_request_gives_identical_samples_on_every_replica(ray_server, single):
    ref = single.post("/generate", params=PROBE)
    assert ref.status_code == 200
    # alone in its batch: the same bytes as the single-process server, on every replica
    solo: dict[str, set[bytes]] = {}
    with httpx.Client(base_url=ray_server.url, timeout=30) as c:
        for _ in range(40):
            r = c.post("/generate", params=PROBE)
            assert r.status_code == 200, r.text
            solo.setdefault(r.headers[REPLICA_HEADER], set()).add(r.content)
            if len(solo) == 2:
                break
    assert len(solo) == 2, solo.keys()
    assert all(bodies == {ref.content} for bodies in solo.values())
    # batched with other requests: the single-process server's own batch tolerance
    noise = [("POST", "/generate", {"model": "digits", "steps": k, "n": n, "seed": 100 + k * n,
                                    "format": "npy"}) for k in (1, 2, 4) for n in (1, 5, 9)]  # fmt: skip
    want = np.load(io.BytesIO(ref.content))
    mixed: dict[str, int] = {}
    for _ in range(6):
        calls = [("POST", "/generate", PROBE)] * 8 + noise
        for call, r in zip(calls, asyncio.run(_gather(ray_server.url, calls))):
            assert r.status_code == 200, r.text
            if call[2] is PROBE:
                got = np.load(io.BytesIO(r.content))
                np.testing.assert_allclose(
                    got, want, rtol=0, atol=1e-5 * DIGITS_UNITS_PER_MODEL_UNIT
                )
                mixed[r.headers[REPLICA_HEADER]] = mixed.get(r.headers[REPLICA_HEADER], 0) + 1
        if len(mixed) >= 2:
            break
    assert len(mixed) == 2, mixed


BAD = [
    ("POST", "/generate", {"model": "nope"}, None),
    ("POST", "/generate", {"model": "digits", "n": 0}, None),
    ("POST", "/generate", {"model": "digits", "n": 100000}, None),
    ("POST", "/generate", {"model": "digits", "steps": "abc"}, None),
    ("POST", "/generate", {"model": "digits", "seed": -1}, None),
    ("POST", "/generate", {"model": "digits", "format": "gif"}, None),
    ("POST", "/generate", {"model": "digits", "solver": "euler"}, None),
    ("POST", "/generate", {"model": "digits", "grid": "1,0.5,0"}, None),
    ("POST", "/generate", {"model": "checkerboard-teacher", "solver": "rk5"}, None),
    ("POST", "/generate", {}, b"{not json"),
    ("POST", "/generate", {}, b'{"model": "digits", "wat": 1}'),
    ("POST", "/encode", {}, b'{"model": "digits"}'),
    ("POST", "/encode", {}, b'{"model": "digits", "x": [[1, 2]]}'),
    ("GET", "/generate", {}, None),
    ("GET", "/no/such/route", {}, None),
]


@pytest.mark.slow
def test_bad_inputs_get_the_single_process_4xx_bodies(ray_server, single):
    with httpx.Client(base_url=ray_server.url, timeout=30) as c:
        for method, path, params, body in BAD:
            kw = {"params": params, "content": body}
            if body is not None:
                kw["headers"] = {"content-type": "application/json"}
            want = single.request(method, path, **kw)
            got = c.request(method, path, **kw)
            assert 400 <= want.status_code < 500, (path, params, want.text)
            assert (got.status_code, got.json()) == (want.status_code, want.json()), (path, params)
            assert REPLICA_HEADER in got.headers


def _replica_pids(root: int) -> list[int]:
    """Ray Serve replica processes descending from ``root`` (our CLI process)."""

    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ServeReplica:anystep:"):
            p = int(d.name)
            while p > 1 and p != root:
                p = parent(p)
            if p == root:
                out.append(int(d.name))
    return sorted(out)


@pytest.mark.slow
def test_killed_replica_loses_only_its_inflight_requests(ray_server):
    pids = _replica_pids(ray_server.proc.pid)
    assert len(pids) == 2, pids
    records: list[tuple[float, float, int, dict | None, str | None]] = []
    inflight = 0
    killed: dict[str, float] = {}
    ready: list[tuple[int, dict]] = []

    async def run() -> None:
        nonlocal inflight
        stop = time.monotonic() + 14.0
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=30.0) as c:

            async def worker(i: int) -> None:
                nonlocal inflight
                k = 0
                while time.monotonic() < stop:
                    k += 1
                    t0 = time.monotonic()
                    inflight += 1
                    try:
                        r = await c.post("/generate", params={"model": "digits", "steps": 4, "n": 16,
                                                              "seed": i * 1000 + k, "format": "npy"})  # fmt: skip
                        body = r.json() if r.status_code != 200 else None
                        records.append(
                            (
                                t0,
                                time.monotonic(),
                                r.status_code,
                                body,
                                r.headers.get(REPLICA_HEADER),
                            )
                        )
                    finally:
                        inflight -= 1

            async def killer() -> None:
                await asyncio.sleep(3.0)
                killed["inflight"] = inflight
                killed["t"] = time.monotonic()
                os.kill(pids[0], signal.SIGKILL)

            async def readiness() -> None:  # /readyz says "not ready" until the restart is done
                while "t" not in killed:
                    await asyncio.sleep(0.05)
                while time.monotonic() < stop:
                    r = await c.get("/readyz")
                    ready.append((r.status_code, r.json()))
                    await asyncio.sleep(0.2)

            await asyncio.gather(killer(), readiness(), *(worker(i) for i in range(8)))

    asyncio.run(run())  # a hang would fail here (client timeout 30 s)
    failed = [r for r in records if r[2] != 200]
    assert len(failed) <= killed["inflight"], (len(failed), killed)
    for t0, _, status, body, replica in failed:  # a clean, retryable JSON error, not a plain 500
        assert status == 503 and body["error"] == "replica_failed", body
        assert replica is None
        assert t0 < killed["t"], "a request sent after the kill failed"
    after = [r for r in records if r[0] > killed["t"] + 1.0]
    assert after and all(r[2] == 200 for r in after), [r[2] for r in after]
    partial = [b for st, b in ready if st == 503]
    assert partial and all(b["error"] == "not_ready" for b in partial), ready[:3]
    assert any("1 of 2 replicas have loaded their models" in b["message"] for b in partial), partial
    deadline = time.monotonic() + 120  # Ray replaces the killed replica
    while not (
        httpx.get(ray_server.url + "/readyz", timeout=10).status_code == 200
        and len(_replica_pids(ray_server.proc.pid)) == 2
    ):
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(0.2)
    assert pids[0] not in _replica_pids(ray_server.proc.pid)


def _phase(rps: float, replicas: dict[str, tuple[float, float]], failed: int = 0) -> dict:
    return {"requests_per_s": rps, "evals_per_s": rps * 240, "p50_ms": 1.0, "p99_ms": 2.0,
            "sent": 100, "error_count": failed, "errors": {"503": failed} if failed else {},
            "replicas": {k: {"answered": a, "mean_batch": b, "engine_calls": 1}
                         for k, (a, b) in replicas.items()},
            "load_average": [1.0, 1.0, 1.0]}  # fmt: skip


def test_load_ray_rows_and_goal():
    from anystep.benchmarks.load_ray import _row, evaluate_goals, render_markdown

    one = _row("1", 1, [_phase(4.0, {"a": (100, 250)}), _phase(5.0, {"a": (100, 250)})])
    two = _row("2", 2, [_phase(7.0, {"a": (60, 250), "b": (40, 240)}),
                        _phase(9.0, {"a": (50, 250), "b": (50, 250)})])  # fmt: skip
    assert one["requests_per_s"] == 4.5 and two["requests_per_s"] == 8.0
    assert two["replica_shares"] == [[0.6, 0.4], [0.5, 0.5]]
    (goal,) = evaluate_goals([one, two], first=1)
    assert goal["ratio"] == pytest.approx(8.0 / 4.5) and goal["met"]
    assert goal["paired_ratios"] == pytest.approx([7.0 / 4.0, 9.0 / 5.0])
    failing = _row("2", 2, [_phase(9.0, {"a": (50, 1), "b": (50, 1)}, failed=1)])
    assert not evaluate_goals([one, failing], first=1)[0]["met"]  # a failed request misses it
    slow = _row("2", 2, [_phase(6.0, {"a": (50, 1), "b": (50, 1)})])
    assert not evaluate_goals([one, slow], first=1)[0]["met"]  # 1.33x < 1.6x
    md = render_markdown({
        "command": "python -m anystep.benchmarks.load_ray", "machine_description": "2 cores",
        "load_average": [1, 1, 1], "versions": {}, "goals": [goal], "rows": [one, two],
        "settings": {"model": "digits", "concurrency": 64, "n": 64, "steps_mix": [1, 2, 4, 8],
                     "requests": 192, "warmup_requests": 64, "format": "json", "threads": 1, "rounds": 2},
    })  # fmt: skip
    assert "**met**" in md and "60%/40%" in md
