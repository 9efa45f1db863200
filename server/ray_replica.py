"""What runs inside Ray Serve's processes: the replica's and the proxy's ASGI middlewares.

* :class:`ReplicaMiddleware` wraps the app in every replica: :data:`REPLICA_HEADER` on
  every response; ``GET /readyz`` is 503 until every replica of the deployment has loaded
  its models (:class:`ClusterReadiness`, the Serve controller's view).
* :class:`ProxyErrorMiddleware` wraps Ray's HTTP proxy (:func:`proxy_middlewares`, named by
  :data:`PROXY_CALLBACK_ENV`): a replica that died mid-request, or no replica at all,
  becomes the API's JSON 503 instead of a plain-text 500/503.

Light on purpose (no torch, no FastAPI app): the proxy process imports this module.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .schemas import ApiError

REPLICA_HEADER = "X-Anystep-Replica"
READY_CACHE_S = 1.0


async def _send_json(send: Callable, status: int, body: dict, headers: list) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + headers})
    await send({"type": "http.response.body", "body": data})


class ClusterReadiness:
    """Whether every replica of the deployment has loaded its models (the controller's view).

    A replica turns ``RUNNING`` only after its constructor, which waits for model loading
    and warm-up, returns; so "every replica RUNNING" means "every replica loaded".

    Args:
        app_name, deployment: the Serve application and deployment.
        ttl_s: how long an answer is reused.
        status: a ``serve.status``-like callable (tests); default ``ray.serve.status``.
    """

    def __init__(
        self,
        app_name: str,
        deployment: str,
        ttl_s: float = READY_CACHE_S,
        status: Callable[[], Any] | None = None,
    ) -> None:
        self.app_name, self.deployment, self.ttl_s = app_name, deployment, ttl_s
        self._status = status
        self._cached: tuple[float, str | None] | None = None
        self._lock = asyncio.Lock()

    def check(self) -> str | None:
        """None when ready, else why not (blocking: asks the controller)."""
        if self._status is not None:
            status = self._status
        else:
            from ray import serve

            status = serve.status
        app = status().applications.get(self.app_name)
        if app is None:
            return f"the Ray Serve application {self.app_name!r} is not deployed"
        dep = app.deployments.get(self.deployment)
        if dep is None:
            return f"deployment {self.deployment!r} is not in application {self.app_name!r}"
        states = {str(getattr(k, "value", k)): int(v) for k, v in dep.replica_states.items()}
        running, total = states.get("RUNNING", 0), sum(states.values())
        if total == 0 or running < total:
            others = ", ".join(
                f"{v} {k.lower()}" for k, v in sorted(states.items()) if k != "RUNNING"
            )
            return f"{running} of {total} replicas have loaded their models" + (
                f" ({others})" if others else ""
            )
        return None

    async def __call__(self) -> str | None:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl_s:
                return self._cached[1]
            try:
                reason = await asyncio.to_thread(self.check)
            except Exception as e:  # noqa: BLE001 - the controller is unreachable: not ready
                reason = f"the Ray Serve controller did not answer ({type(e).__name__})"
            self._cached = (time.monotonic(), reason)
            return reason


class ReplicaMiddleware:
    """ASGI middleware: the replica header on every response; cluster-wide ``/readyz``.

    Args:
        app: the inner ASGI app.
        replica: the replica id put in :data:`REPLICA_HEADER`.
        cluster_ready: async callable, None when every replica is ready, else the reason.
    """

    def __init__(
        self, app: Any, replica: str, cluster_ready: Callable[[], Awaitable[str | None]]
    ) -> None:
        self.app, self.cluster_ready = app, cluster_ready
        self._header = (REPLICA_HEADER.lower().encode(), replica.encode("latin-1"))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        if scope.get("path") == "/readyz":
            reason = await self.cluster_ready()
            if reason is not None:
                err = ApiError(503, "not_ready", f"not ready: {reason}; retry shortly")
                await _send_json(send_tagged, 503, err.body(), [(b"retry-after", b"1")])
                return
        await self.app(scope, receive, send_tagged)


class ProxyErrorMiddleware:
    """ASGI middleware of Ray's HTTP proxy: its own errors become the API's JSON error body.

    When the replica working on a request dies, Ray's proxy ends the request without
    an answer (uvicorn would send a plain-text 500); when no replica can take it, the
    proxy answers a plain-text 503; when its queue in front of the replicas is full, a
    plain-text 429. They become the API's ``{error, message, field}`` body with
    ``Retry-After``: 503 ``replica_failed`` / ``unavailable``, 429 ``queue_full`` (the
    single-process server's answer to a full queue), so clients retry them as usual. A 5xx carrying :data:`REPLICA_HEADER` came from the app
    and passes unchanged. Installed by :func:`proxy_middlewares`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    @staticmethod
    async def _answer(
        send: Callable, error: str, message: str, keep: list, status: int = 503
    ) -> None:
        if not any(k.lower() == b"retry-after" for k, _ in keep):
            keep = [*keep, (b"retry-after", b"1")]
        await _send_json(send, status, ApiError(status, error, message).body(), keep)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = False
        replica_key = REPLICA_HEADER.lower().encode()

        async def send_checked(message: dict) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the body of a replaced answer
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                status = message["status"]
                if (status >= 500 or status == 429) and not any(
                    k.lower() == replica_key for k, _ in headers
                ):
                    replaced = True
                    keep = [
                        (k, v) for k, v in headers if k.lower() in (b"x-request-id", b"retry-after")
                    ]
                    if status == 429:  # Ray's router queue (max_queued_requests) is full
                        await self._answer(
                            send, "queue_full",
                            "every replica is busy and the queue in front of them is full; "
                            "retry after Retry-After seconds", keep, 429,
                        )  # fmt: skip
                    else:
                        await self._answer(
                            send, "unavailable",
                            "no replica can take the request now; retry shortly", keep,
                        )  # fmt: skip
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        finally:
            if not started:  # the replica died mid-request: the proxy sent nothing
                await self._answer(
                    send,
                    "replica_failed",
                    "the replica working on this request stopped before answering "
                    "(Ray Serve restarts it); retry the request",
                    [],
                )


def proxy_middlewares() -> list[Any]:
    """Middlewares for Ray Serve's HTTP proxy (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrorMiddleware)]


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "anystep.server.ray_replica:proxy_middlewares"
