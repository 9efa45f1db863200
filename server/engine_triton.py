"""The ``triton`` engine: a model on a Triton Inference Server, called with ``tritonclient``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .engine_base import Engine, EngineError, log


class TritonEngine(Engine):
    """A model on a Triton Inference Server, called over HTTP with ``tritonclient``.

    The step loop stays in this gateway: every :meth:`step` is one Triton request
    carrying the whole fused batch with its per-sample ``(s, t)``. Input and output
    names, and the rank of the time inputs, are read from the server's model metadata.

    Args:
        url: ``host:port`` or ``http://host:port`` of Triton's HTTP endpoint.
        model_name: the Triton model name.
        data_shape: shape of one sample.
        kind: ``"flowmap"`` or ``"velocity"`` (checked against the number of inputs).
        timeout_s: network timeout of one request.
        max_batch: largest batch sent in one request (larger batches are split).
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        model_name: str,
        data_shape: Sequence[int],
        kind: str,
        timeout_s: float = 30.0,
        max_batch: int | None = None,
    ) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise EngineError(
                "the triton engine needs tritonclient: pip install 'anystep[triton]'"
            ) from None
        super().__init__(kind, data_shape)
        self._http = httpclient
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        host = url.split("://", 1)[1] if "://" in url else url
        self.url = host.rstrip("/")
        self.model_name = model_name
        self._timeout = float(timeout_s)
        self._local = threading.local()
        try:
            client = self._client()
            if not client.is_model_ready(model_name):
                raise EngineError(
                    f"Triton at {self.url} has no ready model {model_name!r}; load it first"
                )
            meta = client.get_model_metadata(model_name)
            cfg = client.get_model_config(model_name)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, protocol errors
            raise EngineError(
                f"cannot reach Triton model {model_name!r} at {self.url}: {e}"
            ) from None
        inputs = meta.get("inputs", [])
        outputs = meta.get("outputs", [])
        names = [i["name"] for i in inputs]
        want = 3 if kind == "flowmap" else 2
        if len(names) != want:
            raise EngineError(
                f"Triton model {model_name!r} has inputs {names}; a {kind} model needs "
                f"{'(x, s, t)' if want == 3 else '(x, t)'}"
            )
        by_name = {n.lower(): n for n in names}
        order = ("x", "s", "t") if want == 3 else ("x", "t")
        if all(k in by_name for k in order):
            names = [by_name[k] for k in order]
        self.input_names = names
        self._meta_shape = {i["name"]: list(i["shape"]) for i in inputs}
        self.output_name = outputs[0]["name"]
        mb = int(cfg.get("max_batch_size", 0) or 0) if isinstance(cfg, dict) else 0
        self._batched = mb > 0  # Triton adds the batch dim to the declared dims
        # never more rows per request than the model's max_batch_size (Triton refuses them with a 400)
        limits = [int(b) for b in (max_batch, mb) if b]
        self.max_batch = min(limits) if limits else 1 << 30

    def _client(self):
        """This thread's client (tritonclient's HTTP client is bound to the thread that made it)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(
                url=self.url, connection_timeout=self._timeout, network_timeout=self._timeout
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _shape_of(self, name: str, arr: np.ndarray) -> np.ndarray:
        dims = self._meta_shape.get(name, [])
        rank = len(dims)
        if name != self.input_names[0] and rank == 2:
            return arr.reshape(-1, 1)
        return arr

    def _run(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        return self._in_chunks(self._run_one, self.max_batch, x, *times)

    def _run_one(self, x: np.ndarray, *times: np.ndarray) -> np.ndarray:
        infer_inputs = []
        for name, arr in zip(self.input_names, (x, *times)):
            a = np.ascontiguousarray(self._shape_of(name, arr), dtype=np.float32)
            ii = self._http.InferInput(name, list(a.shape), "FP32")
            ii.set_data_from_numpy(a, binary_data=True)
            infer_inputs.append(ii)
        out = self._http.InferRequestedOutput(self.output_name, binary_data=True)
        try:
            res = self._client().infer(self.model_name, infer_inputs, outputs=[out])
        except Exception as e:  # noqa: BLE001 - tritonclient raises many types
            raise EngineError(f"Triton request to {self.model_name!r} failed: {e}") from None
        y = res.as_numpy(self.output_name)
        return np.asarray(y, dtype=np.float32).reshape(x.shape)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "model_name": self.model_name}

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients), []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                log.debug("closing a Triton client failed", exc_info=True)
