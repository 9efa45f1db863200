"""Serving: ``POST /generate?steps=K`` over FastAPI with pluggable engines and step-level batching.

Modules: :mod:`.app` (``create_app``, middleware, routes table), :mod:`.routes` (generate /
encode handlers), :mod:`.validation` (per-model checks through the core sampling contract),
:mod:`.schemas` (the strict Pydantic request models, query parsing, error bodies),
:mod:`.planner` (the pure tick planner), :mod:`.jobs` (per-sample staged solver state),
:mod:`.scheduler` (the executor thread), :mod:`.engines` (the engine registry and ``auto``;
adapters in ``engine_*``), :mod:`.registry` (served models, limits, units), :mod:`.metrics`
(Prometheus), :mod:`.cli` (``anystep serve``), :mod:`.testing` (a server in a subprocess, tiny models).
"""
