"""Export flow maps ``X_{s,t}`` (and velocity models ``b_t``) for deployment.

Modules (imported on demand; this package imports nothing heavy by itself, so the
server can use :func:`anystep.export.manifest.load_manifest` without torch or onnx):

* :mod:`~anystep.export.onnx_export` - single-step ONNX graphs (``x, s, t -> x_t``;
  velocity ``x, t -> v``), validated against PyTorch: :func:`export_onnx`.
* :mod:`~anystep.export.fused` - one graph for the whole K-step sampler (``x0 -> x1``).
* :mod:`~anystep.export.precision` - fp16 graphs and per-precision tolerances.
* :mod:`~anystep.export.tensorrt_build` - TensorRT engines and :class:`TensorRTRunner`.
* :mod:`~anystep.export.triton_repo` - Triton model repositories and
  :func:`serve_with_pytriton` (a real Triton server for tests).
* :mod:`~anystep.export.manifest` - ``anystep-export.json`` and :func:`load_manifest`.
* :mod:`~anystep.export.cli` - ``anystep export``.

Time convention everywhere: ``t = 0`` base, ``t = 1`` data.
"""
