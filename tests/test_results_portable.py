"""Committed benchmark results hold nothing machine-specific: no host name, no absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MACHINE_KEYS = {"hostname", "host", "node", "username"}


def _walk(obj, keys: list[str], strings: list[str]) -> None:
    if isinstance(obj, dict):
        keys.extend(obj)
        for v in obj.values():
            _walk(v, keys, strings)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, keys, strings)
    elif isinstance(obj, str):
        strings.append(obj)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_committed_results_hold_no_host_name_or_machine_paths(path):
    keys: list[str] = []
    strings: list[str] = []
    _walk(json.loads(path.read_text()), keys, strings)
    assert not MACHINE_KEYS & set(keys), f"{path.name} records {sorted(MACHINE_KEYS & set(keys))}"
    bad = [s for s in strings if s.startswith(("/work", "/tmp", "/root", "/home"))]
    assert not bad, f"{path.name} holds machine paths: {bad[:3]}"


def test_digits_machine_record_has_no_host_name():
    from anystep.benchmarks.digits_report import _machine

    rec = _machine()
    assert not MACHINE_KEYS & set(rec)
    assert rec["cpu"] and rec["cpu_count"] and rec["torch"] and rec["python"]
