"""Serving: ``POST /generate?steps=K`` over FastAPI with pluggable engines and step-level batching.

Modules: :mod:`.app` (routes, ``create_app``), :mod:`.scheduler` (step-level batching),
:mod:`.engines` (torch, onnx, tensorrt, triton), :mod:`.registry` (served models),
:mod:`.schemas` (validation and OpenAPI models), :mod:`.metrics` (Prometheus),
:mod:`.cli` (``anystep serve``), :mod:`.testing` (a server in a subprocess, tiny models).
"""
